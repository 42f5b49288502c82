"""Tests of course_utils/moe.py (generated from notebooks/05_moe.ipynb).

Each function is compared with an independent reference (PyTorch's own ops, a dense computation,
a Python loop or a closed form) on awkward shapes and several dtypes, outputs and gradients, and
every bad input must raise an error that names what was expected.
"""
import inspect
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from course_utils import moe


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- references (independent code)

def dense_moe(x, weights, indices, experts):
    """Every expert on every token, times a gate matrix that is zero off the chosen experts."""
    G = torch.zeros(x.shape[0], len(experts), dtype=x.dtype).scatter(1, indices, weights.to(x.dtype))
    every = torch.stack([e(x) for e in experts], 1)                       # (T, E, d)
    return (G.unsqueeze(-1) * every).sum(1)


def keep_by_loop(indices, n_experts, capacity):
    T, k = indices.shape
    filled, keep = [0] * n_experts, torch.zeros(T, k, dtype=torch.bool)
    for j in range(k):                      # all first choices, then all second choices, ...
        for t in range(T):
            e = int(indices[t, j])
            if filled[e] < capacity:
                filled[e] += 1
                keep[t, j] = True
    return keep


def v3_route_by_loop(logits, k, bias, n_groups, topk_groups, route_scale):
    """From the logits: its own sigmoid, choice with the bias, gates without it."""
    T, E = logits.shape
    size = E // n_groups
    ws, ids = [], []
    for t in range(T):
        s = [1 / (1 + math.exp(-v)) for v in logits[t].double().tolist()]
        c = [si + bi for si, bi in zip(s, bias.double().tolist())]
        if n_groups > 1:
            gs = [sum(sorted(c[g * size:(g + 1) * size])[-2:]) for g in range(n_groups)]
            groups = sorted(range(n_groups), key=lambda g: -gs[g])[:topk_groups]
            cand = [e for g in groups for e in range(g * size, (g + 1) * size)]
        else:
            cand = list(range(E))
        chosen = sorted(sorted(cand, key=lambda e: -c[e])[:k])
        ids.append(chosen)
        ws.append([s[e] / sum(s[j] for j in chosen) * route_scale for e in chosen])
    return torch.tensor(ws, dtype=torch.float64), torch.tensor(ids)


def sort_by_expert(w, idx):
    order = idx.argsort(-1)
    return w.gather(1, order), idx.gather(1, order)


def switch_by_loop(logits, capacity_factor):
    """Switch routing token by token: own softmax, own buckets, own f_i and P_i."""
    T, E = logits.shape
    cap = math.ceil(capacity_factor * T / E - 1e-9)
    filled, kept, experts, gates = [0] * E, [], [], []
    f, P = [0.0] * E, [0.0] * E
    for row in logits.double().tolist():
        ex = [math.exp(v - max(row)) for v in row]
        p = [v / sum(ex) for v in ex]
        e = max(range(E), key=lambda i: p[i])
        kept.append(filled[e] < cap)
        filled[e] += int(kept[-1])
        experts.append(e)
        gates.append(p[e] if kept[-1] else 0.0)
        f[e] += 1 / T
        P = [Pi + pi / T for Pi, pi in zip(P, p)]
    aux = E * sum(fi * Pi for fi, Pi in zip(f, P))
    return (torch.tensor(kept), torch.tensor(experts), torch.tensor(gates, dtype=torch.float64),
            torch.tensor(aux, dtype=torch.float64), cap)


# ---------------------------------------------------------------- the API asked for in the issue

@pytest.mark.parametrize("fn,params", [
    (moe.topk_route, "logits, k, *, normalize=True"),
    (moe.switch_route, "logits, capacity_factor"),
    (moe.deepseek_v3_route, "scores, bias, *, n_groups, topk_groups, k, route_scale=1.0"),
])
def test_public_signatures(fn, params):
    sig = inspect.signature(fn)
    plain = sig.replace(parameters=[q.replace(annotation=inspect.Parameter.empty)
                                    for q in sig.parameters.values()],
                        return_annotation=inspect.Signature.empty)
    assert str(plain) == f"({params})"


# ---------------------------------------------------------------- SwiGLU

@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_swiglu_matches_formula(dtype, atol):
    torch.manual_seed(0)
    ffn = moe.SwiGLU(13, 7).to(dtype)
    x = torch.randn(3, 5, 13, dtype=dtype)
    a, b = x @ ffn.w1.weight.T, x @ ffn.w3.weight.T
    assert_close(ffn(x), (a * torch.sigmoid(a) * b) @ ffn.w2.weight.T, atol=atol, rtol=0)


def test_swiglu_gradcheck():
    torch.manual_seed(1)
    ffn = moe.SwiGLU(6, 5).double()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ffn, (x,))


# ---------------------------------------------------------------- top-k routing

