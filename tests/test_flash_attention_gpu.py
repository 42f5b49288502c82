"""GPU tests of course_utils.flash_attention: the Triton kernels compiled (and autotuned), against
F.scaled_dot_product_attention, forward and gradients, on random shapes including odd T.

Skipped without CUDA. On a GPU: pytest tests/test_flash_attention_gpu.py
The reference is SDPA in float64; our error must be within a small multiple of the error SDPA makes
itself in the same low precision (the criterion of the FlashAttention repository's tests).
On a Hopper GPU, every tuned forward configuration must also compile to wgmma (the lesson's claim).
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from course_utils.device import triton_mode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or triton_mode() != "compiled",
                                reason="needs a CUDA GPU and Triton (compiled kernels)")

if torch.cuda.is_available():
    from course_utils.flash_attention import LOG2E, TUNING, _attn_fwd, flash_attention, flash_attention_forward

FIXED_CASES = [  # (B, H, T, d, dtype, causal)
    (1, 1, 1, 64, torch.bfloat16, True),
    (2, 3, 37, 32, torch.float16, False),
    (1, 2, 129, 16, torch.bfloat16, True),
    (2, 4, 1000, 64, torch.bfloat16, False),
    (1, 2, 1023, 128, torch.float16, True),
    (3, 2, 257, 128, torch.bfloat16, False),
    (1, 8, 2048, 64, torch.float16, True),
    (1, 4, 4096, 128, torch.bfloat16, True),
    (2, 2, 77, 64, torch.float32, True),
    (1, 3, 300, 128, torch.float32, False),
]
_rng = random.Random(6)
RANDOM_CASES = [(_rng.randint(1, 3), _rng.randint(1, 4), _rng.randint(2, 3000), _rng.choice([16, 32, 64, 128]),
                 _rng.choice([torch.float16, torch.bfloat16]), _rng.choice([False, True])) for _ in range(4)]
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2, torch.float32: 2e-5}


def _ids(case):
    B, H, T, d, dtype, causal = case
    return f"B{B}-H{H}-T{T}-d{d}-{str(dtype)[6:]}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("case", FIXED_CASES + RANDOM_CASES, ids=_ids)
def test_forward_and_gradients_match_sdpa(case):
    B, H, T, d, dtype, causal = case
    torch.manual_seed(T * d + B)
    q, k, v, do = (torch.randn(B, H, T, d, device="cuda", dtype=torch.float64) for _ in range(4))

    def run(fn, cast):
        x = [t.detach().to(cast).clone().requires_grad_() for t in (q, k, v)]
        o = fn(*x)
        o.backward(do.to(cast))
        return [o.double()] + [t.grad.double() for t in x]

    ref = run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal), torch.float64)
    sdpa = run(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=causal), dtype)
    ours = run(lambda a, b, c: flash_attention(a, b, c, causal=causal), dtype)
    for name, got, base, want in zip(("out", "dq", "dk", "dv"), ours, sdpa, ref):
        assert torch.isfinite(got).all(), f"{name}: non-finite values"
        err, err_sdpa = (got - want).abs().max().item(), (base - want).abs().max().item()
        tol = 3 * err_sdpa + FLOOR[dtype] * max(1.0, want.abs().max().item())
        assert err <= tol, f"{name}: max|err| {err:.3g} > {tol:.3g} (SDPA's own error {err_sdpa:.3g})"


@pytest.mark.parametrize("causal", [False, True])
def test_log_sum_exp_and_scale(causal):
    torch.manual_seed(1)
    B, H, T, d = 2, 3, 333, 64
    q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.float16) for _ in range(3))
    o, lse = flash_attention_forward(q, k, v, causal=causal, sm_scale=0.3)
    s = 0.3 * q.double() @ k.double().transpose(-2, -1)
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device="cuda").triu(1), -math.inf)
    torch.testing.assert_close(lse.double(), s.logsumexp(-1), atol=2e-3, rtol=0)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal, scale=0.3)
    torch.testing.assert_close(o.double(), ref, atol=2e-3, rtol=0)


def test_non_contiguous_inputs():
    """A (B, T, H, d) tensor transposed to (B, H, T, d) is a view with other strides."""
    torch.manual_seed(2)
    x = torch.randn(3, 2, 500, 4, 64, device="cuda", dtype=torch.bfloat16)   # (3, B, T, H, d)
    q, k, v = (t.transpose(1, 2) for t in x)                                # (B, H, T, d) views
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(flash_attention(q, k, v, causal=True).double(), ref, atol=2e-2, rtol=0)


HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
FWD_CONFIGS = [(d, cfg) for d in (64, 128) for cfg in TUNING["fwd"][d]] if HOPPER else []


@pytest.mark.skipif(not HOPPER, reason="wgmma is Hopper's instruction (compute capability 9.x)")
@pytest.mark.parametrize("d, config", FWD_CONFIGS, ids=lambda x: str(x))
def test_forward_kernel_compiles_to_wgmma_on_hopper(d, config):
    """The lesson says Triton compiles tl.dot to Hopper's wgmma: every tuned forward config's PTX has it."""
    bm, bn, warps, stages = config
    T = 2 * bm
    q, k, v = (torch.randn(1, 1, T, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    o, lse2 = torch.empty_like(q), torch.empty(1, 1, T, device="cuda")
    compiled = _attn_fwd[(2, 1)](q, k, v, o, lse2, d ** -0.5 * LOG2E, T, T, 1, HEAD_DIM=d, CAUSAL=False,
                                 DOT_PRECISION="tf32", BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    assert "wgmma.mma_async" in compiled.asm["ptx"]
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(o.double(), ref, atol=2e-2, rtol=0)


@pytest.mark.parametrize("H, H_kv, T_q, T_k, d, causal", [
    (16, 2, 1024, 1024, 64, True), (8, 1, 1, 4000, 128, True), (8, 8, 300, 2048, 64, True),
    (4, 2, 2048, 777, 128, False), (32, 4, 129, 4096, 64, False)])
def test_gqa_and_unequal_lengths_bf16(H, H_kv, T_q, T_k, d, causal):
    """Compiled kernels on GQA and T_q != T_k (bottom-right causal), output, LSE and grads against
    float64 attention written out here (repeat_interleave, explicit lower-right mask)."""
    torch.manual_seed(H * T_q + T_k)
    q, do = (torch.randn(2, H, T_q, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(2, H_kv, T_k, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    o, lse = flash_attention(*x, causal=causal, return_lse=True)
    o.backward(do)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    g = H // H_kv
    s = xr[0] @ xr[1].repeat_interleave(g, 1).transpose(-2, -1) * d ** -0.5
    if causal:
        s = s.masked_fill(torch.ones(T_q, T_k, dtype=torch.bool, device="cuda").triu(T_k - T_q + 1), float("-inf"))
    ref = torch.softmax(s, -1) @ xr[2].repeat_interleave(g, 1)
    ref.backward(do.double())
    torch.testing.assert_close(lse.double(), torch.logsumexp(s, -1).detach(), atol=2e-2, rtol=0)
    for got, want in [(o, ref.detach())] + [(t.grad, r.grad) for t, r in zip(x, xr)]:
        err = (got.double() - want).norm() / want.norm()
        assert err < 2e-2, err


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "tma"])
@pytest.mark.parametrize("H, H_kv, T_q, T_k, d, causal", [
    (8, 8, 1000, 1000, 64, True), (8, 2, 333, 1024, 128, True), (4, 4, 2048, 2048, 128, False)])
def test_both_kernel_paths_bf16(tma, H, H_kv, T_q, T_k, d, causal):
    """The pointer kernels and their TMA twins (what Hopper takes), each path forced for the forward and
    the backward, against float64 SDPA: output, log-sum-exp and dQ, dK, dV."""
    from course_utils.flash_attention import _flash_backward, _flash_forward, _use_tma
    from torch.nn.attention.bias import causal_lower_right
    if tma and not _use_tma(torch.empty(1, device="cuda")):
        pytest.skip("TMA needs compute capability >= 9 and Triton's tensor descriptors")
    torch.manual_seed(T_q + d)
    q, do = (torch.randn(2, H, T_q, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(2, H_kv, T_k, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    o, lse2 = _flash_forward(q, k, v, causal, d ** -0.5, tma=tma)
    grads = _flash_backward(q, k, v, o, lse2, do, causal, d ** -0.5, tma=tma)
    xr = [t.double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*xr, attn_mask=causal_lower_right(T_q, T_k) if causal else None,
                                         enable_gqa=True)
    ref.backward(do.double())
    s = xr[0] @ xr[1].repeat_interleave(H // H_kv, dim=1).transpose(-2, -1) * d ** -0.5   # (2, H, T_q, T_k)
    if causal:
        s = s.masked_fill(torch.ones(T_q, T_k, dtype=torch.bool, device="cuda").triu(T_k - T_q + 1), -math.inf)
    torch.testing.assert_close(lse2.double() / LOG2E, torch.logsumexp(s, -1).detach(), atol=2e-2, rtol=0)
    for got, want in [(o, ref.detach())] + [(g, r.grad) for g, r in zip(grads, xr)]:
        assert torch.isfinite(got).all()
        err = (got.double() - want).norm() / want.norm()
        assert err < 2e-2, err
