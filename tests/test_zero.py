"""Tests of course_utils.zero (generated from notebooks/11_zero.ipynb).

Every stage (DDP, ZeRO-1, ZeRO-2, ZeRO-3) runs on 2, 3 and 4 real processes (gloo) with an
awkward model (units of 81 and 6 parameters, so the flat buffers need padding) and is compared
with single-process torch.optim.Adam: outputs, reduced gradients and weights after a few steps;
bytes sent (counted at the ring's sends) and held against the formulas; the ZeRO paper's numbers; adam_update_ against
torch.optim.Adam on awkward shapes and dtypes; PeakMemory; and every bad-input error.
"""
import re

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from course_utils import zero as Z
from course_utils.launch import run_distributed

STEPS, LR = 3, 3e-2
MODEL = dict(d=5, hidden=6, n_blocks=2, seed=3)        # units of 81, 81 and 6 parameters


def data():
    g = torch.Generator().manual_seed(7)
    return torch.randn(12, 5, generator=g), torch.randn(12, 1, generator=g)   # (B, d), (B, 1)


def reference():
    """Single-process torch.optim.Adam: first output, first full-batch gradient, final weights."""
    X, Y = data()
    model = Z.tiny_model(**MODEL)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    out0 = model(X).detach()
    grads0 = None
    for t in range(STEPS):
        opt.zero_grad()
        F.mse_loss(model(X), Y).backward()
        if t == 0:
            grads0 = [torch.cat([p.grad.reshape(-1) for p in unit.parameters()]) for unit in model]
        opt.step()
    return out0, grads0, {k: p.detach().clone() for k, p in model.named_parameters()}


def train_all(rank, n):
    X, Y = data()
    x, y = X.chunk(n)[rank], Y.chunk(n)[rank]                      # (B/N, d), (B/N, 1)
    out = {}
    for stage in Z.STAGE_NAMES:
        comm = Z.CommCounter()
        dp = Z.ZeroDataParallel(Z.tiny_model(**MODEL), stage, lr=LR, comm=comm)
        sent, received = [], []
        for t in range(STEPS):
            comm.reset()
            comm.mark("forward")
            pred = dp(x)
            if t == 0:
                out0 = pred.detach().clone()
            comm.mark("backward")
            F.mse_loss(pred, y).backward()
            comm.mark("step")
            if t == 0:
                grads0 = [g.clone() for g in dp.reduce_gradients()]
            dp.step()
            sent.append(comm.bytes_sent)
            received.append(sum(e.received for e in comm.log))
        out[stage] = dict(out0=out0, grads0=grads0, params=dp.full_parameters(), sent=sent,
                          received=received, log=list(comm.log), marks=list(comm.marks),
                          held=dp.held_bytes(), psi=dp.psi, psi_padded=dp.psi_padded,
                          peak=dict(dp.peak_transient), messages=comm.stats.messages_sent)
    return out


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.fixture(scope="module")
def runs(ref):   # after ref: the parent has imported torch.optim's lazy parts, so each fork need not
    return {n: run_distributed(train_all, n, timeout=90) for n in (2, 3, 4)}


CASES = [(stage, n) for n in (2, 3, 4) for stage in range(4)]


