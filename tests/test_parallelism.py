"""Tests of course_utils.parallelism (generated from notebooks/12_parallelism.ipynb).

Every parallel path runs on real processes (gloo, 2, 3 and 4 ranks) and is compared with the
single-process computation with torch.testing.assert_close, outputs and gradients: the
tensor-parallel block (GQA heads split and replicated), sequence parallelism, the vocabulary-
parallel embedding and cross-entropy, ring attention (causal, load-balanced, GQA), Ulysses, expert
parallelism and a DP x TP device mesh. Sequence lengths, vocabularies and token counts do not
divide by the world size where the method allows it; where it does not, the error is checked.
Bytes are counted at the sends and compared with the formulas. The ring-attention and
tensor-parallel tests also run with NCCL on two GPUs when a machine has them (skipped otherwise).
"""
import functools
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from course_utils.collectives import CommStats, ring_all_reduce, run_exercise_ranks
from course_utils.exercises import ExerciseError
from course_utils.launch import RankError, run_distributed
from course_utils.moe import MoE, topk_route
from course_utils.parallelism import (Block, ExpertParallelMoE, TensorParallelBlock,
                                      TensorParallelLM, TinyLM, VocabParallelEmbedding,
                                      context_chunks, context_shard, context_unshard,
                                      counted_all_reduce, dense_qkv, dist_all_reduce,
                                      gqa_head_split, korthikanti_activation_bytes,
                                      lse_exercise_rank, merge_attention, ring_attention,
                                      saved_activation_bytes, sequence_parallel_grads,
                                      ulysses_attention, vocab_parallel_cross_entropy,
                                      vocab_range)

WORLD = [2, 3, 4]
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for NCCL")
F64 = torch.float64


def _run(fn, n, *args, backend="gloo", timeout=60):
    """run_distributed, or with NCCL on 2 GPUs: spawned ranks (this process may have initialised
    CUDA) that get this test module's functions by value."""
    if backend == "gloo":
        return run_distributed(fn, n, *args, timeout=timeout, echo=False)
    import cloudpickle
    mod = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(mod)
    try:
        return run_distributed(fn, n, *args, backend="nccl", timeout=120, echo=False,
                               start_method="spawn")
    finally:
        cloudpickle.unregister_pickle_by_value(mod)


def _dev(backend):
    return torch.device("cuda") if backend == "nccl" else torch.device("cpu")


def _cpu(x):
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


# ---------------------------------------------------------------- heads

@pytest.mark.parametrize("nh,nkv,tp", [(8, 2, 2), (8, 2, 4), (8, 2, 8), (12, 3, 3), (12, 1, 3),
                                       (12, 4, 2), (32, 8, 16), (6, 6, 3), (4, 4, 1)])
