"""Tests of course_utils.flash_attention (generated from notebooks/07_flash_attention.ipynb), on a CPU.

online_softmax and tiled_attention against torch.softmax and F.scaled_dot_product_attention in
float64 (both loop orders, causal, ragged lengths), their HBM counts against closed forms written
here independently, and the Triton kernels under TRITON_INTERPRET=1 on small shapes: output,
log-sum-exp and gradients against SDPA, plus every bad-input error. The compiled kernels are tested
by tests/test_flash_attention_gpu.py (skipped without CUDA).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import course_utils.flash_attention as fa
from course_utils.device import triton_mode
from course_utils.flash_attention import (HBMCounter, flash_attention, flash_attention_forward,
                                          online_softmax, tiled_attention, tiled_attention_backward)

needs_triton = pytest.mark.skipif(triton_mode() == "unavailable", reason="Triton is not installed")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def sdpa64(q, k, v, causal=False, scale=None):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal, scale=scale)


# ---------------------------------------------------------------- online softmax

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block", [1, 5, 64, 1000])
@pytest.mark.parametrize("shape", [(7,), (3, 50), (2, 3, 1), (4, 129)])
def test_online_softmax_matches_torch(shape, block, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 10).to(dtype)
    assert_close(online_softmax(x, block), torch.softmax(x, -1))


def test_online_softmax_large_values_and_gradient():
    x = torch.tensor([[1000.0, 1001.0, 1002.0, -1000.0]], dtype=torch.float64, requires_grad=True)
    y = online_softmax(x, 2)
    assert_close(y, torch.softmax(x.detach(), -1))
    g = torch.randn(1, 4, dtype=torch.float64)
    y.backward(g)
    xr = x.detach().clone().requires_grad_()
    torch.softmax(xr, -1).backward(g)
    assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("x, block, exc, match", [
    (torch.randn(3, 4), 0, ValueError, "block must be a positive int"),
    (torch.randn(3, 4), 2.0, ValueError, "block must be a positive int"),
    (torch.randn(3, 4), True, ValueError, "block must be a positive int"),
    (torch.arange(4), 2, TypeError, "floating-point tensor"),
    ([1.0, 2.0], 2, TypeError, "floating-point tensor"),
    (torch.randn(3, 0), 2, ValueError, "non-empty last dimension"),
])
def test_online_softmax_errors(x, block, exc, match):
    with pytest.raises(exc, match=match):
        online_softmax(x, block)


# ---------------------------------------------------------------- tiled attention in PyTorch

@pytest.mark.parametrize("order", ["fa1", "fa2"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T, bq, bk", [(1, 4, 4), (37, 8, 5), (64, 16, 64), (100, 32, 16), (20, 64, 3)])
def test_tiled_attention_matches_sdpa(T, bq, bk, causal, order):
    torch.manual_seed(T)
    q, k, v = torch.randn(3, 2, 3, T, 16, dtype=torch.float64)
    out, _ = tiled_attention(q, k, v, block_q=bq, block_k=bk, causal=causal, order=order)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_close(out, sdpa64(q, k, v, causal))


def test_tiled_attention_float32_and_gradients():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 45, 32, requires_grad=True) for _ in range(3))
    out, _ = tiled_attention(q, k, v, block_q=16, block_k=8, causal=True)
    g = torch.randn_like(out)
    out.backward(g)
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*ref, is_causal=True).backward(g)
    for t, r in zip((q, k, v), ref):
        assert_close(t.grad, r.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("T, d, bq, bk", [(100, 16, 32, 16), (64, 8, 64, 64), (37, 4, 8, 5), (1, 16, 4, 4)])
def test_traffic_equals_closed_forms(T, d, bq, bk):
    heads = 6
    q, k, v = torch.randn(3, 2, 3, T, d, dtype=torch.float64)
    tr, tc = -(-T // bq), -(-T // bk)
    fa2 = tiled_attention(q, k, v, block_q=bq, block_k=bk, order="fa2")[1]
    fa1 = tiled_attention(q, k, v, block_q=bq, block_k=bk, order="fa1")[1]
    # FA2 (Dao, 2023): Q once, K and V once per query block; O and L written once.
    assert fa2 == {"read": heads * (T * d + tr * 2 * T * d), "write": heads * (T * d + T)}
    # FA1 (Dao et al., 2022): K, V once; Q, O, l, m read and O, l, m written once per key block,
    # plus the initial write of O, l, m.
    assert fa1 == {"read": heads * (2 * T * d + tc * (2 * T * d + 2 * T)),
                   "write": heads * (T * d + 2 * T + tc * (T * d + 2 * T))}


@pytest.mark.parametrize("T, b", [(64, 16), (96, 32), (40, 8)])
def test_causal_traffic_fa2_square_blocks(T, b):
    q, k, v = torch.randn(3, 1, 1, T, 8, dtype=torch.float64)
    n = T // b
    counted = tiled_attention(q, k, v, block_q=b, block_k=b, causal=True)[1]
    assert counted["read"] == T * 8 + 2 * b * 8 * sum(range(1, n + 1))   # block i reads i + 1 K, V blocks
    full = tiled_attention(q, k, v, block_q=b, block_k=b, causal=False)[1]
    assert counted["read"] < full["read"] and counted["write"] == full["write"]


def test_hbm_counter_counts_and_copies():
    hbm = HBMCounter()
    x = torch.ones(3, 4)
    y = hbm.load(x)
    y += 1
    assert torch.equal(x, torch.ones(3, 4))          # a load is a copy, like HBM -> SRAM
    assert hbm.store(y) is y and hbm.counts() == {"read": 12, "write": 12}


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(order="fa3"), ValueError, "order must be 'fa1' or 'fa2'"),
    (dict(block_q=0), ValueError, "block_q must be a positive int"),
    (dict(block_k=2.5), ValueError, "block_k must be a positive int"),
    (dict(causal="yes"), TypeError, "causal must be True or False"),
])
def test_tiled_attention_errors(kwargs, exc, match):
    q = torch.randn(1, 1, 8, 4)
    args = dict(block_q=4, block_k=4) | kwargs
    with pytest.raises(exc, match=match):
        tiled_attention(q, q, q, **args)


def test_tiled_attention_shape_and_dtype_errors():
    q = torch.randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match=r"must all have shape \(B, H, T, d\)"):
        tiled_attention(q, q[..., :5, :], q, block_q=4, block_k=4)
    with pytest.raises(TypeError, match="one floating dtype"):
        tiled_attention(q, q.double(), q, block_q=4, block_k=4)
    with pytest.raises(TypeError, match="one floating dtype"):
        tiled_attention(*(torch.ones(1, 1, 8, 4, dtype=torch.long),) * 3, block_q=4, block_k=4)


# ---------------------------------------------------------------- the Triton kernels (interpreter on a CPU)

TOL = {torch.float32: 2e-5, torch.float16: 4e-3}


@needs_triton
@pytest.mark.parametrize("B, H, T, d, dtype, causal", [
    (1, 1, 1, 16, torch.float32, True),
    (2, 2, 19, 32, torch.float16, False),
    (1, 2, 40, 64, torch.float32, True),
    (1, 1, 33, 128, torch.float16, True),
])
def test_flash_attention_output_and_gradients(B, H, T, d, dtype, causal):
    torch.manual_seed(T + d)
    q, k, v, do = (torch.randn(B, H, T, d, device=DEV).to(dtype) for _ in range(4))
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*x, causal=causal)
    out.backward(do)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*xr, is_causal=causal)
    ref.backward(do.double())
    assert out.dtype == dtype and out.shape == q.shape
    assert_close(out.double(), ref, atol=TOL[dtype], rtol=0)
    for t, r in zip(x, xr):
        assert t.grad.dtype == dtype
        assert_close(t.grad.double(), r.grad, atol=TOL[dtype], rtol=0)


@needs_triton
def test_log_sum_exp_scale_and_strides():
    torch.manual_seed(3)
    T, d = 27, 16
    x = torch.randn(3, 1, T, 2, d, device=DEV)                 # (3, B, T, H, d)
    q, k, v = (t.transpose(1, 2) for t in x)                   # (B, H, T, d) views, not contiguous
    o, lse = flash_attention_forward(q, k, v, causal=True, sm_scale=0.5)
    s = 0.5 * q.double() @ k.double().transpose(-2, -1)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=DEV).triu(1), -math.inf)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, T)
    assert_close(lse.double(), s.logsumexp(-1), atol=1e-5, rtol=0)
    assert_close(o.double(), sdpa64(q, k, v, True, 0.5), atol=1e-5, rtol=0)


@pytest.mark.skipif(not fa.INTERPRET, reason="counts the products through Triton's interpreter")
def test_kernels_do_2_forward_and_7_backward_products(monkeypatch):
    """The FLOP convention counts 5 backward products (2.5 × forward); our backward does 7 (the dQ
    kernel recomputes S and dP). Measured: the FLOPs of every tl.dot the interpreter executes."""
    import triton.runtime.interpreter as interp

    flops = []
    create_dot = interp.interpreter_builder.create_dot

    def counting_dot(a, b, *args, **kwargs):
        (m, k), n = a.data.shape, b.data.shape[1]
        flops.append(2 * m * k * n)
        return create_dot(a, b, *args, **kwargs)

    monkeypatch.setattr(interp.interpreter_builder, "create_dot", counting_dot)
    B, H, T, d = 1, 2, 64, 16                    # T a multiple of every FIXED block: no padded tiles
    q, k, v, do = (torch.randn(B, H, T, d).requires_grad_(i < 3) for i in range(4))
    product = 2 * B * H * T * T * d              # one T×T×d matrix product
    out = flash_attention(q, k, v)
    assert sum(flops) == 2 * product             # S = QKᵀ and PV
    flops.clear()
    out.backward(do)
    assert sum(flops) == 7 * product             # dK/dV: S, dV, dP, dK; dQ: S, dP, dQ
    assert_close(q.grad.double(), torch.autograd.grad(sdpa64(q, k, v), q, do.double())[0].double(), atol=2e-5, rtol=0)


def test_io_complexity_of_fa1_with_the_papers_blocks():
    """Dao et al. (2022), Theorem 2: with B_c = ceil(M/4d), B_r = min(B_c, d), FlashAttention makes
    Θ(N²d²/M) HBM accesses. Counted: the leading constant 4(3d + 4)/d (per key block, read Q, O, l, m
    and write O, l, m; T_c = 4Nd/M key blocks), up to the O(Nd) terms."""
    N, d = 256, 16
    q, k, v = torch.randn(3, 1, 1, N, d, dtype=torch.float64)
    for M in (64, 256, 1024):                     # d <= M <= Nd / 4
        bc = -(-M // (4 * d))
        counted = tiled_attention(q, k, v, block_q=min(bc, d), block_k=bc, order="fa1")[1]
        leading = 4 * (3 * d + 4) / d * N**2 * d**2 / M
        assert leading <= sum(counted.values()) <= leading + 3 * N * d + 2 * N


def _qkv(shape=(1, 2, 8, 32), dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (_qkv((1, 2, 8, 24)), {}, ValueError, r"head dim d must be one of \(16, 32, 64, 128\), got d = 24"),
    (_qkv((1, 2, 8, 256)), {}, ValueError, "head dim d must be one of"),
    (_qkv(dtype=torch.float64), {}, TypeError, "float16, bfloat16, float32"),
    ([torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32).half(), torch.randn(1, 2, 8, 32)], {}, TypeError,
     "share one dtype"),
    ([torch.randn(1, 2, 8, 32), torch.randn(1, 2, 5, 32), torch.randn(1, 2, 8, 32)], {}, ValueError,
     r"k, v one shape \[B, H_kv, T_k, d\]"),
    ([torch.randn(1, 2, 8, 32), torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)], {}, ValueError,
     r"same B and d"),
    (_qkv((2, 8, 32)), {}, ValueError, r"q must be \[B, H, T_q, d\]"),
    (_qkv((1, 2, 0, 32)), {}, ValueError, "B, H, H_kv, T_q and T_k must be at least 1"),
    ([torch.randn(1, 3, 8, 32), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32)], {}, ValueError,
     r"H = 3 query heads must be a multiple of the H_kv = 2"),
    ([torch.randn(1, 2, 8, 32), torch.randn(1, 2, 5, 32), torch.randn(1, 2, 5, 32)], {"causal": True}, ValueError,
     r"causal with T_q = 8 > T_k = 5: the mask is aligned bottom-right"),
    (_qkv((1, 2, 8, 96)), {}, ValueError, r"pad q, k, v with zeros to d = 128 \(F.pad\(x, \(0, 32\)\)\)"),
    (_qkv(), {"sm_scale": torch.tensor(0.1, requires_grad=True)}, TypeError, "sm_scale is a tensor that requires grad"),
    (_qkv(), {"sm_scale": torch.ones(2)}, ValueError, "sm_scale as a tensor must hold one number"),
    (_qkv(), {"causal": 1}, TypeError, "causal must be True or False"),
    (_qkv(), {"sm_scale": -1.0}, ValueError, "sm_scale must be a positive finite number"),
    (_qkv(), {"sm_scale": float("inf")}, ValueError, "sm_scale must be a positive finite number"),
    ([1, 2, 3], {}, TypeError, "must be torch tensors"),
])
def test_flash_attention_errors(args, kwargs, exc, match):
    for fn in (flash_attention, flash_attention_forward):
        with pytest.raises(exc, match=match):
            fn(*args, **kwargs)


@pytest.mark.skipif(not fa.INTERPRET, reason="only the CPU interpreter refuses bfloat16")
def test_interpreter_refuses_bfloat16():
    with pytest.raises(TypeError, match="interpreter computes bfloat16 arithmetic wrongly"):
        flash_attention(*_qkv(dtype=torch.bfloat16))


def test_clear_errors_without_triton_or_interpreter(monkeypatch):
    monkeypatch.setattr(fa, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        flash_attention(*_qkv())
    monkeypatch.setattr(fa, "HAS_TRITON", True)
    monkeypatch.setattr(fa, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="need a CUDA GPU, or TRITON_INTERPRET=1"):
        flash_attention(*_qkv())                               # CPU tensors, no interpreter


# ---------------------------------------------------------------- round 2 (issue 22): the op's API

def naive64(q, k, v, causal=False, scale=None):
    """Attention written out in float64 with GQA by repeat_interleave and the causal mask aligned
    bottom-right (query i sees key j <= i + T_k - T_q): returns (out, natural-log lse)."""
    q, k, v = (t.double() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)           # (B, H, T_k, d)
    s = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)  # (B, H, T_q, T_k)
    if causal:
        T_q, T_k = s.shape[-2:]
        s = s.masked_fill(torch.ones(T_q, T_k, dtype=torch.bool, device=s.device).triu(T_k - T_q + 1), -math.inf)
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("order", ["fa2", "fa1"])
def test_tiled_attention_return_lse(order, causal):
    torch.manual_seed(5)
    q, k, v = torch.randn(3, 2, 3, 45, 16, dtype=torch.float64)
    out, traffic, lse = tiled_attention(q, k, v, block_q=16, block_k=8, causal=causal, order=order, return_lse=True)
    ref, ref_lse = naive64(q, k, v, causal)
    assert lse.shape == (2, 3, 45)
    assert_close(out, ref)
    assert_close(lse, ref_lse)
    assert traffic == tiled_attention(q, k, v, block_q=16, block_k=8, causal=causal, order=order)[1]
    with pytest.raises(TypeError, match="return_lse must be True or False"):
        tiled_attention(q, k, v, block_q=16, block_k=8, return_lse=1)


@pytest.mark.parametrize("T, bq, bk", [(1, 4, 4), (45, 16, 8), (64, 8, 32), (37, 37, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_backward_equals_autograd_through_naive_attention(T, bq, bk, causal):
    torch.manual_seed(T)
    q, k, v, do = torch.randn(4, 2, 2, T, 16, dtype=torch.float64)
    out, _, lse = tiled_attention(q, k, v, block_q=bq, block_k=bk, causal=causal, return_lse=True)
    grads = tiled_attention_backward(q, k, v, out, lse, do, block_q=bq, block_k=bk, causal=causal)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    naive64(*x, causal)[0].backward(do)
    for got, t in zip(grads, x):
        assert_close(got, t.grad)


def test_tiled_backward_float32():
    torch.manual_seed(1)
    q, k, v, do = torch.randn(4, 1, 2, 30, 32)
    out, _, lse = tiled_attention(q, k, v, block_q=8, block_k=16, causal=True, return_lse=True)
    grads = tiled_attention_backward(q, k, v, out, lse, do, block_q=8, block_k=16, causal=True)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*x, is_causal=True).backward(do)
    for got, t in zip(grads, x):
        assert_close(got, t.grad, atol=1e-5, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_return_lse_and_its_gradient(causal):
    torch.manual_seed(6)
    q, k, v, do = torch.randn(4, 1, 2, 37, 32, device=DEV)
    dl = torch.randn(1, 2, 37, device=DEV)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    o, lse = flash_attention(*x, causal=causal, return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 37)
    ((o * do).sum() + (lse * dl).sum()).backward()
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    ref, ref_lse = naive64(*xr, causal)
    assert_close(o.double(), ref.detach(), atol=1e-5, rtol=0)
    assert_close(lse.double(), ref_lse.detach(), atol=1e-5, rtol=0)
    ((ref * do.double()).sum() + (ref_lse * dl.double()).sum()).backward()
    for t, r in zip(x, xr):
        assert_close(t.grad.double(), r.grad, atol=1e-4, rtol=0)
    o2 = flash_attention(q, k, v, causal, None, False)                   # positional arguments too
    assert torch.equal(o2, o.detach())


@needs_triton
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_matches_sdpa_enable_gqa(group, causal):
    torch.manual_seed(group)
    H_kv, T = 2 if group < 8 else 1, 21
    q, do = torch.randn(2, 2, H_kv * group, T, 16, device=DEV)           # (B, H, T, d)
    k, v = torch.randn(2, 2, H_kv, T, 16, device=DEV)                    # (B, H_kv, T, d)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*x, causal=causal)
    out.backward(do)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*xr, is_causal=causal, enable_gqa=True)
    ref.backward(do.double())
    assert out.shape == q.shape and x[1].grad.shape == k.shape
    assert_close(out.double(), ref.detach(), atol=1e-5, rtol=0)
    for t, r in zip(x, xr):                                              # dK, dV summed over the group
        assert_close(t.grad.double(), r.grad, atol=1e-4, rtol=0)


@needs_triton
@pytest.mark.parametrize("T_q, T_k, causal", [(1, 50, True), (1, 50, False), (7, 40, True), (40, 17, False),
                                              (16, 64, True), (33, 33, True), (64, 16, False),
                                              # T_k − T_q beyond a block: dK/dV once read rows < 0
                                              # (NaN here, wrong on the H200): the first GPU run found it
                                              (1, 100, True), (7, 90, True), (3, 200, True)])
def test_unequal_lengths_match_sdpa_causal_lower_right(T_q, T_k, causal):
    from torch.nn.attention.bias import causal_lower_right
    torch.manual_seed(T_q * T_k)
    q, do = torch.randn(2, 1, 4, T_q, 32, device=DEV)
    k, v = torch.randn(2, 1, 2, T_k, 32, device=DEV)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*x, causal=causal, return_lse=True)
    out.backward(do)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*xr, attn_mask=causal_lower_right(T_q, T_k) if causal else None,
                                         enable_gqa=True)
    ref.backward(do.double())
    assert_close(out.double(), ref.detach(), atol=1e-5, rtol=0)
    assert_close(lse.double(), naive64(q, k, v, causal)[1], atol=1e-5, rtol=0)
    for t, r in zip(x, xr):
        assert_close(t.grad.double(), r.grad, atol=1e-4, rtol=0)
    if T_q == 1 and causal:                                              # a decode step sees every key
        assert_close(out.double(), naive64(q, k, v, False)[0], atol=1e-5, rtol=0)


@needs_triton
def test_float16_gqa_unequal_lengths():
    torch.manual_seed(9)
    q, do = (torch.randn(1, 4, 24, 64, device=DEV).half() for _ in range(2))
    k, v = (torch.randn(1, 1, 56, 64, device=DEV).half() for _ in range(2))
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    flash_attention(*x, causal=True).backward(do)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    naive64(*xr, True)[0].backward(do.double())
    for t, r in zip(x, xr):
        assert_close(t.grad.double(), r.grad, atol=TOL[torch.float16] * 2, rtol=0)


@needs_triton
def test_scale_tensor_and_double_backward():
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 1, 2, 9, 16, device=DEV)
    assert torch.equal(flash_attention(q, k, v, sm_scale=torch.tensor(0.3)), flash_attention(q, k, v, sm_scale=0.3))
    x = q.clone().requires_grad_()
    g, = torch.autograd.grad((flash_attention(x, k, v) ** 2).sum(), x, create_graph=True)  # dO depends on x
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_padding_advice_of_the_head_dim_error_is_right():
    """The error for d = 96 says: pad to 128 with zeros, pass sm_scale = 96**-0.5, keep out[..., :96]."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 10, 96, dtype=torch.float64)
    pad = [F.pad(t, (0, 32)) for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*pad, scale=96 ** -0.5)[..., :96]
    assert_close(out, F.scaled_dot_product_attention(q, k, v))


