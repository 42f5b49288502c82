"""Tests of course_utils.precision (generated from notebooks/08_precision.ipynb): rounding against
PyTorch's casts, the loss scaler against torch.amp.GradScaler, counts against built models and
FlopCounterMode, the safetensors reader against its writer (and the safetensors package if present)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from course_utils import attention
from course_utils.precision import (FORMATS, GPT, Block, LossScaler, activation_bytes_per_layer,
                                    bitwise_equal, decode_bits, format_info, gemm_intensity,
                                    gpt_flops_per_token, gpt_param_count, read_safetensors_header,
                                    read_safetensors_tensor, round_to_format, roofline, training_flops,
                                    ulp, write_safetensors)

CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
# Since pytorch/pytorch#178817 (2026) the CPU cast to float8_e4m3fn saturates; before, overflow gave NaN.
TORCH_E4M3_SATURATES = bool(torch.tensor(1e4).to(torch.float8_e4m3fn).float().isfinite())


def _torch_cast(x, fmt):
    return x.to(CASTS[fmt]).float()


def _ours(x, fmt):
    return round_to_format(x, fmt, saturate=TORCH_E4M3_SATURATES if fmt == "e4m3" else None)


def _all_values(fmt):
    """Every finite value of an 8- or 16-bit format, as float64, sorted, without -0."""
    n = 1 + sum(FORMATS[fmt][:2])
    v = decode_bits(torch.arange(2 ** n), fmt)
    v = v[v.isfinite() & ~((v == 0) & (torch.signbit(v)))]
    return v.unique()


def _assert_same(got, want, what):
    """Bit for bit (so -0.0 ≠ 0.0), NaN where the other has NaN; name the first difference."""
    if not bitwise_equal(got, want):
        g, w = got.double().reshape(-1), want.double().reshape(-1)
        both_nan = g.isnan() & w.isnan()
        bad = ~both_nan & ((g.view(torch.int64) != w.view(torch.int64)) | (g.isnan() != w.isnan()))
        i = bad.nonzero()[0].item()
        raise AssertionError(f"{what}: {int(bad.sum())} values differ; first: got {g[i].item()!r}, "
                             f"want {w[i].item()!r}")


# ---------------------------------------------------------------- formats and decoding

@pytest.mark.parametrize("fmt", list(CASTS) + ["fp32"])
def test_format_info_matches_finfo(fmt):
    dt = CASTS.get(fmt, torch.float32)
    i, f = format_info(fmt), torch.finfo(dt)
    assert (i.max, i.min_normal, i.eps) == (f.max, f.smallest_normal, f.eps)
    assert i.min_subnormal == i.min_normal * i.eps


def test_tf32_and_pairs_from_the_bits():
    i = format_info("tf32")
    assert (i.exp_bits, i.man_bits, i.eps, i.min_normal) == (8, 10, 2 ** -10, 2.0 ** -126)
    assert i.max == (2 - 2 ** -10) * 2.0 ** 127
    assert format_info((5, 10)) == format_info("fp16")          # the IEEE-like pair is fp16


@pytest.mark.parametrize("fmt", list(CASTS))
def test_decode_every_pattern(fmt):
    n = 1 + sum(FORMATS[fmt][:2])
    bits = torch.arange(2 ** n).to(torch.int16 if n == 16 else torch.uint8)
    _assert_same(decode_bits(bits, fmt), bits.view(CASTS[fmt]), fmt)


def test_decode_fp32_patterns():
    bits = torch.randint(-2 ** 31, 2 ** 31, (200_000,), generator=torch.Generator().manual_seed(0)).int()
    _assert_same(decode_bits(bits, "fp32"), bits.view(torch.float32), "fp32")


@pytest.mark.parametrize("fmt", list(CASTS))
def test_ulp_is_the_gap_to_the_next_value(fmt):
    v = _all_values(fmt)
    pos = v[v >= 0]
    torch.testing.assert_close(ulp(pos[:-1], fmt), pos[1:] - pos[:-1], atol=0, rtol=0)
    torch.testing.assert_close(ulp(-pos[:-1], fmt), pos[1:] - pos[:-1], atol=0, rtol=0)


# ---------------------------------------------------------------- round_to_format against PyTorch's casts

def _random_bits(n, seed):
    return torch.randint(-2 ** 31, 2 ** 31, (n,), generator=torch.Generator().manual_seed(seed)).int().view(torch.float32)


@pytest.mark.parametrize("fmt", list(CASTS))
def test_random_bit_patterns(fmt):
    x = _random_bits(500_000, seed=1)                  # every exponent: subnormals, inf, NaN included
    _assert_same(_ours(x, fmt), _torch_cast(x, fmt), fmt)


@pytest.mark.parametrize("fmt", list(CASTS))
def test_log_uniform_in_range(fmt):
    g = torch.Generator().manual_seed(2)
    i = format_info(fmt)
    lo, hi = math.log2(i.min_subnormal) - 3, math.log2(i.max) + 1
    x = torch.exp2(torch.rand(300_000, generator=g) * (hi - lo) + lo) * torch.randn(300_000, generator=g).sign()
    _assert_same(_ours(x, fmt), _torch_cast(x, fmt), fmt)


@pytest.mark.parametrize("fmt", list(CASTS))
def test_ties_and_neighbours_of_ties(fmt):
    """Every midpoint between neighbours (ties to even), one float32 ulp either side, both signs."""
    v = _all_values(fmt)
    mid = ((v[1:] + v[:-1]) / 2).float()
    assert bitwise_equal(mid.double(), (v[1:] + v[:-1]) / 2)      # the midpoints are exact in float32
    near = torch.cat([mid, torch.nextafter(mid, torch.tensor(math.inf)), torch.nextafter(mid, torch.tensor(-math.inf))])
    x = torch.cat([near, -near, v.float()])
    _assert_same(_ours(x, fmt), _torch_cast(x, fmt), fmt)


@pytest.mark.parametrize("fmt", list(CASTS))
def test_special_values_and_edges(fmt):
    i = format_info(fmt)
    top, u = i.max, ulp(torch.tensor(i.max), fmt).item()      # the largest finite value and its ulp
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, top, top + u / 4, top + u / 2, top + u * 0.5001,
                      top + u, 10 * top, i.min_normal, i.min_subnormal, i.min_subnormal / 2, i.min_subnormal * 0.5000001,
                      i.min_subnormal * 1.5, i.min_normal - i.min_subnormal, 1e-45, 3e38], dtype=torch.float32)
    _assert_same(_ours(torch.cat([x, -x]), fmt), _torch_cast(torch.cat([x, -x]), fmt), fmt)


def test_signed_zero_from_underflow():
    r = round_to_format(torch.tensor([-1e-30, 1e-30]), "fp16")
    assert torch.signbit(r).tolist() == [True, False] and r.abs().max() == 0


def test_e4m3_overflow_modes():
    """OCP 8-bit spec: non-saturating E4M3 overflows to NaN; saturating clamps to ±448. 464 is the
    tie between 448 (mantissa 110, even) and the missing 480, so it rounds down in both modes."""
    x = torch.tensor([448.0, 464.0, 465.0, 1e6, math.inf, -math.inf, -465.0, math.nan])
    sat = round_to_format(x, "e4m3", saturate=True)
    non = round_to_format(x, "e4m3", saturate=False)
    _assert_same(sat, torch.tensor([448, 448, 448, 448, 448, -448, -448, math.nan]), "saturating")
    _assert_same(non, torch.tensor([448, 448, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan]),
                 "non-saturating")
    _assert_same(round_to_format(x, "e4m3"), sat, "the default saturates")


def test_saturate_for_formats_with_inf():
    x = torch.tensor([1e5, -1e6, math.inf, 65519.0, 65520.0])
    _assert_same(round_to_format(x, "fp16", saturate=True), torch.tensor([65504, -65504, 65504, 65504, 65504.0]), "sat")
    _assert_same(round_to_format(x, "fp16"), torch.tensor([math.inf, -math.inf, math.inf, 65504, math.inf]), "ieee")


def test_tf32_against_fp16_significand_rounding():
    x = _random_bits(300_000, seed=3)
    normal = x.isfinite() & (x.abs() >= 2 ** -126)
    m, k = torch.frexp(x[normal].double())
    ref = torch.ldexp((2 * m).half().double(), k - 1).float()
    _assert_same(round_to_format(x[normal], "tf32"), ref, "tf32 normal")


def test_tf32_subnormals_closed_form():
    """Below 2^-126 the tf32 grid is 2^-136: round(x / 2^-136) with ties to even (torch.round)."""
    x = (torch.rand(100_000, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 ** -126).float()
    x = torch.cat([x, (torch.arange(0, 2 ** 10, dtype=torch.float64) * 2 ** -136 + 2 ** -137).float()])  # exact ties
    ref = (torch.round(x.double() * 2.0 ** 136) * 2.0 ** -136).float()
    _assert_same(round_to_format(x, "tf32"), ref, "tf32 subnormal")


def test_fp32_from_float64():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300_000, dtype=torch.float64, generator=g) * torch.exp2(
        torch.randint(-170, 140, (300_000,), generator=g).double())
    x = torch.cat([x, torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0, 2.0 ** -150, 3 * 2.0 ** -151],
                                   dtype=torch.float64)])
    out = round_to_format(x, "fp32")
    assert out.dtype == torch.float64
    _assert_same(out, x.float(), "fp32 from float64")


def test_float64_input_rounds_once():
    d = torch.tensor([1 + 2 ** -11 + 2 ** -40], dtype=torch.float64)
    assert round_to_format(d, "fp16").item() == 1 + 2 ** -10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_inputs_are_widened(dtype):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(6)).to(dtype)
    out = round_to_format(x, "e5m2")
    assert out.dtype == torch.float32
    _assert_same(out, x.float().to(torch.float8_e5m2).float(), "widened")


def test_shapes_and_identity():
    x = torch.randn(3, 4, 5)
    assert round_to_format(x, "bf16").shape == (3, 4, 5)
    assert round_to_format(torch.tensor(1.5), "e4m3").shape == ()
    _assert_same(round_to_format(x, "fp32"), x, "fp32 on float32 is the identity")
    _assert_same(round_to_format(x[0].t(), "fp16"), x[0].t().half().float(), "non-contiguous input")


@pytest.mark.parametrize("fmt", [(5, 10), (8, 7), (4, 3), (6, 4), (3, 2)])
def test_pairs_round_to_their_own_values(fmt):
    """For an IEEE-like pair, rounding is idempotent and lands on decode_bits' values."""
    E, M = fmt
    values = decode_bits(torch.arange(2 ** (E + M + 1)), fmt)
    finite = values[values.isfinite()].float()
    _assert_same(round_to_format(finite, fmt), finite, f"{fmt} values are fixed points")
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(7)) * format_info(fmt).max / 4
    r = round_to_format(x, fmt)
    assert torch.isin(r.double(), values).all()