@pytest.mark.parametrize("T,E,k", [(37, 5, 2), (1, 3, 1), (64, 8, 8), (10, 16, 6)])
def test_topk_route_equals_softmax_of_topk(T, E, k):
    logits = torch.randn(T, E, generator=gen(T + E + k), dtype=torch.float64, requires_grad=True)
    idx, w = moe.topk_route(logits, k)
    assert idx.dtype == torch.int64 and idx.shape == w.shape == (T, k)
    top, top_idx = logits.topk(k, dim=-1)
    ref = top.softmax(-1)
    assert torch.equal(idx, top_idx)
    assert_close(w, ref, atol=1e-12, rtol=0)
    assert_close(w.sum(-1), torch.ones(T, dtype=torch.float64), atol=1e-12, rtol=0)
    up = torch.randn(T, k, generator=gen(9), dtype=torch.float64)
    g, = torch.autograd.grad((w * up).sum(), logits)
    g_ref, = torch.autograd.grad((ref * up).sum(), logits)
    assert_close(g, g_ref, atol=1e-12, rtol=0)


def test_topk_route_without_normalizing_is_the_raw_softmax():
    logits = torch.randn(20, 6, generator=gen(2))
    idx, w = moe.topk_route(logits, 3, normalize=False)
    assert_close(w, logits.softmax(-1).gather(1, idx))


def test_topk_route_low_precision_keeps_dtype():
    logits = torch.randn(33, 7, generator=gen(3))
    idx, w = moe.topk_route(logits.bfloat16(), 2)
    _, w32 = moe.topk_route(logits.bfloat16().float(), 2)
    assert w.dtype == torch.bfloat16 and idx.dtype == torch.int64
    assert_close(w.float(), w32, atol=1e-2, rtol=0)


# ---------------------------------------------------------------- capacity

@pytest.mark.parametrize("T,E,cf,k,expected", [(64, 8, 1.0, 1, 8), (64, 8, 1.25, 1, 10),
                                               (37, 5, 1.0, 2, 15), (100, 10, 1.1, 1, 11),
                                               (3, 8, 1.0, 1, 1), (512, 8, 2.0, 2, 256)])
def test_switch_capacity(T, E, cf, k, expected):
    assert moe.switch_capacity(T, E, cf, k) == expected == math.ceil(round(cf * T * k / E, 9))


@pytest.mark.parametrize("T,E,k,cap", [(37, 5, 2, 9), (37, 5, 2, 0), (1, 1, 1, 1), (64, 8, 1, 5),
                                       (50, 4, 3, 20)])
def test_capacity_keep_matches_loop(T, E, k, cap):
    idx, _ = moe.topk_route(torch.randn(T, E, generator=gen(T * k + cap)), k)
    keep = moe.capacity_keep(idx, E, cap)
    assert keep.dtype == torch.bool and keep.shape == (T, k)
    assert torch.equal(keep, keep_by_loop(idx, E, cap))
    counts = torch.bincount(idx.reshape(-1), minlength=E)
    assert int((~keep).sum()) == int((counts - cap).clamp(min=0).sum())


# ---------------------------------------------------------------- switch_route

@pytest.mark.parametrize("T,E,cf", [(512, 8, 1.0), (37, 5, 1.25), (1, 3, 1.0), (64, 16, 0.5),
                                    (40, 4, 3.0)])