def test_gqa_head_split(nh, nkv, tp):
    split = gqa_head_split(nh, nkv, tp)
    assert [h for q, _ in split for h in q] == list(range(nh))            # every query head once
    for q, kv in split:
        assert {h // (nh // nkv) for h in q} == set(kv)                   # exactly what they read
    held = [sum(g in kv for _, kv in split) for g in range(nkv)]
    assert held == [max(1, tp // nkv)] * nkv                               # replicas when tp > nkv


@pytest.mark.parametrize("args,match", [
    ((8, 3, 2), "n_heads = 8 must be divisible by n_kv_heads = 3"),
    ((8, 2, 3), "n_heads = 8 must be divisible by tp = 3"),
    ((6, 2, 3), "must divide n_kv_heads = 2 or be a multiple"),
    ((12, 4, 6), "must divide n_kv_heads = 4 or be a multiple"),
    ((8, 2, 0), "tp must be an int >= 1"),
    ((8.0, 2, 2), "n_heads must be an int >= 1"),
])
def test_gqa_head_split_errors(args, match):
    with pytest.raises(ValueError, match=match):
        gqa_head_split(*args)


# ---------------------------------------------------------------- tensor-parallel block

D, H, B = 24, 12, 2
KV = {2: [4, 12], 3: [3, 1], 4: [2, 4]}          # per world size: K/V heads split and replicated


def _block(nkv, dev="cpu", **kw):
    torch.manual_seed(0)
    return Block(D, H, nkv, **kw).to(device=dev, dtype=F64)


def _data(s, dev="cpu"):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, s, D, generator=g, dtype=F64).to(dev) for _ in range(2)]


def _dense(nkv, s):
    blk, (x, gy) = _block(nkv), _data(s)
    x.requires_grad_()
    y = blk(x)
    (y * gy).sum().backward()
    return blk, y.detach(), x.grad


def _tp_case(rank, n, nkv, s, sp, backend):
    dev = _dev(backend)
    (x, gy), st = _data(s, dev), CommStats()
    blk = TensorParallelBlock(_block(nkv, dev), rank, n, all_reduce=counted_all_reduce(st),
                              seq_len=s if sp else None, stats=st)
    if sp:
        mine = torch.arange(s).tensor_split(n)[rank].to(dev)
        x, gy = x[:, mine], gy[:, mine]
    x = x.clone().requires_grad_()
    y = blk(x)
    fwd = st.bytes_sent
    (y * gy).sum().backward()
    if sp:
        sequence_parallel_grads(blk)
    return dict(y=_cpu(y), dx=_cpu(x.grad), bytes=[fwd, st.bytes_sent - fwd],
                grads={k: _cpu(p.grad) for k, p in blk.named_parameters()})


def _check_block(res, nkv, s, sp):
    blk, y, dx = _dense(nkv, s)
    if sp:
        assert_close(torch.cat([r["y"] for r in res], 1), y)
        assert_close(torch.cat([r["dx"] for r in res], 1), dx)
    else:
        for r in res:
            assert_close(r["y"], y)
            assert_close(r["dx"], dx)
    G = [r["grads"] for r in res]
    for name in ("weight", "bias"):
        got = dense_qkv([g[f"qkv.{name}"] for g in G], H, nkv)
        for part, lin in zip(got, (blk.wq, blk.wk, blk.wv)):
            assert_close(part, getattr(lin, name).grad)
    assert_close(torch.cat([g["wo.weight"] for g in G], 1), blk.wo.weight.grad)
    assert_close(torch.cat([g["fc1.weight"] for g in G]), blk.fc1.weight.grad)
    assert_close(torch.cat([g["fc1.bias"] for g in G]), blk.fc1.bias.grad)
    assert_close(torch.cat([g["fc2.weight"] for g in G], 1), blk.fc2.weight.grad)
    for g in G:                                        # replicated, or summed by sequence_parallel_grads
        for name in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "wo.bias", "fc2.bias"):
            mod, attr = name.split(".")
            assert_close(g[name], getattr(getattr(blk, mod), attr).grad, msg=name)


@pytest.mark.parametrize("n", WORLD)
def test_tensor_parallel_block(n):
    s = 7                                              # b·s·h = 336: the ring's chunks are equal
    for nkv in KV[n]:
        res = _run(_tp_case, n, nkv, s, False, "gloo")
        _check_block(res, nkv, s, False)
        ring = 2 * (n - 1) * B * s * D * 8 // n
        assert [r["bytes"] for r in res] == [[2 * ring, 2 * ring]] * n   # 2 all-reduces each way


@TWO_GPUS
def test_tensor_parallel_block_nccl():
    res = _run(_tp_case, 2, 4, 7, False, backend="nccl")
    _check_block(res, 4, 7, False)


