"""Tests of course_utils.rope (generated from notebooks/03_rope.ipynb).

apply_rope is compared with an independent complex-number reference (torch.polar,
view_as_complex / torch.complex) computed in float64, for both layouts, several dtypes and awkward
shapes; then the properties RoPE exists for (relative scores, norms), gradients, the cos/sin cache,
and every bad-input error.
"""
import math

import pytest
import torch
from torch.testing import assert_close

from course_utils.rope import (apply_rope, clear_rope_cache, rope_cache_info, rope_cos_sin,
                               rope_frequencies, rotate_half)


def reference_rope(x, positions, base=10000.0, interleaved=False):
    """RoPE as a complex multiplication by e^{i m θ_i}, in float64 (RoFormer §3.2, Meta's freqs_cis)."""
    d = x.shape[-1]
    xd = x.to(torch.float64)
    theta = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)            # (d/2,)
    angles = positions.to(torch.float64)[:, None] * theta                            # (T, d/2)
    cis = torch.polar(torch.ones_like(angles), angles)                               # (T, d/2)
    if interleaved:                                   # pair i = dims (2i, 2i + 1)
        z = torch.view_as_complex(xd.reshape(*x.shape[:-1], d // 2, 2).contiguous())  # (..., T, d/2)
        return torch.view_as_real(z * cis).reshape(x.shape)                           # (..., T, d)
    z = torch.complex(xd[..., : d // 2], xd[..., d // 2:])  # pair i = dims (i, i + d/2)
    zr = z * cis
    return torch.cat((zr.real, zr.imag), dim=-1)


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(2, 3, 17, 64), (5, 8), (1, 1, 2), (3, 1, 4, 7, 128)]


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_rope_cache()
    yield
    clear_rope_cache()


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_complex_reference(shape, dtype, interleaved):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    pos = torch.arange(shape[-2])
    got = apply_rope(x, pos, interleaved=interleaved)
    assert got.dtype == dtype and got.shape == x.shape
    assert_close(got, reference_rope(x, pos, interleaved=interleaved).to(dtype))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("base", [10000.0, 500000.0, 10])
def test_offsets_and_bases(interleaved, base):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 4, 64, dtype=torch.float64)
    pos = torch.arange(100, 104)  # decoding tokens 100..103 with a KV cache
    assert_close(apply_rope(x, pos, base=base, interleaved=interleaved),
                 reference_rope(x, pos, base=float(base), interleaved=interleaved))


@pytest.mark.parametrize("interleaved", [False, True])
def test_decoding_one_token_at_a_time_equals_full_sequence(interleaved):
    torch.manual_seed(2)
    x = torch.randn(1, 2, 40, 32)
    full = apply_rope(x, torch.arange(40), interleaved=interleaved)
    clear_rope_cache()
    steps = [apply_rope(x[:, :, t:t + 1], torch.tensor([t]), interleaved=interleaved) for t in range(40)]
    assert_close(torch.cat(steps, dim=-2), full, rtol=0, atol=0)


@pytest.mark.parametrize("pos_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_integer_position_dtypes_and_arbitrary_positions(pos_dtype):
    torch.manual_seed(3)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    pos = torch.tensor([5, 0, 200, 7, 7, 31], dtype=pos_dtype)  # unsorted, repeated
    assert_close(apply_rope(x, pos), reference_rope(x, pos.long()))


@pytest.mark.parametrize("interleaved", [False, True])
def test_negative_positions(interleaved):
    torch.manual_seed(4)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    pos = torch.arange(-4, 5)
    assert_close(apply_rope(x, pos, interleaved=interleaved),
                 reference_rope(x, pos, interleaved=interleaved))


def test_non_contiguous_input():
    torch.manual_seed(5)
    x = torch.randn(2, 7, 4, 32, dtype=torch.float64).transpose(1, 2)  # (B, nh, T, hs), not contiguous
    assert not x.is_contiguous()
    pos = torch.arange(3, 10)
    for inter in (False, True):
        assert_close(apply_rope(x, pos, interleaved=inter), reference_rope(x, pos, interleaved=inter))


@pytest.mark.parametrize("interleaved", [False, True])
def test_relative_property(interleaved):
    torch.manual_seed(6)
    d, N = 64, 300
    q, k = torch.randn(2, d, dtype=torch.float64)
    m, n = torch.randint(0, 4096, (2, N))
    lhs = (apply_rope(q.expand(N, d), m, interleaved=interleaved)
           * apply_rope(k.expand(N, d), n, interleaved=interleaved)).sum(-1)
    rhs = (q * apply_rope(k.expand(N, d), n - m, interleaved=interleaved)).sum(-1)
    assert_close(lhs, rhs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("interleaved", [False, True])
def test_norm_preserved(interleaved):
    torch.manual_seed(7)
    x = torch.randn(4, 50, 128, dtype=torch.float64)
    y = apply_rope(x, torch.arange(50) * 1000, interleaved=interleaved)
    assert_close(y.norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("interleaved", [False, True])
def test_gradients(interleaved):
    torch.manual_seed(8)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(10, 15)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, pos, interleaved=interleaved), (x,))
    g = torch.randn(2, 5, 8, dtype=torch.float64)
    (gx,) = torch.autograd.grad(apply_rope(x, pos, interleaved=interleaved), x, g)
    x_ref = x.detach().clone().requires_grad_(True)
    (gref,) = torch.autograd.grad(reference_rope(x_ref, pos, interleaved=interleaved), x_ref, g)
    assert_close(gx, gref)
    # RoPE is a rotation, so the gradient is the inverse rotation of g: R_m^T g = R_{-m} g
    assert_close(gx, reference_rope(g, -pos, interleaved=interleaved))


def _gptj_rotate_every_two(x):
    """GPT-J's helper (Hugging Face modeling_gptj.py): pair (2i, 2i+1) -> (-x_{2i+1}, x_{2i})."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def _neox_rotate_half(x):
    """GPT-NeoX's / Hugging Face Llama's rotate_half: [x1, x2] -> [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def test_layouts_are_gptj_and_neox_style():
    """interleaved=True is GPT-J style (cos/sin repeated per pair, rotate_every_two); the default,
    interleaved=False, is GPT-NeoX style (cos/sin concatenated, rotate_half), as the docstring says."""
    torch.manual_seed(11)
    x = torch.randn(2, 3, 7, 32, dtype=torch.float64)
    pos = torch.arange(40, 47)
    ang = torch.outer(pos.to(torch.float64), rope_frequencies(32))                       # (T, d/2)
    gptj = x * ang.cos().repeat_interleave(2, -1) + _gptj_rotate_every_two(x) * ang.sin().repeat_interleave(2, -1)
    neox = x * torch.cat((ang.cos(), ang.cos()), -1) + _neox_rotate_half(x) * torch.cat((ang.sin(), ang.sin()), -1)
    assert_close(apply_rope(x, pos, interleaved=True), gptj)
    assert_close(apply_rope(x, pos), neox)
    assert "GPT-J" in apply_rope.__doc__ and "GPT-NeoX" in apply_rope.__doc__


def test_gradients_bfloat16_flow():
    x = torch.randn(1, 4, 3, 16, dtype=torch.bfloat16, requires_grad=True)
    apply_rope(x, torch.arange(3)).float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()


def test_empty_sequence():
    x = torch.randn(2, 0, 8)
    out = apply_rope(x, torch.arange(0))
    assert out.shape == (2, 0, 8)


def test_rotate_half():
    x = torch.arange(1.0, 7.0)
    assert_close(rotate_half(x), torch.tensor([-4.0, -5.0, -6.0, 1.0, 2.0, 3.0]))
    assert_close(rotate_half(rotate_half(x)), -x)  # two quarter turns = a half turn
    with pytest.raises(ValueError, match="last dimension must be even"):
        rotate_half(torch.randn(3, 5))


def test_frequencies_closed_form():
    theta = rope_frequencies(128, 500000.0)
    ref = torch.tensor([500000.0 ** (-2 * i / 128) for i in range(64)], dtype=torch.float64)
    assert theta.dtype == torch.float64 and theta.shape == (64,)
    assert_close(theta, ref)


def test_cache_tables_keys_and_growth():
    cos, sin = rope_cos_sin(16, 5)
    assert cos.shape == sin.shape == (5, 8) and cos.dtype == torch.float32
    ang = torch.outer(torch.arange(5, dtype=torch.float64), rope_frequencies(16))
    assert_close(cos, ang.cos().float())
    assert_close(sin, ang.sin().float())
    assert rope_cache_info() == [(16, 10000.0, "cpu", "float32", 8)]  # rounded up to a power of two
    rope_cos_sin(16, 8)
    assert rope_cache_info()[0][-1] == 8                               # no regrowth
    rope_cos_sin(16, 9)
    assert rope_cache_info()[0][-1] == 16                              # grows to the next power of two
    apply_rope(torch.randn(3, 16, dtype=torch.float64), torch.tensor([0, 1, 300]))
    apply_rope(torch.randn(3, 16, dtype=torch.bfloat16), torch.arange(3))  # computed in float32
    apply_rope(torch.randn(3, 16), torch.arange(3), base=500000.0)
    info = {(row[1], row[3]): row[4] for row in rope_cache_info()}
    assert info == {(10000.0, "float32"): 16, (10000.0, "float64"): 512, (500000.0, "float32"): 4}
    clear_rope_cache()
    assert rope_cache_info() == []


def test_cache_is_bounded():
    for k in range(40):
        rope_cos_sin(2 * (k + 1), 4)
    assert len(rope_cache_info()) <= 16


X = torch.randn(2, 5, 8)
P = torch.arange(5)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: apply_rope(torch.randn(5, 7), P), ValueError, "must be even"),
    (lambda: apply_rope(torch.randn(5, 0), P), ValueError, "must be even and > 0"),
    (lambda: apply_rope(X, torch.arange(4)), ValueError, r"shape \(T,\) = \(5,\)"),
    (lambda: apply_rope(X, torch.arange(6)), ValueError, r"got \(6,\)"),
    (lambda: apply_rope(X, P.expand(2, 5)), ValueError, r"got \(2, 5\)"),
    (lambda: apply_rope(X, torch.tensor(3)), ValueError, r"shape \(T,\)"),
    (lambda: apply_rope(X, P.float()), TypeError, "integer dtype"),
    (lambda: apply_rope(X, P.bool()), TypeError, "integer dtype"),
    (lambda: apply_rope(X, [0, 1, 2, 3, 4]), TypeError, "positions must be an integer torch.Tensor"),
    (lambda: apply_rope(X.long(), P), TypeError, "floating-point"),
    (lambda: apply_rope(torch.randn(2, 5, 4, dtype=torch.complex64), P), TypeError, "floating-point"),
    (lambda: apply_rope(X.numpy(), P), TypeError, "x must be a torch.Tensor"),
    (lambda: apply_rope(torch.randn(8), torch.arange(1)), ValueError, "at least 2 dimensions"),
    (lambda: apply_rope(X, P, base=0.5), ValueError, "base must be a finite number > 1"),
    (lambda: apply_rope(X, P, base=1.0), ValueError, "base must be a finite number > 1"),
    (lambda: apply_rope(X, P, base=math.inf), ValueError, "base must be a finite number > 1"),
    (lambda: apply_rope(X, P, base="10000"), TypeError, "base must be a real number"),
    (lambda: apply_rope(X, P, interleaved=1), TypeError, "interleaved must be True or False"),
    (lambda: apply_rope(X, P.to("meta")), ValueError, "same device"),
    (lambda: rope_frequencies(7), ValueError, "even integer > 0"),
    (lambda: rope_frequencies(64, base=-2.0), ValueError, "base must be"),
    (lambda: rope_cos_sin(64, -1), ValueError, "length must be an integer >= 0"),
    (lambda: rope_cos_sin(64, 3.5), ValueError, "length must be an integer >= 0"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