# ---------------------------------------------------------------- the TMA fast path of the backward

@pytest.mark.skipif(not fa.INTERPRET or fa.TensorDescriptor is None, reason="descriptors in the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("H, H_kv, T_q, T_k, causal", [(2, 2, 37, 37, False), (2, 2, 37, 37, True),
                                                      (4, 1, 20, 53, True), (4, 2, 1, 40, True),
                                                      (2, 1, 45, 30, False), (1, 1, 9, 9, True)])
def test_backward_through_tma_descriptors_matches_autograd(dtype, H, H_kv, T_q, T_k, causal):
    """The descriptor kernels (compiled on Hopper, interpreted here) against float64 autograd through
    SDPA with the bottom-right mask: ragged tiles past T (zero-filled per head), GQA, T_q != T_k."""
    from torch.nn.attention.bias import causal_lower_right
    torch.manual_seed(T_q * T_k + H)
    q, do = (torch.randn(2, H, T_q, 32).to(dtype) for _ in range(2))
    k, v = (torch.randn(2, H_kv, T_k, 32).to(dtype) for _ in range(2))
    o, lse2 = fa._flash_forward(q, k, v, causal, 32 ** -0.5)
    grads = fa._flash_backward(q, k, v, o, lse2, do, causal, 32 ** -0.5, tma=True)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*xr, attn_mask=causal_lower_right(T_q, T_k) if causal else None,
                                         enable_gqa=True)
    ref.backward(do.double())
    for got, r in zip(grads, xr):
        assert got.dtype == dtype and got.shape == r.shape
        assert_close(got.double(), r.grad, atol=1e-4 if dtype == torch.float32 else 4e-3, rtol=0)