@pytest.mark.parametrize("n", WORLD)
def test_sequence_parallel_block_uneven_and_bytes(n):
    nkv = KV[n][0]
    res = _run(_tp_case, n, nkv, 7, True, "gloo")      # 7 positions: never divisible here
    _check_block(res, nkv, 7, True)
    s = 12                                             # divisible: compare bytes with TP's
    res = _run(_tp_case, n, nkv, s, True, "gloo")
    ring = 2 * (n - 1) * B * s * D * 8 // n
    regather = 2 * (n - 1) * B * (s // n) * D * 8
    assert [r["bytes"] for r in res] == [[2 * ring, 2 * ring + regather]] * n


def _sp_wrong_length(rank, n):
    blk = TensorParallelBlock(_block(4), rank, n, seq_len=7)
    return blk(torch.zeros(B, 4, D, dtype=F64))        # rank 1 should hold 3 positions


def test_sequence_parallel_refuses_a_wrong_slice():
    with pytest.raises(RankError, match=r"rank 1 must hold 3 of the seq_len = 7 positions"):
        _run(_sp_wrong_length, 2)


def test_block_errors():
    with pytest.raises(ValueError, match="d_model = 24 must be divisible by n_heads = 5"):
        Block(24, 5, 5)
    with pytest.raises(ValueError, match="n_heads = 12 must be divisible by tp = 5"):
        TensorParallelBlock(_block(4), 0, 5)


# ---------------------------------------------------------------- activation memory

def _memory_case(rank, n, s, b, h, a):
    out = []
    for seq_len in (None, s):
        torch.manual_seed(0)
        blk = TensorParallelBlock(Block(h, a, a, dropout=0.1, causal=False).to(torch.bfloat16),
                                  rank, n, seq_len=seq_len)
        x = torch.randn(b, s, h, dtype=torch.bfloat16)
        x = x if seq_len is None else x[:, torch.arange(s).tensor_split(n)[rank]]
        out.append(saved_activation_bytes(lambda: blk(x.requires_grad_()), blk.parameters())[0])
    return out


@pytest.mark.parametrize("s,b,h,a", [(16, 2, 32, 4), (8, 3, 16, 2)])
def test_activation_memory_matches_korthikanti(s, b, h, a):
    """Measured bytes kept for backward = the paper's formulas + the LayerNorms' mean and 1/σ
    (2 norms × 2 numbers per position, bf16), which the paper leaves out."""
    torch.manual_seed(0)
    blk = Block(h, a, a, dropout=0.1, causal=False).to(torch.bfloat16)
    x = torch.randn(b, s, h, dtype=torch.bfloat16, requires_grad=True)
    one = saved_activation_bytes(lambda: blk(x), blk.parameters())[0]
    stats = 2 * 2 * 2 * s * b
    assert one == korthikanti_activation_bytes(s, b, h, a) + stats
    for n in (2, 4):
        if a % n:
            continue
        for tp_only, sp in _run(_memory_case, n, s, b, h, a):
            assert tp_only == korthikanti_activation_bytes(s, b, h, a, n) + stats
            assert sp == korthikanti_activation_bytes(s, b, h, a, n, sequence_parallel=True) + stats / n


def test_korthikanti_formula_values():
    # §4.1: sbh(34 + 5as/h); the TP and SP forms agree with it at t = 1
    assert korthikanti_activation_bytes(2048, 1, 12288, 96) == 2048 * 12288 * (34 + 5 * 96 * 2048 / 12288)
    for t in (1, 2, 8):
        full = korthikanti_activation_bytes(1024, 2, 4096, 32, 1)
        assert korthikanti_activation_bytes(1024, 2, 4096, 32, t, True) == pytest.approx(full / t)


# ---------------------------------------------------------------- vocabulary parallel

V, DV = 11, 8


def _vocab_setup():
    torch.manual_seed(0)
    emb = nn.Embedding(V, DV).double()
    g = torch.Generator().manual_seed(2)
    tok, tgt = torch.randint(0, V, (2, 6), generator=g), torch.randint(0, V, (2, 6), generator=g)
    return emb, tok, tgt, torch.randn(2, 6, DV, generator=g, dtype=F64)


def _vocab_case(rank, n):
    emb, tok, tgt, h = _vocab_setup()
    st = CommStats()
    vp = VocabParallelEmbedding(emb, rank, n)
    h.requires_grad_()
    e = vp(tok)
    loss = vocab_parallel_cross_entropy(vp.logits(h), tgt, vp.start, counted_all_reduce(st))
    (loss.sum() + (e * h.detach()).sum()).backward()
    return dict(e=e, loss=loss, dh=h.grad, dE=vp.weight.grad, rows=(vp.start, vp.end), bytes=st.bytes_sent)


@pytest.mark.parametrize("n", WORLD)
def test_vocab_parallel_embedding_and_cross_entropy(n):
    res = _run(_vocab_case, n)
    emb, tok, tgt, h = _vocab_setup()
    h.requires_grad_()
    e = emb(tok)
    loss = F.cross_entropy(F.linear(h, emb.weight).flatten(0, 1), tgt.flatten(), reduction="none").view(2, 6)
    (loss.sum() + (e * h.detach()).sum()).backward()
    for r in res:
        assert_close(r["e"], e.detach())
        assert_close(r["loss"], loss.detach())
        assert_close(r["dh"], h.grad)
        assert r["bytes"] == 3 * 2 * (n - 1) * 12 * 8 // n         # 12 tokens, 3 all-reduces
    assert_close(torch.cat([r["dE"] for r in res]), emb.weight.grad)
    sizes = [b - a for a, b in (r["rows"] for r in res)]
    assert sum(sizes) == V and max(sizes) - min(sizes) <= 1            # 11 rows do not divide


def test_vocab_parallel_cross_entropy_is_stable_and_ignores_split():
    """One rank (no split) on logits near 1e4: no overflow."""
    def case(rank, n):
        z = torch.tensor([[1e4, 1e4 - 1.0, 0.0], [5.0, -3.0, 2.0]], dtype=F64)
        return vocab_parallel_cross_entropy(z, torch.tensor([1, 2]), 0)
    got = _run(case, 1)[0]
    z = torch.tensor([[1e4, 1e4 - 1.0, 0.0], [5.0, -3.0, 2.0]], dtype=F64)
    assert_close(got, F.cross_entropy(z, torch.tensor([1, 2]), reduction="none"))


def test_vocab_range():
    assert [vocab_range(11, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]
    with pytest.raises(ValueError, match="need 0 <= rank < world_size <= vocab_size"):
        vocab_range(2, 0, 3)
    with pytest.raises(ValueError, match="need 0 <= rank"):
        vocab_range(10, 3, 3)


# ---------------------------------------------------------------- context parallelism

def test_context_chunks_cover_the_sequence_once():
    for n in (1, 2, 3, 4, 5):
        for T in range(2 * n, 4 * n + 3):
            for layout in ("contiguous", "balanced"):
                ch = context_chunks(T, n, layout)
                pos = sorted(i for c in ch for a, b in c for i in range(a, b))
                assert pos == list(range(T)), (n, T, layout)
                sizes = [b - a for c in ch for a, b in c]
                assert max(sizes) - min(sizes) <= 1
            bal = context_chunks(T, n, "balanced")
            edges = [c for r in bal for c in r]
            k = sorted(edges)
            assert all(bal[r] == [k[r], k[2 * n - 1 - r]] for r in range(n))   # chunks r, 2N-1-r
    x = torch.arange(13.0).view(1, 1, 13, 1)
    for layout in ("contiguous", "balanced"):
        assert torch.equal(context_unshard([context_shard(x, r, 3, layout) for r in range(3)], layout), x)
    with pytest.raises(ValueError, match="seq_len must be >= 8"):
        context_chunks(7, 4)
    with pytest.raises(ValueError, match="layout must be 'contiguous' or 'balanced'"):
        context_chunks(8, 2, "zigzag")


def test_merge_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=F64) for _ in range(3))
    s = q @ k.transpose(-2, -1)
    parts = []
    for keys in (slice(0, 2), slice(2, 3), slice(3, 5)):
        parts.append((torch.softmax(s[..., keys], -1) @ v[..., keys, :], torch.logsumexp(s[..., keys], -1)))
    out, lse = parts[0]
    for o, l in parts[1:]:
        out, lse = merge_attention(out, lse, o, l)
    assert_close(out, torch.softmax(s, -1) @ v)
    assert_close(lse, torch.logsumexp(s, -1))
    empty = (torch.zeros_like(out), torch.full_like(lse, float("-inf")))   # no keys at all
    o2, l2 = merge_attention(out, lse, *empty)
    assert_close(o2, out)
    assert_close(l2, lse)
    o3, l3 = merge_attention(*empty, *empty)
    assert not o3.isnan().any() and (l3 == float("-inf")).all()