def test_round_to_format_errors():
    with pytest.raises(ValueError, match="unknown format 'fp4'"):
        round_to_format(torch.ones(2), "fp4")
    with pytest.raises(ValueError, match="exp_bits in 2..11"):
        round_to_format(torch.ones(2), (1, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        round_to_format(torch.arange(3), "bf16")
    with pytest.raises(TypeError, match="torch.Tensor"):
        round_to_format([1.0, 2.0], "bf16")
    with pytest.raises(ValueError, match="unknown format"):
        format_info("int8")


# ---------------------------------------------------------------- LossScaler against GradScaler

def _scripted(scaler, planted, steps=20, seed=0):
    torch.manual_seed(seed)
    model, x, y = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)), torch.randn(16, 5), torch.randn(16, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scales, skipped = [], []
    for step in range(steps):
        opt.zero_grad()
        scaler.scale(F.mse_loss(model(x), y)).backward()
        if step in planted:
            model[2].bias.grad[0] = planted[step]
        before = [p.detach().clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        skipped.append(all(torch.equal(a, b) for a, b in zip(before, model.parameters())))
    return scales, skipped, [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("kw", [dict(init_scale=2.0 ** 10, growth_interval=3),
                                dict(init_scale=2.0 ** 16, growth_interval=1, growth_factor=4.0, backoff_factor=0.25),
                                dict(init_scale=3.0, growth_interval=2, growth_factor=1.5, backoff_factor=0.3)])
def test_loss_scaler_matches_grad_scaler(kw):
    planted = {0: math.inf, 4: math.nan, 5: -math.inf, 11: math.inf, 12: math.inf, 13: math.inf}
    ours = _scripted(LossScaler(**kw), planted)
    ref = _scripted(torch.amp.GradScaler("cpu", **kw), planted)
    assert ours[0] == ref[0]
    assert ours[1] == ref[1] and [i for i, s in enumerate(ours[1]) if s] == sorted(planted)
    for a, b in zip(ours[2], ref[2]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_loss_scaler_growth_stops_at_float32_max():
    s = LossScaler(init_scale=2.0 ** 127, growth_interval=1)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.zeros(1)
    s.step(opt)
    s.update()
    assert s.get_scale() == 2.0 ** 127                     # 2^128 is not a float32


def test_loss_scaler_unscale_then_step_and_errors():
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    s = LossScaler(init_scale=8.0)
    s.scale((p * torch.tensor([1.0, 2.0, 3.0])).sum()).backward()
    s.unscale_(opt)
    torch.testing.assert_close(p.grad, torch.tensor([1.0, 2.0, 3.0]))      # clip here if you want
    with pytest.raises(RuntimeError, match="already unscaled"):
        s.unscale_(opt)
    s.step(opt)
    s.update()
    torch.testing.assert_close(p.detach(), torch.tensor([0.0, -1.0, -2.0]))
    with pytest.raises(RuntimeError, match="step"):
        s.update()
    for bad in [dict(init_scale=0), dict(init_scale=math.inf), dict(init_scale=1e39), dict(growth_factor=1.0),
                dict(backoff_factor=1.0), dict(growth_interval=0), dict(growth_interval=2.5)]:
        with pytest.raises(ValueError, match="LossScaler"):
            LossScaler(**bad)


# ---------------------------------------------------------------- counting parameters

def _n(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cfg", [(1, 8, 2, 10, 4), (2, 32, 4, 16, 32), (4, 24, 3, 7, 9), (0, 16, 4, 5, 3)])
@pytest.mark.parametrize("tied", [True, False])
def test_gpt_param_count_matches_built_models(cfg, tied):
    n_layer, d, heads, vocab, ctx = cfg
    assert gpt_param_count(n_layer, d, vocab, ctx, tied=tied) == _n(GPT(*cfg, tied=tied))


def test_gpt2_sizes():
    # GPT-2 small, medium, large, XL configurations (Radford et al., 2019), built on the meta device
    for n_layer, d, heads in [(12, 768, 12), (24, 1024, 16), (36, 1280, 20), (48, 1600, 25)]:
        with torch.device("meta"):
            model = GPT(n_layer, d, heads, 50257, 1024)
        assert gpt_param_count(n_layer, d, 50257, 1024) == _n(model)
    assert gpt_param_count(12, 768, 50257, 1024) == 124_439_808
    assert gpt_param_count(12, 768, 50257, 1024, tied=False) == 124_439_808 + 50257 * 768


def test_gpt_param_count_errors():
    with pytest.raises(ValueError, match="d_model must be a non-negative int"):
        gpt_param_count(2, -4, 10, 8)
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        gpt_param_count(2, 4, 0, 8)
    with pytest.raises(ValueError, match="n_layer"):
        gpt_param_count(2.5, 4, 10, 8)
    with pytest.raises(ValueError, match="divisible"):
        GPT(1, 10, 3, 5, 4)


def test_gpt_forward_shape_and_causality():
    torch.manual_seed(0)
    model = GPT(2, 16, 4, 11, 8).eval()
    idx = torch.randint(11, (3, 8))
    out = model(idx)
    assert out.shape == (3, 8, 11)
    idx2 = idx.clone()
    idx2[:, 5:] = (idx2[:, 5:] + 1) % 11                       # change the future only
    torch.testing.assert_close(model(idx2)[:, :5], out[:, :5])


# ---------------------------------------------------------------- safetensors

def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    tensors = {"a": torch.randn(3, 5), "b.weight": torch.randn(7).bfloat16(), "c": torch.arange(12).view(3, 4),
               "d": torch.randn(2, 2).to(torch.float8_e4m3fn), "e": torch.tensor(3.5, dtype=torch.float64),
               "mask": torch.rand(4, 3) > 0.5, "f16": torch.randn(1, 9).half()}
    path = tmp_path / "x.safetensors"
    write_safetensors(tensors, path, metadata={"format": "pt", "n": 1})
    header = read_safetensors_header(path)
    assert header["__metadata__"] == {"format": "pt", "n": "1"}
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and len(raw) == 8 + n + sum(t.numel() * t.element_size() for t in tensors.values())
    for name, t in tensors.items():
        assert header[name]["shape"] == list(t.shape)
        back = read_safetensors_tensor(path, name)
        assert back.dtype == t.dtype and back.shape == t.shape
        assert torch.equal(back.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


def test_safetensors_counts_a_model_without_loading_it(tmp_path):
    model = GPT(2, 32, 4, 16, 32)
    state = {k: v for k, v in model.state_dict().items() if k != "head.weight"}      # tied: stored once
    path = tmp_path / "m.safetensors"
    write_safetensors(state, path)
    header = read_safetensors_header(path)
    assert sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__") == _n(model)


def test_safetensors_against_the_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {"w": torch.randn(4, 6), "b": torch.randn(6).bfloat16(), "i": torch.arange(5)}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_safetensors(tensors, ours)
    st.save_file(tensors, str(theirs))
    for name, t in st.load_file(str(ours)).items():                 # the package reads our file
        assert torch.equal(t, tensors[name])
    for name, t in tensors.items():                                   # we read the package's file
        assert torch.equal(read_safetensors_tensor(theirs, name), t)


def test_safetensors_errors(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes((10 ** 6).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_safetensors_header(bad)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        write_safetensors({"a": [1, 2]}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="dtype"):
        write_safetensors({"a": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "x.safetensors")
    write_safetensors({"a": torch.zeros(2)}, tmp_path / "ok.safetensors")
    with pytest.raises(KeyError, match="no tensor 'b'"):
        read_safetensors_tensor(tmp_path / "ok.safetensors", "b")


# ---------------------------------------------------------------- FLOPs, memory, roofline

@pytest.mark.parametrize("cfg", [(2, 32, 4, 16, 32), (3, 24, 2, 50, 12), (1, 64, 8, 7, 20)])
def test_flops_match_flop_counter(cfg):
    n_layer, d, heads, vocab, ctx = cfg
    torch.manual_seed(0)
    model = GPT(*cfg)
    idx = torch.randint(vocab, (2, ctx))
    with FlopCounterMode(display=False) as fwd:
        model(idx)
    with FlopCounterMode(display=False) as train:
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    assert fwd.get_total_flops() == idx.numel() * gpt_flops_per_token(n_layer, d, vocab, ctx)
    assert train.get_total_flops() == idx.numel() * gpt_flops_per_token(n_layer, d, vocab, ctx, training=True)


def test_training_flops():
    assert training_flops(175e9, 300e9) == pytest.approx(3.15e23)
    assert training_flops(0, 10) == 0
    for bad in [(-1, 5), (5, math.inf), ("7", 3), (True, 3)]:
        with pytest.raises(ValueError, match="training_flops"):
            training_flops(*bad)


def _saved_bytes(module, x):
    state = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    seen, stats = {}, 0

    def pack(t):
        nonlocal stats
        ptr = t.untyped_storage().data_ptr()
        if ptr not in state and ptr not in seen:
            seen[ptr] = t.untyped_storage().nbytes()
            if t.shape[-1:] == (1,):
                stats += seen[ptr]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values()), stats


@pytest.mark.parametrize("s,b,h,a", [(64, 2, 64, 4), (32, 3, 48, 6), (16, 1, 32, 2)])
def test_activation_formula_matches_saved_tensors(s, b, h, a):
    torch.manual_seed(0)
    block = Block(h, a, n_ctx=s, dropout=0.1).to(torch.bfloat16).train()
    measured, ln_stats = _saved_bytes(block, torch.randn(b, s, h, dtype=torch.bfloat16, requires_grad=True))
    assert measured == activation_bytes_per_layer(s, b, h, a) + ln_stats
    assert ln_stats in (4 * s * b * 2, 4 * s * b * 4)     # 2 LayerNorms × (mean, 1/σ), bf16 or fp32


def test_activation_formula_value_and_errors():
    assert activation_bytes_per_layer(2048, 1, 12288, 96) == 2048 * 12288 * (34 + 5 * 96 * 2048 // 12288)
    with pytest.raises(ValueError, match="activation_bytes_per_layer"):
        activation_bytes_per_layer(-1, 1, 1, 1)


def test_roofline_and_gemm_intensity():
    assert roofline(1.0, 989e12, 3.35e12) == 3.35e12
    assert roofline(1e4, 989e12, 3.35e12) == 989e12
    for M, N, K in [(64, 48, 80), (1, 4096, 4096), (512, 512, 512)]:
        a, b = torch.empty(M, K, device="meta", dtype=torch.bfloat16), torch.empty(K, N, device="meta", dtype=torch.bfloat16)
        with FlopCounterMode(display=False) as c:
            out = a @ b
        moved = sum(t.numel() * t.element_size() for t in (a, b, out))
        assert gemm_intensity(M, N, K) == pytest.approx(c.get_total_flops() / moved, rel=1e-12)
    with pytest.raises(ValueError, match="roofline"):
        roofline(0, 1, 1)
    with pytest.raises(ValueError, match="gemm_intensity"):
        gemm_intensity(0, 4, 4)