@pytest.mark.skipif(not fa.INTERPRET or fa.TensorDescriptor is None, reason="descriptors in the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("H, H_kv, T_q, T_k, d, causal", [(2, 2, 37, 37, 32, False), (2, 2, 37, 37, 16, True),
                                                         (4, 1, 20, 53, 32, True), (4, 2, 1, 40, 64, True),
                                                         (2, 1, 45, 30, 32, False)])
def test_forward_through_tma_descriptors_matches_sdpa(dtype, H, H_kv, T_q, T_k, d, causal):
    """The forward's descriptor twin (P V accumulated inside tl.dot) against float64 SDPA with the
    bottom-right mask, and its base-2 log-sum-exp against torch.logsumexp of the masked scores."""
    from torch.nn.attention.bias import causal_lower_right
    torch.manual_seed(T_q * T_k + H + d)
    q = torch.randn(2, H, T_q, d).to(dtype)
    k, v = (torch.randn(2, H_kv, T_k, d).to(dtype) for _ in range(2))
    o, lse2 = fa._flash_forward(q, k, v, causal, d ** -0.5, tma=True)
    xr = [t.double() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*xr, attn_mask=causal_lower_right(T_q, T_k) if causal else None,
                                         enable_gqa=True)
    s = xr[0] @ xr[1].repeat_interleave(H // H_kv, dim=1).transpose(-2, -1) * d ** -0.5   # (2, H, T_q, T_k)
    if causal:
        s = s.masked_fill(torch.ones(T_q, T_k, dtype=torch.bool).triu(T_k - T_q + 1), -math.inf)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert o.dtype == dtype and o.shape == q.shape and lse2.shape == (2, H, T_q)
    assert_close(o.double(), ref, atol=tol, rtol=0)
    assert_close(lse2.double() / fa.LOG2E, torch.logsumexp(s, -1), atol=1e-4, rtol=0)


def test_pre_hook_sets_the_descriptor_blocks_for_a_forced_config():
    """_launch calls pre_hook with the kernel's arguments by name and the tile sizes; _tma_blocks gives
    key tiles BLOCK_N rows and query tiles BLOCK_M rows."""
    class Desc:
        block_shape = None
    seen = {}

    class Kernel:
        arg_names = ["desc_q", "desc_k", "desc_dk", "desc_do", "N_Q"]

        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.update(grid=grid, kwargs=kwargs)
    descs = {n: Desc() for n in Kernel.arg_names[:4]}
    fa._launch("dkdv_tma", Kernel(), lambda meta: (meta["BLOCK_N"],), torch.zeros(1), *descs.values(), 7,
               config=(32, 64, 4, 2), pre_hook=fa._tma_blocks, HEAD_DIM=16)
    assert descs["desc_q"].block_shape == [1, 32, 16] and descs["desc_do"].block_shape == [1, 32, 16]
    assert descs["desc_k"].block_shape == [1, 64, 16] and descs["desc_dk"].block_shape == [1, 64, 16]
    assert seen["grid"] == (64,) and seen["kwargs"]["BLOCK_M"] == 32


def test_tma_path_only_where_it_can_run():
    """No TMA on a CPU (interpreter or not), nor for a tensor whose start is not 16-byte aligned."""
    x = torch.randn(1, 1, 8, 16)
    assert not fa._use_tma(x, x) and not fa._forward_tma(x, x, x)
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and not fa.INTERPRET:
        y = torch.randn(100, device="cuda")[1:65].view(1, 1, 4, 16)   # 4 bytes past an aligned start
        assert fa._use_tma(y.clone(), y.clone()) and not fa._use_tma(y, y)
        z = torch.randn(1, 1, 8, 128, device="cuda")
        assert fa._forward_tma(z, z, z) and not fa._forward_tma(z[..., :64], z[..., :64], z[..., :64])  # d = 128 only


@needs_triton
def test_return_lse_costs_no_memory_when_not_asked():
    """flash_attention returns the kernel's base-2 log-sum-exp from the autograd function and makes the
    natural-log copy only for return_lse=True; its gradient still enters the backward right."""
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 12, 16, device=DEV).requires_grad_() for _ in range(3))
    o, lse = flash_attention(q, k, v, causal=True, return_lse=True)
    (lse.sum() + o.sum()).backward()
    xr = [t.detach().double().requires_grad_() for t in (q, k, v)]
    s = xr[0] @ xr[1].transpose(-2, -1) / 4
    s = s.masked_fill(torch.ones(12, 12, dtype=torch.bool, device=DEV).triu(1), -math.inf)
    (s.logsumexp(-1).sum() + (torch.softmax(s, -1) @ xr[2]).sum()).backward()
    for t, r in zip((q, k, v), xr):
        assert_close(t.grad.double(), r.grad, atol=1e-4, rtol=0)