def test_switch_route_matches_loop(T, E, cf):
    logits = 2 * torch.randn(T, E, generator=gen(T + E), dtype=torch.float64)
    r = moe.switch_route(logits, cf)
    kept, experts, gates, aux, cap = switch_by_loop(logits, cf)
    assert isinstance(r, tuple) and r._fields == ("kept", "experts", "gates", "aux_loss", "capacity")
    assert r.kept.dtype == torch.bool and r.experts.dtype == torch.int64
    assert r.kept.shape == r.experts.shape == r.gates.shape == (T,) and r.aux_loss.shape == ()
    assert r.capacity == cap
    assert torch.equal(r.kept, kept) and torch.equal(r.experts, experts)
    assert_close(r.gates, gates, atol=1e-12, rtol=0)
    assert_close(r.aux_loss, aux, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cf", [0.25, 1.0, 2.0])
def test_switch_route_is_built_from_the_pieces(cf):
    T, E = 53, 6
    logits = torch.randn(T, E, generator=gen(17)) + torch.linspace(1, -1, E)   # skewed router
    r = moe.switch_route(logits, cf)
    idx, p = moe.topk_route(logits, 1, normalize=False)
    cap = moe.switch_capacity(T, E, cf)
    keep = moe.capacity_keep(idx, E, cap)
    assert r.capacity == cap
    assert torch.equal(r.experts, logits.argmax(-1)) and torch.equal(r.kept, keep[:, 0])
    assert_close(r.gates, torch.where(keep[:, 0], p[:, 0], torch.zeros(())), atol=0, rtol=0)
    assert_close(r.aux_loss, moe.load_balancing_loss(logits.softmax(-1), idx), atol=1e-7, rtol=0)
    assert int((~r.kept).sum()) == int((torch.bincount(idx[:, 0], minlength=E) - cap)
                                       .clamp(min=0).sum())


def test_switch_route_gradients():
    logits = torch.randn(29, 5, generator=gen(18), dtype=torch.float64, requires_grad=True)
    r = moe.switch_route(logits, 0.8)
    assert not r.kept.all()                                  # some tokens are dropped
    p = logits.softmax(-1)
    gates_ref = p.gather(1, r.experts[:, None])[:, 0] * r.kept
    f = torch.bincount(r.experts, minlength=5).double() / 29
    aux_ref = 5 * (f * p.mean(0)).sum()
    up = torch.randn(29, generator=gen(19), dtype=torch.float64)
    g, = torch.autograd.grad((r.gates * up).sum() + 0.3 * r.aux_loss, logits)
    g_ref, = torch.autograd.grad((gates_ref * up).sum() + 0.3 * aux_ref, logits)
    assert_close(g, g_ref, atol=1e-12, rtol=0)


def test_switch_route_low_precision():
    logits = torch.randn(45, 6, generator=gen(20))
    r = moe.switch_route(logits.bfloat16(), 1.0)
    r32 = moe.switch_route(logits.bfloat16().float(), 1.0)
    assert r.gates.dtype == torch.bfloat16 and r.aux_loss.dtype == torch.float32
    assert torch.equal(r.kept, r32.kept) and torch.equal(r.experts, r32.experts)
    assert_close(r.gates.float(), r32.gates, atol=1e-2, rtol=0)
    assert_close(r.aux_loss, r32.aux_loss, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- load-balancing loss

def one_hot_batch(n_per_expert, a):
    owner = torch.repeat_interleave(torch.arange(len(n_per_expert)), torch.tensor(n_per_expert))
    z = a * F.one_hot(owner, len(n_per_expert)).double()
    return z.softmax(-1), z.argmax(-1, keepdim=True)


@pytest.mark.parametrize("n,a", [([10, 10, 10, 10, 10], 0.7), ([30, 5, 0, 1, 4], 2.0),
                                 ([7, 0, 0], 9.0), ([3, 3], 0.0)])
def test_load_balancing_loss_closed_form(n, a):
    probs, idx = one_hot_batch(n, a)
    E, T = len(n), sum(n)
    q = torch.tensor(n, dtype=torch.float64) / T
    p_hi, p_lo = math.exp(a) / (math.exp(a) + E - 1), 1 / (math.exp(a) + E - 1)
    expected = E * ((p_hi - p_lo) * float((q ** 2).sum()) + p_lo)
    assert_close(moe.load_balancing_loss(probs, idx), torch.tensor(expected, dtype=torch.float64),
                 atol=1e-12, rtol=0)


def test_load_balancing_loss_is_one_when_uniform_and_e_when_collapsed():
    probs, idx = one_hot_batch([4] * 6, 1.3)
    assert_close(moe.load_balancing_loss(probs, idx).item(), 1.0, atol=1e-12, rtol=0)
    probs = torch.zeros(9, 6, dtype=torch.float64)
    probs[:, 2] = 1
    idx = torch.full((9, 1), 2)
    assert_close(moe.load_balancing_loss(probs, idx).item(), 6.0, atol=1e-12, rtol=0)


def test_load_balancing_loss_top_k_and_gradient():
    T, E, k = 37, 5, 2
    logits = torch.randn(T, E, generator=gen(4), dtype=torch.float64)
    probs = logits.softmax(-1).requires_grad_(True)
    idx = probs.topk(k, dim=-1).indices
    loss = moe.load_balancing_loss(probs, idx)
    f = torch.stack([(idx == e).sum() for e in range(E)]).double() / (T * k)
    assert_close(loss, E * (f * probs.mean(0)).sum(), atol=1e-12, rtol=0)
    g, = torch.autograd.grad(loss, probs)
    assert_close(g, (E * f / T).expand(T, E), atol=1e-12, rtol=0)   # dL/dp_{t,i} = E f_i / T


@pytest.mark.parametrize("B,T,E,k", [(1, 9, 4, 1), (3, 13, 5, 2), (4, 1, 3, 3)])
def test_sequence_balance_loss_is_the_mean_of_per_sequence_losses(B, T, E, k):
    logits = torch.randn(B * T, E, generator=gen(40 + B), dtype=torch.float64)
    probs = logits.softmax(-1).requires_grad_(True)
    idx = probs.topk(k, dim=-1).indices
    loss = moe.sequence_balance_loss(probs, idx, T)
    ref = []
    for b in range(B):                                     # the loss written out per sequence
        p_b, i_b = probs[b * T:(b + 1) * T], idx[b * T:(b + 1) * T]
        f = torch.stack([(i_b == e).sum() for e in range(E)]).double() / (T * k)
        ref.append(E * (f * p_b.mean(0)).sum())
    ref = torch.stack(ref).mean()
    assert_close(loss, ref, atol=1e-12, rtol=0)
    g, g_ref = (torch.autograd.grad(v, probs)[0] for v in (loss, ref))
    assert_close(g, g_ref, atol=1e-12, rtol=0)
    if B == 1:                                             # one sequence: the batch-wise loss
        assert_close(loss, moe.load_balancing_loss(probs, idx), atol=1e-12, rtol=0)


def test_sequence_wise_sees_collapsed_sequences_that_batch_wise_misses():
    """DeepSeek-V3 report 2.1.2: the sequence-wise loss is computed per sequence. Two sequences,
    each routed entirely to its own expert: balanced as a batch (loss 1), collapsed per sequence."""
    a, T = 2.0, 50
    owner = torch.arange(2).repeat_interleave(T)
    probs = (a * F.one_hot(owner, 2).double()).softmax(-1)
    p_hi = math.exp(a) / (math.exp(a) + 1)
    assert_close(moe.load_balancing_loss(probs, owner[:, None]).item(), 1.0, atol=1e-12, rtol=0)
    assert_close(moe.sequence_balance_loss(probs, owner[:, None], T).item(), 2 * p_hi,
                 atol=1e-12, rtol=0)


def test_moe_stats_sequence_wise_loss_follows_the_sequence_axis():
    torch.manual_seed(41)
    layer = moe.MoE(8, 4, n_experts=8, k=2, n_shared=1, score="sigmoid", n_groups=4, topk_groups=2)
    x = torch.randn(3, 5, 8)                               # (B, T, d)
    layer(x)
    st = layer.stats
    per_seq = torch.stack([moe.load_balancing_loss(p, i) for p, i in
                           zip(st["probs"].split(5), st["indices"].split(5))]).mean()
    assert_close(st["seq_aux_loss"], per_seq)
    assert bool((st["weights"] > 0).all())                 # no capacity: nothing dropped (V3)
    layer(x.reshape(15, 8))                                # 2-D input: one sequence
    assert_close(layer.stats["seq_aux_loss"], layer.stats["aux_loss"])


def test_expert_choice_can_leave_a_token_without_expert():
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [.8, .1, .1], [.1, .8, .1], [.1, .1, .8],
                          [.2, .2, .6], [.3, .3, .4]], dtype=torch.float64)
    _, tok = moe.expert_choice_route(probs.log(), 2)
    assert torch.bincount(tok.reshape(-1), minlength=6).tolist() == [2, 1, 1, 1, 1, 0]