HQ, DH = 4, 8


def _qkv(T, hkv, dev="cpu"):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(2, h, T, DH, generator=g, dtype=F64).to(dev) for h in (HQ, hkv, hkv, HQ)]


def _ring_case(rank, n, cases, backend):
    dev, out = _dev(backend), []
    for T, hkv, causal, layout in cases:
        q, k, v, go = (context_shard(t, rank, n, layout) for t in _qkv(T, hkv, dev))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        st, work = CommStats(), []
        o = ring_attention(q, k, v, causal, layout=layout, stats=st, work=work)
        fwd = st.bytes_sent
        (o * go).sum().backward()
        out.append(dict(o=_cpu(o), dq=_cpu(q.grad), dk=_cpu(k.grad), dv=_cpu(v.grad),
                        work=sum(work), bytes=[fwd, st.bytes_sent - fwd]))
    return out


def _sdpa(T, hkv, causal):
    q, k, v, go = (t.requires_grad_() for t in _qkv(T, hkv))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    (o * go).sum().backward()
    return dict(o=o.detach(), dq=q.grad, dk=k.grad, dv=v.grad)


RING_CASES = [(13, 2, True, "balanced"), (11, 4, True, "contiguous"), (13, 1, False, "balanced"),
              (9, 4, False, "contiguous")]