@needs_triton
def test_every_kernel_compiles_for_hopper_without_a_gpu():
    """Triton's compiler needs no GPU: lesson 07's six kernels, d = 64 and 128, causal and not, go from
    Python to a cubin for sm_90 here. The interpreter runs things the compiler refuses (a loop over a
    tuple of bounds once passed every CPU test and failed on the H200); this catches that on a CPU.
    The PTX has Hopper's wgmma in every kernel (float32's exact products aside), and TMA copies exactly
    in the *_tma kernels, which also compile for float32 and float16 at d = 16 and 32."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    script = Path(__file__).with_name("_compile_for_hopper.py")
    done = subprocess.run([sys.executable, str(script), "07"], env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 24 + 12                      # 6 kernels × d 64/128 × causal or not; 3 TMA kernels × 4
    for r in rows:
        assert "cubin" in r["stages"] and r["wgmma"], r
        assert r["tma"] == r["kernel"].endswith("_tma"), r


@needs_triton
@pytest.mark.skipif(fa.TensorDescriptor is None, reason="needs Triton with tensor descriptors")
def test_the_lever_study_kernels_match_sdpa_in_the_interpreter():
    """benchmarks/flash_attention_levers.py --cpu-check: the lever study's own kernels (the tma, pipelined
    and persistent forwards, the 5-product backward) against float64 SDPA, float32 and float16, GQA,
    T_q != T_k, causal and not. Its GPU timings are only worth something if these are right."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "flash_attention_levers.py"), "--cpu-check"],
                          env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600,
                          cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("✓") == 12, done.stdout