@pytest.mark.parametrize("stage, n", CASES)
def test_forward_outputs_match_the_model(runs, ref, stage, n):
    got = torch.cat([r[stage]["out0"] for r in runs[n]])           # (B, 1), rank order
    assert_close(got, ref[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("stage, n", CASES)
def test_reduced_gradients_are_slices_of_the_full_batch_gradient(runs, ref, stage, n):
    for r, res in enumerate(runs[n]):
        for u, (got, full) in enumerate(zip(res[stage]["grads0"], ref[1])):
            padded = F.pad(full, (0, -full.numel() % n))           # (P_u,)
            want = padded if stage == 0 else padded.chunk(n)[r]
            assert_close(got, want, atol=1e-6, rtol=1e-5, msg=f"rank {r}, unit {u}")


@pytest.mark.parametrize("stage, n", CASES)
def test_weights_after_k_steps_equal_single_process_adam(runs, ref, stage, n):
    for res in runs[n]:
        got = res[stage]["params"]
        assert list(got) == list(ref[2])
        for k in got:
            assert_close(got[k], ref[2][k], atol=2e-6, rtol=1e-5, msg=k)


@pytest.mark.parametrize("stage, n", CASES)
def test_counted_bytes_sent_per_step_equal_the_closed_forms(runs, stage, n):
    """The bytes the ring passed to send (counted by CommStats) against 2(N-1)/N·P·4 (DDP, ZeRO-1,
    ZeRO-2) and 3(N-1)/N·P·4 (ZeRO-3), written out here rather than taken from the module."""
    P = sum(-(-k // n) * n for k in (81, 81, 6))                   # padded: 84 + 84 + 8 at N = 4
    factor = 3 if stage == 3 else 2
    for res in runs[n]:
        r = res[stage]
        assert r["psi_padded"] == P
        assert r["sent"] == [factor * (n - 1) * P * 4 // n] * STEPS
        assert r["sent"] == [Z.comm_bytes_per_step(P, n, stage, elem_bytes=4)] * STEPS
    per_step = [sum(res[stage]["received"][t] for res in runs[n]) for t in range(STEPS)]
    assert per_step == [sum(res[stage]["sent"][t] for res in runs[n]) for t in range(STEPS)]


@pytest.mark.parametrize("stage, n", CASES)
def test_bytes_are_sent_as_ring_messages(runs, stage, n):
    """Each ring collective sends N - 1 messages per phase (one per step), 3 units of 3 and one
    all-reduce (2 phases) or reduce-scatter + all-gather (2) or 2 gathers + 1 reduce-scatter (3)."""
    phases = 3 if stage == 3 else 2
    for res in runs[n]:
        assert res[stage]["messages"] == STEPS * 3 * phases * (n - 1)


PHASES = {0: {("all_reduce", "backward")},
          1: {("reduce_scatter", "step"), ("all_gather", "step")},
          2: {("reduce_scatter", "backward"), ("all_gather", "step")},
          3: {("all_gather", "forward"), ("all_gather", "backward"), ("reduce_scatter", "backward")}}


@pytest.mark.parametrize("stage, n", CASES)
def test_the_log_puts_each_collective_in_its_phase(runs, stage, n):
    for res in runs[n]:
        r = res[stage]
        phases = {(e.op, [label for label, t in r["marks"] if t <= e.start][-1]) for e in r["log"]}
        assert phases == PHASES[stage]
        assert all(0 <= e.start <= e.end for e in r["log"])
        assert [e.start for e in r["log"]] == sorted(e.start for e in r["log"])


@pytest.mark.parametrize("stage, n", CASES)
def test_bytes_held_match_the_formula(runs, stage, n):
    for res in runs[n]:
        r = res[stage]
        assert r["held"] == Z.model_state_bytes(r["psi_padded"], n, stage, param_bytes=4,
                                                grad_bytes=4, K=8)
        assert r["psi"] == 168


@pytest.mark.parametrize("n", (2, 3, 4))
def test_zero3_and_zero2_transients_peak_at_one_unit(runs, n):
    unit = 4 * -(-81 // n) * n
    assert runs[n][0][3]["peak"] == {"params": unit, "grads": unit}
    assert runs[n][0][2]["peak"]["grads"] == unit


def test_single_process_is_torch_adam_to_the_bit(ref):
    X, Y = data()
    dp = Z.ZeroDataParallel(Z.tiny_model(**MODEL), 0, lr=LR)
    for _ in range(STEPS):
        F.mse_loss(dp(X), Y).backward()
        dp.step()
    for k, p in dp.full_parameters().items():
        assert_close(p, ref[2][k], atol=0, rtol=0, msg=k)


# ------------------------------------------------------------------ the collectives and their counts
def collectives(rank, n):
    comm = Z.CommCounter()
    x = torch.arange(6 * n, dtype=torch.float64) * (rank + 1)             # (6N,)
    shard = torch.empty(6, dtype=torch.float64)
    comm.reduce_scatter(shard, x, tag="rs")
    full = torch.empty(6 * n, dtype=torch.float64)
    comm.all_gather(full, shard, tag="ag")
    y = x.clone()
    comm.all_reduce(y, tag="ar")
    # closed forms (no torch.distributed call, whose flat-tensor names differ across releases)
    ref_ar = torch.arange(6 * n, dtype=torch.float64) * (n * (n + 1) // 2)   # Σ_r (r + 1) · arange
    ref_rs = ref_ar[6 * rank: 6 * (rank + 1)]                               # this rank's block
    return shard, ref_rs, full, ref_ar, y, ref_ar, comm.log


@pytest.mark.parametrize("n", (2, 3, 4))
def test_comm_counter_collectives_and_counted_ring_bytes(n):
    for res in run_distributed(collectives, n, timeout=60):
        shard, ref_rs, full, ref_ag, y, ref_ar, log = res
        assert_close(shard, ref_rs, atol=0, rtol=0)
        assert_close(full, ref_ag, atol=0, rtol=0)
        assert_close(y, ref_ar, atol=0, rtol=0)
        b = 6 * n * 8                                        # payload: 6N float64
        assert [(e.op, e.tag, e.payload, e.sent, e.received) for e in log] == [
            ("reduce_scatter", "rs", b, (n - 1) * b // n, (n - 1) * b // n),
            ("all_gather", "ag", b, (n - 1) * b // n, (n - 1) * b // n),
            ("all_reduce", "ar", b, 2 * (n - 1) * b // n, 2 * (n - 1) * b // n)]


def test_comm_counter_alone_copies_and_sends_nothing():
    comm = Z.CommCounter()
    out = torch.empty(5)
    comm.reduce_scatter(out, torch.arange(5.0))
    assert_close(out, torch.arange(5.0))
    assert comm.n == 1 and comm.bytes_sent == 0 and len(comm.log) == 1
    comm.mark("x")
    comm.reset()
    assert comm.log == [] and comm.marks == []


# ------------------------------------------------------------------ formulas
def test_model_state_bytes_reproduces_the_zero_paper():
    got = [sum(Z.model_state_bytes(7.5e9, 64, s).values()) / 1e9 for s in range(4)]
    assert [round(v, 1) for v in got] == [120.0, 31.4, 16.6, 1.9]
    assert Z.model_state_bytes(1000, 8, 2, param_bytes=4, grad_bytes=4, K=8) == \
        {"params": 4000, "grads": 500, "optimizer": 1000}


def test_comm_bytes_per_step():
    assert [Z.comm_bytes_per_step(120, 4, s, elem_bytes=4) for s in range(4)] == [720] * 3 + [1080]
    assert Z.comm_bytes_per_step(10, 1, 3) == 0


@pytest.mark.parametrize("shape, dtype", [((7, 3), torch.float32), ((5,), torch.float64),
                                          ((1, 1, 4), torch.float32)])
def test_adam_update_matches_torch_adam_bitwise(shape, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g, dtype=dtype)
    ref = w.clone().requires_grad_()
    opt = torch.optim.Adam([ref], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(1, 5):
        grad = torch.randn(shape, generator=g, dtype=dtype)
        ref.grad = grad.clone()
        opt.step()
        Z.adam_update_(w, grad, m, v, t, lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    assert_close(w, ref.detach(), atol=0, rtol=0)
    assert_close(m, opt.state[ref]["exp_avg"], atol=0, rtol=0)
    assert_close(v, opt.state[ref]["exp_avg_sq"], atol=0, rtol=0)


def test_flatten_padded_and_unflatten_round_trip():
    block = Z.Block(5, 6)
    flat, layout = Z.flatten_padded(block, 4)
    assert flat.shape == (84,) and flat[81:].eq(0).all()
    views = Z.unflatten(flat, layout)
    for k, p in block.named_parameters():
        assert_close(views[k], p.detach(), atol=0, rtol=0)
        assert views[k].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()


def test_peak_memory_counts_new_storage_only():
    base = torch.ones(100)
    with Z.PeakMemory() as pm:
        v = base.view(10, 10)                  # a view of an outside tensor: not counted
        a = base * 2                           # 400 bytes
        b = torch.empty(50, dtype=torch.float64)   # 400 bytes
        del a
        after = pm.live
    assert (pm.peak, after) == (800, 400)
    del b, v


def test_peak_memory_sees_activations_of_a_block():
    block = Z.Block(8, 12)
    x = torch.randn(10, 8)
    with Z.PeakMemory() as pm:
        y = block(x)
        kept = pm.live
    assert kept == 4 * 10 * (8 + 8 + 2 * 12 + 2)    # output, LN out, 2 hidden, mean and rstd
    del y


# ------------------------------------------------------------------ errors
def test_trainer_refuses_a_second_backward_and_a_step_without_backward():
    X, Y = data()
    for stage in (0, 2, 3):
        dp = Z.ZeroDataParallel(Z.tiny_model(**MODEL), stage)
        with pytest.raises(RuntimeError, match="call loss.backward"):
            dp.step()
        F.mse_loss(dp(X), Y).backward()
        with pytest.raises(RuntimeError, match="one backward per step"):
            F.mse_loss(dp(X), Y).backward()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: Z.model_state_bytes(10, 4, 4), ValueError, "stage must be 0"),
    (lambda: Z.model_state_bytes(10, 0, 1), ValueError, "n_gpus must be an int >= 1"),
    (lambda: Z.model_state_bytes(0, 4, 1), ValueError, "psi must be a number >= 1"),
    (lambda: Z.model_state_bytes(10, 4, 1, K=-1), ValueError, "K must be a number >= 0"),
    (lambda: Z.comm_bytes_per_step(10, 4, True), ValueError, "stage must be 0"),
    (lambda: Z.comm_bytes_per_step(10, 4, 1, elem_bytes=-2), ValueError, "elem_bytes"),
    (lambda: Z.adam_update_(torch.zeros(3), torch.zeros(4), torch.zeros(3), torch.zeros(3), 1),
     ValueError, "g must be a floating tensor of p's shape (3,)"),
    (lambda: Z.adam_update_(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), 0),
     ValueError, "step must be an int >= 1"),
    (lambda: Z.adam_update_(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), 1, lr=0),
     ValueError, "need lr > 0"),
    (lambda: Z.adam_update_(torch.zeros(3), [0, 0, 0], torch.zeros(3), torch.zeros(3), 1),
     TypeError, "g must be a torch.Tensor"),
    (lambda: Z.flatten_padded("block", 2), TypeError, "module must be an nn.Module"),
    (lambda: Z.flatten_padded(nn.GELU(), 2), ValueError, "GELU has no parameters"),
    (lambda: Z.flatten_padded(nn.Linear(2, 2).double(), 2), TypeError, "must be float32"),
    (lambda: Z.flatten_padded(nn.Linear(2, 2), 0), ValueError, "flatten_padded: n must be an int >= 1"),
    (lambda: Z.tiny_model(d=0), ValueError, "d must be an int >= 1"),
    (lambda: Z.ZeroDataParallel("model", 0), TypeError, "model must be an nn.Module"),
    (lambda: Z.ZeroDataParallel(Z.tiny_model(), 5), ValueError, "stage must be 0"),
    (lambda: Z.ZeroDataParallel(Z.tiny_model(), 1, comm="c"), TypeError, "comm must be a CommCounter"),
    (lambda: Z.ZeroDataParallel(nn.Linear(3, 3), 1), ValueError, "every parameter must sit in a child"),
    (lambda: Z.ZeroDataParallel(Z.tiny_model(), 1)([1.0]), TypeError, "x must be a torch.Tensor"),
    (lambda: Z.CommCounter().reduce_scatter(torch.empty(3), torch.empty(4)), ValueError,
     "inp must have N·3 = 3 elements (N = 1), got 4"),
    (lambda: Z.CommCounter().all_gather(torch.empty(3), torch.empty(3, dtype=torch.float64)),
     TypeError, "one dtype"),
    (lambda: Z.CommCounter().all_gather(torch.empty(2), torch.empty(3)), ValueError,
     "out must have N·3 = 3 elements"),
    (lambda: Z.CommCounter().all_reduce(3.0), TypeError, "t must be a torch.Tensor"),
])
def test_bad_inputs_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        call()