def _check_ring(res, cases):
    for i, (T, hkv, causal, layout) in enumerate(cases):
        ref = _sdpa(T, hkv, causal)
        for name in ("o", "dq", "dk", "dv"):
            assert_close(context_unshard([r[i][name] for r in res], layout), ref[name], msg=f"{cases[i]} {name}")


@pytest.mark.parametrize("n", WORLD)
def test_ring_attention_uneven_causal_gqa(n):
    cases = RING_CASES + [(8 * n, 2, True, "balanced"), (8 * n, 2, True, "contiguous")]
    res = _run(_ring_case, n, cases, "gloo")
    _check_ring(res, cases[:4])
    T, blk = 8 * n, 4 * 4                                  # chunks of T/2N = 4 positions
    assert [r[4]["work"] for r in res] == [(2 * n + 1) * blk] * n                  # balanced
    assert [r[5]["work"] for r in res] == [(i + 1) * 4 * blk for i in range(n)]    # contiguous
    kv_block = 2 * 2 * 2 * (T // n) * DH * 8               # K and V: b = 2, 2 K/V heads, float64
    assert [r[4]["bytes"] for r in res] == [[(n - 1) * kv_block, (2 * n - 1) * kv_block]] * n


@TWO_GPUS
def test_ring_attention_nccl():
    res = _run(_ring_case, 2, RING_CASES, backend="nccl")
    _check_ring(res, RING_CASES)


def test_ring_attention_through_spawned_ranks():
    """The path the NCCL tests take (spawned ranks, this module's functions sent by value), on
    gloo, so that it is tested where there is no GPU."""
    import cloudpickle
    mod = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(mod)
    try:
        res = run_distributed(_ring_case, 2, RING_CASES[:1], "gloo", timeout=120, echo=False,
                              start_method="spawn")
    finally:
        cloudpickle.unregister_pickle_by_value(mod)
    _check_ring(res, RING_CASES[:1])


def _ring_wrong_lengths(rank, n):
    q = torch.zeros(1, 2, 6 if rank == 0 else 3, 4)
    return ring_attention(q, q, q, True)


def _ring_bad_heads(rank, n):
    q, k = torch.zeros(1, 4, 5, 4), torch.zeros(1, 3, 5, 4)
    return ring_attention(q, k, k)


def test_ring_attention_errors():
    with pytest.raises(RankError, match=r"the ranks must hold \[5, 4\] positions .* got \[6, 3\]"):
        _run(_ring_wrong_lengths, 2)
    with pytest.raises(RankError, match="n_heads = 4 must be divisible by n_kv_heads = 3"):
        _run(_ring_bad_heads, 2)


def _uly_case(rank, n, cases):
    out = []
    for T, h, hkv in cases:
        g = torch.Generator().manual_seed(4)
        full = [torch.randn(1, hh, T, DH, generator=g, dtype=F64) for hh in (h, hkv, hkv, h)]
        q, k, v, go = (context_shard(t, rank, n, "contiguous") for t in full)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        st = CommStats()
        o = ulysses_attention(q, k, v, causal=True, stats=st)
        fwd = st.bytes_sent
        (o * go).sum().backward()
        out.append(dict(o=o, dq=q.grad, dk=k.grad, dv=v.grad, bytes=[fwd, st.bytes_sent - fwd]))
    return out


@pytest.mark.parametrize("n", WORLD)
def test_ulysses_attention(n):
    hkv = {2: 4, 3: 6, 4: 4}[n]
    cases = [(13, 12, hkv), (12, 12, 12)]                  # 13: uneven slices
    res = _run(_uly_case, n, cases)
    for i, (T, h, kv) in enumerate(cases):
        g = torch.Generator().manual_seed(4)
        q, k, v, go = (t.requires_grad_() for t in [torch.randn(1, hh, T, DH, generator=g, dtype=F64)
                                                    for hh in (h, kv, kv, h)])
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        (o * go).sum().backward()
        for name, ref in (("o", o.detach()), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
            assert_close(context_unshard([r[i][name] for r in res], "contiguous"), ref)
    slice_ = 12 * (12 // n) * DH * 8                          # one tensor's slice, MHA, float64
    assert [r[1]["bytes"] for r in res] == [[4 * (n - 1) * slice_ // n] * 2] * n


def _uly_bad(rank, n, h, hkv, lengths):
    q = torch.zeros(1, h, lengths[rank], 4)
    return ulysses_attention(q, torch.zeros(1, hkv, lengths[rank], 4), torch.zeros(1, hkv, lengths[rank], 4))


@pytest.mark.parametrize("h,hkv,lengths,match", [
    (6, 6, [2, 2, 2, 2], "must divide n_heads = 6 and n_kv_heads = 6"),
    (8, 2, [2, 2, 2, 2], "must divide n_heads = 8 and n_kv_heads = 2"),
    (8, 4, [1, 3, 2, 2], r"contiguous slices of \[2, 2, 2, 2\] positions"),
])
def test_ulysses_errors(h, hkv, lengths, match):
    with pytest.raises(RankError, match=match):
        _run(_uly_bad, 4, h, hkv, lengths)


# ---------------------------------------------------------------- expert parallelism

def _moe(E):
    torch.manual_seed(0)
    return MoE(8, 12, E, 2, n_shared=1).double()


def _tokens(n):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(3 + 2 * r, 8, generator=g, dtype=F64) for r in range(n)]   # uneven


def _ep_case(rank, n, E):
    st, x = CommStats(), _tokens(n)[rank].requires_grad_()
    ep = ExpertParallelMoE(_moe(E), rank, n, st)
    y = ep(x)
    fwd = st.bytes_sent
    (y ** 3).sum().backward()
    dest = topk_route(ep.router(x.detach()), 2)[0].flatten() // (E // n)
    return dict(y=y, dx=x.grad, dest=dest, bytes=[fwd, st.bytes_sent - fwd],
                grads={k: p.grad for k, p in ep.named_parameters()})


@pytest.mark.parametrize("n", WORLD)
def test_expert_parallel_moe(n):
    E = 12
    res = _run(_ep_case, n, E)
    moe, xs = _moe(E), [t.requires_grad_() for t in _tokens(n)]
    y = moe(torch.cat(xs))
    (y ** 3).sum().backward()
    assert_close(torch.cat([r["y"] for r in res]), y.detach())
    assert_close(torch.cat([r["dx"] for r in res]), torch.cat([t.grad for t in xs]))
    assert_close(sum(r["grads"]["router.weight"] for r in res), moe.router.weight.grad)
    assert_close(sum(r["grads"]["shared.w1.weight"] for r in res), moe.shared.w1.weight.grad)   # replicated
    for r, out in enumerate(res):                       # each expert's gradient stays on its rank
        for e in range(E // n):
            for w in ("w1", "w2", "w3"):
                assert_close(out["grads"][f"experts.{e}.{w}.weight"],
                             getattr(moe.experts[r * E // n + e], w).weight.grad)
    routes = torch.stack([torch.bincount(r["dest"], minlength=n) for r in res])   # from -> to
    moved = routes.sum(1) - routes.diag() + routes.sum(0) - routes.diag()
    assert [r["bytes"] for r in res] == [[int(m) * 8 * 8] * 2 for m in moved]
    assert len(set(routes.flatten().tolist())) > 1                                # uneven splits


def test_expert_parallel_errors():
    with pytest.raises(ValueError, match="n_experts = 8 must be divisible by world_size = 3"):
        ExpertParallelMoE(_moe(8), 0, 3)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="score='softmax' and no capacity_factor"):
        ExpertParallelMoE(MoE(8, 12, 4, 2, capacity_factor=1.0), 0, 2)
    with pytest.raises(ValueError, match="score='softmax'"):
        ExpertParallelMoE(MoE(8, 12, 4, 2, score="sigmoid"), 0, 2)


# ---------------------------------------------------------------- 2-D mesh

VOCAB, STEPS, BATCH, SEQ = 13, 2, 4, 5


def _lm():
    torch.manual_seed(0)
    return TinyLM(VOCAB, 16, 4, 2, n_layers=2).double()


def _batches():
    g = torch.Generator().manual_seed(6)
    return torch.randint(0, VOCAB, (2, STEPS, BATCH, SEQ), generator=g)


def _mesh_case(rank, n):
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    dp, tp = mesh.get_local_rank("dp"), mesh.get_local_rank("tp")
    model = TensorParallelLM(_lm(), tp, 2, functools.partial(dist_all_reduce, group=mesh.get_group("tp")))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    (tok, tgt), mine, losses = _batches(), slice(dp * BATCH // 2, (dp + 1) * BATCH // 2), []
    for step in range(STEPS):
        loss = model(tok[step, mine], tgt[step, mine])
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            p.grad = dist_all_reduce(p.grad, group=mesh.get_group("dp")) / 2
        opt.step()
        losses.append(dist_all_reduce(loss.detach(), group=mesh.get_group("dp")) / 2)
    return dict(tp=tp, losses=torch.stack(losses), weights={k: p.detach() for k, p in model.named_parameters()})


def test_device_mesh_dp_x_tp_trains_like_one_process():
    res = _run(_mesh_case, 4)
    ref, (tok, tgt) = _lm(), _batches()
    opt, losses = torch.optim.AdamW(ref.parameters(), lr=1e-2), []
    for step in range(STEPS):
        loss = ref(tok[step], tgt[step])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    for r in res:
        assert_close(r["losses"], torch.stack(losses))
    for pair in (res[:2], res[2:]):                     # each data-parallel replica
        W = [r["weights"] for r in pair]
        assert_close(torch.cat([w["emb.weight"] for w in W]), ref.emb.weight.detach())
        for i, blk in enumerate(ref.blocks):
            assert_close(torch.cat([w[f"blocks.{i}.fc1.weight"] for w in W]), blk.fc1.weight.detach())
            assert_close(torch.cat([w[f"blocks.{i}.wo.weight"] for w in W], 1), blk.wo.weight.detach())
            q, k, v = dense_qkv([w[f"blocks.{i}.qkv.weight"] for w in W], 4, 2)
            assert_close(torch.cat([q, k, v]), torch.cat([blk.wq.weight, blk.wk.weight, blk.wv.weight]).detach())
            assert_close(W[0][f"blocks.{i}.ln1.weight"], blk.ln1.weight.detach())


# ---------------------------------------------------------------- exercise plumbing

def _good_lse(z):
    m = z.amax(-1)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    s = torch.exp(z - m[:, None]).sum(-1)
    dist.all_reduce(s)
    return m + s.log()


def _naive_lse(z):                                      # overflows near 1000
    s = torch.exp(z).sum(-1)
    dist.all_reduce(s)
    return s.log()


def _hangs(z):                                        # a deadlock: each rank waits for the other
    if dist.get_rank() == 0:
        dist.all_reduce(z)
    else:
        dist.recv(torch.empty(1, dtype=z.dtype), 0)
    return z[:, 0]


def test_exercise_12_2_plumbing():
    z = 1000 + torch.randn(3, 7, dtype=F64)
    got = run_exercise_ranks("Exercise 12.2", lse_exercise_rank, 2, z, _good_lse, timeout=10)
    for g in got:
        assert_close(g, torch.logsumexp(z, -1))
    bad = run_exercise_ranks("Exercise 12.2", lse_exercise_rank, 2, z, _naive_lse, timeout=10)
    assert torch.isinf(bad[0]).all()                    # the checker's reference would reject it
    with pytest.raises(ExerciseError, match="did not finish within 3 s"):
        run_exercise_ranks("Exercise 12.2", lse_exercise_rank, 2, z, _hangs, timeout=3)