def test_sorted_dispatch_syncs_once_and_still_calls_every_expert():
    """dispatch_sorted reads the counts on the host once (.tolist()); dispatch_loop once per
    expert (torch.where). Both call each non-empty expert once: no grouped GEMM here."""
    from torch.overrides import TorchFunctionMode

    class Reads(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            Reads.n += (name in ("nonzero", "tolist", "item", "__bool__", "__int__", "__float__")
                        or (name == "where" and len(args) == 1))
            return func(*args, **(kwargs or {}))

    experts, x, logits = make_problem(40, 6, 2, 8, torch.float32, 42, skip_expert=5)
    idx, w = moe.topk_route(logits.detach(), 2)
    x = x.detach()
    calls = []
    for e in experts:
        e.register_forward_hook(lambda m, *_: calls.append(m))
    counts = {}
    for fn in (moe.dispatch_loop, moe.dispatch_sorted):
        Reads.n, calls[:] = 0, []
        with torch.no_grad(), Reads():
            fn(x, w, idx, experts)
        counts[fn.__name__] = (Reads.n, len(calls))
    assert counts["dispatch_loop"][0] - counts["dispatch_sorted"][0] == 6 - 1
    assert counts["dispatch_loop"][1] == counts["dispatch_sorted"][1] == 5   # expert 5 unused


# ---------------------------------------------------------------- expert choice

@pytest.mark.parametrize("T,E,cap", [(37, 5, 14), (8, 8, 1), (20, 3, 20)])
def test_expert_choice_fills_every_expert_exactly(T, E, cap):
    logits = torch.randn(T, E, generator=gen(5))
    w, tok = moe.expert_choice_route(logits, cap)
    assert w.shape == tok.shape == (E, cap)
    for e in range(E):
        assert len(set(tok[e].tolist())) == cap
        ref_w, ref_tok = logits.softmax(-1)[:, e].sort(descending=True)
        assert_close(w[e], ref_w[:cap])
        assert torch.equal(tok[e], ref_tok[:cap])


# ---------------------------------------------------------------- DeepSeek-V3 routing

V3_CONFIGS = [  # (E, k, n_groups, topk_groups, route_scale, with bias)
    (256, 8, 8, 4, 2.5, True), (12, 3, 3, 2, 1.0, True), (10, 3, 1, 1, 1.0, False),
    (16, 4, 4, 1, 1.0, False), (6, 6, 2, 2, 1.0, True)]


@pytest.mark.parametrize("E,k,G,TG,scale,with_bias", V3_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_deepseek_v3_route_matches_brute_force(E, k, G, TG, scale, with_bias, dtype):
    g = gen(E + k + G)
    logits = torch.randn(29, E, generator=g, dtype=torch.float64)
    bias = 0.1 * torch.randn(E, generator=g, dtype=torch.float64) if with_bias else torch.zeros(E)
    idx, w = moe.deepseek_v3_route(torch.sigmoid(logits.to(dtype)), bias.to(dtype), n_groups=G,
                                   topk_groups=TG, k=k, route_scale=scale)
    assert w.dtype == dtype and idx.dtype == torch.int64 and idx.shape == (29, k)
    w_ref, idx_ref = v3_route_by_loop(logits.to(dtype), k, bias, G, TG, scale)
    w_s, idx_s = sort_by_expert(w, idx)
    assert torch.equal(idx_s, idx_ref)
    assert_close(w_s.double(), w_ref, atol=1e-12 if dtype == torch.float64 else 1e-6, rtol=0)
    if G > 1:
        assert all(len(set((row // (E // G)).tolist())) <= TG for row in idx)


def test_deepseek_v3_gates_ignore_the_bias_and_have_the_right_gradient():
    logits = torch.randn(17, 12, generator=gen(6), dtype=torch.float64, requires_grad=True)
    bias = torch.randn(12, generator=gen(7), dtype=torch.float64)
    idx, w = moe.deepseek_v3_route(torch.sigmoid(logits), bias, n_groups=3, topk_groups=2, k=3,
                                   route_scale=2.5)
    s = logits.sigmoid().gather(1, idx)
    ref = 2.5 * s / s.sum(-1, keepdim=True)
    assert_close(w, ref, atol=1e-12, rtol=0)
    up = torch.randn(17, 3, generator=gen(8), dtype=torch.float64)
    g, = torch.autograd.grad((w * up).sum(), logits)
    g_ref, = torch.autograd.grad((ref * up).sum(), logits)
    assert_close(g, g_ref, atol=1e-12, rtol=0)


def test_deepseek_v3_route_low_precision_keeps_dtype():
    s = torch.sigmoid(torch.randn(31, 16, generator=gen(23))).bfloat16()
    bias = 0.01 * torch.randn(16, generator=gen(24))
    idx, w = moe.deepseek_v3_route(s, bias, n_groups=4, topk_groups=2, k=4, route_scale=2.5)
    idx32, w32 = moe.deepseek_v3_route(s.float(), bias, n_groups=4, topk_groups=2, k=4,
                                       route_scale=2.5)
    assert w.dtype == torch.bfloat16 and idx.dtype == torch.int64
    assert torch.equal(idx, idx32)
    assert_close(w.float(), w32, atol=2e-2, rtol=0)


def test_update_bias_moves_against_the_load():
    b = moe.update_bias(torch.zeros(4), torch.tensor([10, 2, 6, 6]), 0.01)
    assert_close(b, torch.tensor([-0.01, 0.01, 0.0, 0.0]))


def test_bias_balances_a_skewed_router():
    g, E = gen(10), 8
    skew = torch.linspace(1.0, -1.0, E)
    bias, vio = torch.zeros(E), []
    for _ in range(150):
        idx, _ = moe.deepseek_v3_route(torch.sigmoid(torch.randn(512, E, generator=g) + skew), bias,
                                       n_groups=4, topk_groups=2, k=2)
        c = torch.bincount(idx.reshape(-1), minlength=E)
        vio.append(float(c.max() / c.float().mean() - 1))
        bias = moe.update_bias(bias, c, 0.01)
    assert sum(vio[-20:]) / 20 < vio[0] / 3


# ---------------------------------------------------------------- dispatch

def make_problem(T, E, k, d, dtype, seed, skip_expert=None):
    torch.manual_seed(seed)
    experts = [moe.SwiGLU(d, 9).to(dtype) for _ in range(E)]
    x = torch.randn(T, d, dtype=dtype, requires_grad=True)
    logits = torch.randn(T, E, dtype=dtype)
    if skip_expert is not None:
        logits[:, skip_expert] = -1e4          # nobody picks it: an empty slice
    logits.requires_grad_(True)
    return experts, x, logits


@pytest.mark.parametrize("T,E,k,d", [(37, 5, 2, 12), (1, 3, 1, 4), (16, 4, 4, 8), (23, 7, 3, 5)])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("fn", [moe.dispatch_loop, moe.dispatch_sorted], ids=["loop", "sorted"])
def test_dispatch_outputs_and_grads_equal_dense(T, E, k, d, dtype, atol, fn):
    experts, x, logits = make_problem(T, E, k, d, dtype, seed=T * E + k)
    params = [x, logits] + [p for e in experts for p in e.parameters()]
    up = torch.randn(T, d, dtype=dtype)

    def run(dispatch):
        idx, w = moe.topk_route(logits, k)
        y = dispatch(x, w, idx, experts)
        return y, torch.autograd.grad((y * up).sum(), params, allow_unused=True,
                                   materialize_grads=True)

    (y, g), (y_ref, g_ref) = run(fn), run(dense_moe)
    assert_close(y, y_ref, atol=atol, rtol=0)
    for a, b in zip(g, g_ref):
        assert_close(a, b, atol=atol, rtol=0)


def test_dispatch_with_an_expert_nobody_chose():
    experts, x, logits = make_problem(37, 5, 2, 12, torch.float64, seed=11, skip_expert=4)
    idx, w = moe.topk_route(logits, 2)
    assert not (idx == 4).any()
    ys = moe.dispatch_sorted(x, w, idx, experts)
    assert_close(ys, moe.dispatch_loop(x, w, idx, experts), atol=1e-12, rtol=0)
    assert_close(ys, dense_moe(x, w, idx, experts), atol=1e-12, rtol=0)
    g, = torch.autograd.grad(ys.sum(), experts[4].w1.weight, allow_unused=True)
    assert g is None or torch.count_nonzero(g) == 0


def test_dispatch_bfloat16_close_to_float32():
    experts, x, logits = make_problem(37, 5, 2, 16, torch.float32, seed=12)
    idx, w = moe.topk_route(logits.detach(), 2)
    ref = moe.dispatch_loop(x.detach(), w, idx, experts)
    bf_experts = [moe.SwiGLU(16, 9).bfloat16() for _ in range(5)]
    for a, b in zip(bf_experts, experts):
        a.load_state_dict(b.state_dict())
    out = moe.dispatch_sorted(x.detach().bfloat16(), w.bfloat16(), idx, bf_experts)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------- MoE layer

def test_moe_single_expert_is_that_expert():
    torch.manual_seed(13)
    layer = moe.MoE(10, 6, n_experts=1, k=1)
    x = torch.randn(3, 4, 10)
    assert_close(layer(x), layer.experts[0](x))


@pytest.mark.parametrize("kw", [dict(), dict(capacity_factor=1.0),
                                dict(n_shared=2, score="sigmoid", n_groups=3, topk_groups=2,
                                     route_scale=2.5)])
def test_moe_sorted_equals_loop(kw):
    torch.manual_seed(14)
    a = moe.MoE(8, 12, n_experts=6, k=2, **kw)
    b = moe.MoE(8, 12, n_experts=6, k=2, dispatch="loop", **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 19, 8, dtype=torch.float32)
    ya, yb = a(x), b(x)
    assert ya.shape == x.shape
    assert_close(ya, yb)
    ga = torch.autograd.grad(ya.square().sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.square().sum(), list(b.parameters()))
    for p, q in zip(ga, gb):
        assert_close(p, q)


def test_moe_shared_expert_and_stats():
    torch.manual_seed(15)
    layer = moe.MoE(8, 4, n_experts=8, k=2, n_shared=1, score="sigmoid", n_groups=4, topk_groups=2)
    x = torch.randn(21, 8)
    y = layer(x)
    st = layer.stats
    routed = dense_moe(x, st["weights"], st["indices"], list(layer.experts))
    assert_close(y - routed, layer.shared(x))
    assert st["tokens_per_expert"].sum() == 21 * 2
    f = st["tokens_per_expert"].float() / (21 * 2)
    assert_close(st["aux_loss"], 8 * (f * st["probs"].mean(0)).sum())


def test_moe_capacity_drops_routes():
    torch.manual_seed(16)
    layer = moe.MoE(8, 4, n_experts=4, k=1, capacity_factor=0.25)
    x = torch.randn(40, 8)
    layer(x)
    st = layer.stats
    kept = st["weights"] != 0
    assert torch.equal(kept, keep_by_loop(st["indices"], 4, moe.switch_capacity(40, 4, 0.25)))
    assert int(kept.sum()) <= 4 * moe.switch_capacity(40, 4, 0.25)


# ---------------------------------------------------------------- bad inputs

def v3(scores=None, bias="zeros", E=8, **kw):
    """deepseek_v3_route with defaults for all but what a case changes."""
    scores = torch.rand(4, E, generator=gen(22)) if scores is None else scores
    bias = torch.zeros(E) if isinstance(bias, str) else bias
    kw = dict(dict(n_groups=1, topk_groups=1, k=2), **kw)
    return moe.deepseek_v3_route(scores, bias, **kw)


ERRORS = [
    (lambda: moe.SwiGLU(0, 4), ValueError, "d_model and d_ff must be >= 1"),
    (lambda: moe.SwiGLU(4, 8)(torch.randn(2, 5)), ValueError, "(..., d_model) = (..., 4)"),
    (lambda: moe.topk_route(torch.randn(2, 3, 4), 1), ValueError, "(tokens, n_experts)"),
    (lambda: moe.topk_route(torch.randn(5, 4), 5), ValueError, "[1, n_experts] = [1, 4]"),
    (lambda: moe.topk_route(torch.randn(5, 4), 0), ValueError, "[1, n_experts] = [1, 4]"),
    (lambda: moe.topk_route(torch.ones(5, 4, dtype=torch.int64), 1), TypeError, "floating-point"),
    (lambda: moe.topk_route(torch.randn(5, 4), 2, renormalize=False), TypeError, "renormalize"),
    (lambda: moe.switch_route(torch.randn(5, 4), 0.0), ValueError,
     "switch_route: capacity_factor must be a number > 0"),
    (lambda: moe.switch_route(torch.randn(5, 4), -1), ValueError, "capacity_factor must be a number > 0"),
    (lambda: moe.switch_route(torch.randn(5, 4), "1.0"), ValueError, "capacity_factor must be a number"),
    (lambda: moe.switch_route(torch.randn(2, 5, 4), 1.0), ValueError,
     "switch_route: logits must have shape (tokens, n_experts) with tokens >= 1"),
    (lambda: moe.switch_route(torch.randn(0, 4), 1.0), ValueError, "tokens >= 1, got (0, 4)"),
    (lambda: moe.switch_route(torch.ones(5, 4, dtype=torch.int64), 1.0), TypeError,
     "switch_route: logits must be a floating-point tensor"),
    (lambda: moe.switch_capacity(0, 4, 1.0), ValueError, "n_tokens must be an int >= 1"),
    (lambda: moe.switch_capacity(8, 4, 0.0), ValueError, "capacity_factor must be > 0"),
    (lambda: moe.switch_capacity(8, 4, 1.0, k=0), ValueError, "k must be an int >= 1"),
    (lambda: moe.capacity_keep(torch.zeros(4, dtype=torch.int64), 3, 2), ValueError, "(tokens, k)"),
    (lambda: moe.capacity_keep(torch.full((4, 1), 3), 3, 2), ValueError, "[0, n_experts) = [0, 3)"),
    (lambda: moe.capacity_keep(torch.zeros(4, 1, dtype=torch.int64), 3, -1), ValueError,
     "capacity must be an int >= 0"),
    (lambda: moe.load_balancing_loss(torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.int64)),
     ValueError, "must sum to 1"),
    (lambda: moe.load_balancing_loss(torch.full((4, 3), 1 / 3), torch.zeros(5, 1, dtype=torch.int64)),
     ValueError, "(tokens, k) = (4, k)"),
    (lambda: moe.load_balancing_loss(torch.full((4, 3), 1 / 3), torch.full((4, 1), 7)),
     ValueError, "[0, n_experts) = [0, 3)"),
    (lambda: moe.sequence_balance_loss(torch.full((6, 3), 1 / 3), torch.zeros(6, 1, dtype=torch.int64), 4),
     ValueError, "sequence_balance_loss: seq_len must be an int >= 1 that divides the 6 tokens, got 4"),
    (lambda: moe.sequence_balance_loss(torch.randn(6, 3), torch.zeros(6, 1, dtype=torch.int64), 3),
     ValueError, "sequence_balance_loss: each row of router_probs must sum to 1"),
    (lambda: moe.load_balancing_loss(torch.full((4,), 0.25), torch.zeros(4, 1, dtype=torch.int64)),
     ValueError, "(tokens, n_experts)"),
    (lambda: moe.expert_choice_route(torch.randn(6, 3), 7), ValueError, "[1, tokens] = [1, 6]"),
    (lambda: moe.expert_choice_route(torch.randn(6), 2), ValueError, "(tokens, n_experts)"),
    (lambda: v3(E=10, n_groups=3, topk_groups=1), ValueError, "n_groups must divide n_experts = 10"),
    (lambda: v3(E=12, n_groups=5, topk_groups=2), ValueError, "n_groups must divide n_experts = 12"),
    (lambda: v3(n_groups=8, topk_groups=2), ValueError, "each group needs >= 2 experts"),
    (lambda: v3(n_groups=4, topk_groups=5), ValueError, "topk_groups must be in [1, n_groups] = [1, 4]"),
    (lambda: v3(n_groups=4, topk_groups=2, k=5), ValueError,
     "k must be in [1, topk_groups * group size] = [1, 4]"),
    (lambda: v3(n_groups=1, topk_groups=1, k=9), ValueError,            # k > n_experts = 8
     "k must be in [1, topk_groups * group size] = [1, 8]"),
    (lambda: v3(k=0), ValueError, "k must be in [1, topk_groups * group size]"),
    (lambda: v3(bias=torch.zeros(7)), ValueError, "bias must be a tensor of shape (n_experts,) = (8,)"),
    (lambda: v3(bias=None), ValueError, "bias must be a tensor of shape (n_experts,) = (8,), got None"),
    (lambda: v3(scores=torch.rand(4, 8, 2)), ValueError, "scores must have shape (tokens, n_experts)"),
    (lambda: v3(scores=torch.randn(4, 8, generator=gen(21))), ValueError,
     "scores must be sigmoid affinities in [0, 1] (pass torch.sigmoid(logits), not the logits)"),
    (lambda: v3(scores=torch.ones(4, 8, dtype=torch.int64)), TypeError,
     "deepseek_v3_route: scores must be a floating-point tensor"),
    (lambda: moe.deepseek_v3_route(torch.rand(4, 8), torch.zeros(8), n_groups=1, topk_groups=1),
     TypeError, "'k'"),
    (lambda: moe.deepseek_v3_route(torch.rand(4, 8), torch.zeros(8), 1, 1, 2), TypeError,
     "positional"),
    (lambda: moe.update_bias(torch.zeros(4), torch.zeros(3), 0.1), ValueError, "(n_experts,)"),
    (lambda: moe.update_bias(torch.zeros(4), torch.zeros(4), -0.1), ValueError, "gamma must be >= 0"),
    (lambda: moe.update_bias(torch.zeros(4, dtype=torch.int64), torch.zeros(4), 0.1), TypeError,
     "bias must be a floating-point tensor"),
]


def _dispatch_args(**change):
    args = dict(x=torch.randn(5, 4), weights=torch.ones(5, 2), indices=torch.zeros(5, 2, dtype=torch.int64),
                experts=[moe.SwiGLU(4, 3)] * 3)
    args.update(change)
    return args


for fn in (moe.dispatch_loop, moe.dispatch_sorted):
    name = fn.__name__
    ERRORS += [
        (lambda fn=fn: fn(**_dispatch_args(x=torch.randn(5))), ValueError,
         f"{name}: x must have shape (tokens, d_model)"),
        (lambda fn=fn: fn(**_dispatch_args(indices=torch.zeros(4, 2, dtype=torch.int64))), ValueError,
         "indices must be int64 of shape (tokens, k) = (5, k)"),
        (lambda fn=fn: fn(**_dispatch_args(indices=torch.zeros(5, 2, dtype=torch.int32))), ValueError,
         "indices must be int64"),
        (lambda fn=fn: fn(**_dispatch_args(weights=torch.ones(5, 3))), ValueError,
         "weights must be floating with the shape of indices (5, 2)"),
        (lambda fn=fn: fn(**_dispatch_args(indices=torch.full((5, 2), 3))), ValueError,
         "[0, len(experts)) = [0, 3)"),
        (lambda fn=fn: fn(**_dispatch_args(experts=[])), ValueError, "experts must be a non-empty"),
        (lambda fn=fn: fn(**_dispatch_args(x=torch.ones(5, 4, dtype=torch.int64))), TypeError,
         "x must be a floating-point tensor"),
    ]

ERRORS += [
    (lambda: moe.MoE(8, 4, 4, 2, score="relu"), ValueError, "score must be 'softmax' or 'sigmoid'"),
    (lambda: moe.MoE(8, 4, 4, 2, dispatch="magic"), ValueError, "dispatch must be 'sorted' or 'loop'"),
    (lambda: moe.MoE(8, 4, 4, 2, n_groups=2), ValueError, "needs score='sigmoid'"),
    (lambda: moe.MoE(8, 4, 4, 5), ValueError, "k must be in [1, topk_groups * group size] = [1, 4]"),
    (lambda: moe.MoE(8, 4, 6, 2, score="sigmoid", n_groups=4), ValueError,
     "MoE: n_groups must divide n_experts = 6, got 4"),
    (lambda: moe.MoE(8, 4, 4, 2, n_shared=-1), ValueError, "n_shared must be >= 0"),
    (lambda: moe.MoE(8, 4, 4, 2)(torch.randn(3, 7)), ValueError, "(..., d_model) = (..., 8)"),
]


@pytest.mark.parametrize("fn,exc,match", ERRORS, ids=[m[:40] for _, _, m in ERRORS])
def test_bad_inputs_raise_helpful_errors(fn, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        fn()
