"""Tests of course_utils.norms (generated from notebooks/02_norms.ipynb) against PyTorch's modules."""
import copy
import re

import pytest
import torch
import torch.nn as nn

from course_utils.norms import layer_norm, rms_norm

DTYPES = [torch.float32, torch.bfloat16, torch.float64]
SHAPES = [(3, 7, 33), (1, 1), (5, 64), (2, 3, 4, 17), (13,)]
# (atol, rtol) per dtype for outputs and gradients; bfloat16 has 8 significant bits.
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 2e-2), torch.float64: (1e-12, 1e-12)}


def _modules(d, dtype, seed=0):
    torch.manual_seed(seed)
    rms = nn.RMSNorm(d, eps=1e-6, dtype=dtype)
    ln = nn.LayerNorm(d, eps=1e-5, dtype=dtype)
    with torch.no_grad():
        rms.weight.normal_(1.0, 0.3)
        ln.weight.normal_(1.0, 0.3)
        ln.bias.normal_(0.0, 0.3)
    return rms, ln


def _input(shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_modules(shape, dtype):
    rms, ln = _modules(shape[-1], dtype)
    x = _input(shape, dtype)
    atol, rtol = TOL[dtype]
    y = rms_norm(x, rms.weight, eps=1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, rms(x), atol=atol, rtol=rtol)
    y = layer_norm(x, ln.weight, ln.bias, eps=1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y, ln(x), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 7, 33), (4, 5), (19,)])
def test_gradients_match_modules(shape, dtype):
    rms, ln = _modules(shape[-1], dtype)
    x = _input(shape, dtype).requires_grad_(True)
    g = _input(shape, dtype, seed=2)
    atol, rtol = TOL[dtype]
    for ours, module, params in [(lambda x: rms_norm(x, rms.weight, 1e-6), rms, [rms.weight]),
                                 (lambda x: layer_norm(x, ln.weight, ln.bias, 1e-5), ln,
                                  [ln.weight, ln.bias])]:
        got = torch.autograd.grad(ours(x), [x, *params], g)
        want = torch.autograd.grad(module(x), [x, *params], g)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype
            if dtype == torch.bfloat16:
                # a weight gradient sums many rounded terms, so an element near zero can differ
                # by a large relative amount: bound the error relative to the largest element
                torch.testing.assert_close(a, b, atol=2e-2 * b.abs().max().item(), rtol=0)
            else:
                torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_bfloat16_gradients_vs_float64():
    rms, ln = _modules(33, torch.bfloat16)
    x = _input((3, 7, 33), torch.bfloat16).requires_grad_(True)
    g = _input((3, 7, 33), torch.bfloat16, seed=2)
    xd = x.detach().double().requires_grad_(True)
    for ours, module in [(lambda x: rms_norm(x, rms.weight, 1e-6), rms),
                         (lambda x: layer_norm(x, ln.weight, ln.bias, 1e-5), ln)]:
        got = torch.autograd.grad(ours(x), x, g)[0]
        ref64 = copy.deepcopy(module).double()                      # the same module in float64
        ref = torch.autograd.grad(ref64(xd), xd, g.double())[0]
        torch.testing.assert_close(got.double(), ref, atol=1e-2 * ref.abs().max().item(), rtol=0)


def test_gradcheck_float64():
    kw = dict(dtype=torch.float64, requires_grad=True)
    x, w, b = torch.randn(2, 3, 6, **kw), torch.randn(6, **kw), torch.randn(6, **kw)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-6), (x, w))
    assert torch.autograd.gradcheck(lambda x, w, b: layer_norm(x, w, b, 1e-5), (x, w, b))


def test_none_parameters():
    x = _input((4, 9), torch.float32)
    torch.testing.assert_close(rms_norm(x, None), nn.RMSNorm(9, eps=1e-6, elementwise_affine=False)(x))
    torch.testing.assert_close(layer_norm(x, None, None), nn.LayerNorm(9, elementwise_affine=False)(x))
    w = torch.randn(9)
    torch.testing.assert_close(layer_norm(x, w, None), nn.functional.layer_norm(x, (9,), w, None))


def test_statistics_in_float32():
    """A float16 row with one value of 300: x**2 overflows in float16, not in float32."""
    x = torch.randn(2, 4096, dtype=torch.float64)
    x[:, 5] = 300.0
    x16 = x.half()
    ref = x16.double() / x16.double().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    y = rms_norm(x16, None)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), ref, atol=1e-3, rtol=1e-3)
    # layer_norm with a large mean: the two-pass float32 variance stays accurate
    xb = (torch.randn(3, 2048, dtype=torch.float64) + 1000).bfloat16()
    ref = torch.nn.functional.layer_norm(xb.double(), (2048,))
    torch.testing.assert_close(layer_norm(xb, None, None).double(), ref, atol=3e-2, rtol=2e-2)


def test_mixed_weight_dtype_keeps_input_dtype():
    x = _input((3, 16), torch.bfloat16)
    w, b = torch.randn(16), torch.randn(16)       # float32 parameters, bfloat16 activations
    assert rms_norm(x, w).dtype == torch.bfloat16
    assert layer_norm(x, w, b).dtype == torch.bfloat16
    ref = nn.functional.layer_norm(x.double(), (16,), w.double(), b.double())
    torch.testing.assert_close(layer_norm(x, w, b).double(), ref, atol=3e-2, rtol=2e-2)


@pytest.mark.parametrize("fn", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("make, exc, match", [
    (lambda: ([[1.0, 2.0]], torch.ones(2)), TypeError, "x must be a torch.Tensor"),
    (lambda: (torch.arange(8), torch.ones(8)), TypeError, "floating dtype"),
    (lambda: (torch.ones(8, dtype=torch.complex64), torch.ones(8)), TypeError, "floating dtype"),
    (lambda: (torch.tensor(1.0), torch.ones(1)), ValueError, "shape (..., d) with d >= 1"),
    (lambda: (torch.randn(3, 0), torch.ones(0)), ValueError, "d >= 1"),
    (lambda: (torch.randn(2, 64), torch.ones(32)), ValueError, "weight must have shape (d,) = (64,)"),
    (lambda: (torch.randn(2, 8), torch.ones(2, 8)), ValueError, "weight must have shape (d,) = (8,)"),
    (lambda: (torch.randn(2, 8), torch.ones(8, dtype=torch.int32)), TypeError, "weight must have a floating dtype"),
    (lambda: (torch.randn(2, 8), [1.0] * 8), TypeError, "weight must be a torch.Tensor"),
])
def test_bad_inputs(fn, make, exc, match):
    x, w = make()
    with pytest.raises(exc, match=re.escape(match)):
        if fn == "rms_norm":
            rms_norm(x, w)
        else:
            layer_norm(x, w, None)


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf"), "1e-5", True, None])
def test_bad_eps(eps):
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        rms_norm(x, None, eps=eps)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        layer_norm(x, None, None, eps=eps)


def test_bad_bias():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"bias must have shape \(d,\) = \(8,\)"):
        layer_norm(x, torch.ones(8), torch.zeros(7))
    with pytest.raises(TypeError, match="bias must have a floating dtype"):
        layer_norm(x, torch.ones(8), torch.zeros(8, dtype=torch.long))


def test_error_names_the_function():
    with pytest.raises(ValueError, match=r"^rms_norm: "):
        rms_norm(torch.randn(2, 8), torch.ones(3))
    with pytest.raises(ValueError, match=r"^layer_norm: "):
        layer_norm(torch.randn(2, 8), torch.ones(3), None)


# ---- Exercise 2.3 (chunked variance): its checker must reject the E[x²] − μ² shortcut ----------

def _exercise_cell(title):
    import nbformat
    from pathlib import Path
    nb = nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / "02_norms.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith(f"# {title} ")]
    assert len(cells) == 1, f"{title}: expected one exercise cell, found {len(cells)}"
    return cells[0]


def _run_with_solution(src, body, extra_globals=None):
    """Run an exercise cell with its solution block replaced by ``body`` (4-space indented), in a
    fresh namespace that holds only the notebook's set-up imports and ``extra_globals``."""
    from course_utils.exercises import BEGIN, END, check_function
    head, rest = src.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    head = head[: head.rfind("\n") + 1]                      # drop the marker line's indentation
    tail = tail[tail.find("\n") + 1:]
    code = head + "".join("    " + ln + "\n" for ln in body.strip("\n").splitlines()) + tail
    ns = {"torch": torch, "check_function": check_function, **(extra_globals or {})}
    exec(compile(code, "<Exercise 2.3>", "exec"), ns)


NAIVE_VARIANCES = {
    "E[x²] − μ² over the row": "return (x * x).mean(-1) - x.mean(-1) ** 2",
    "running sums of x and x² per chunk": """
s1 = s2 = 0
for start in range(0, x.shape[-1], chunk):
    xb = x[..., start:start + chunk]
    s1, s2 = s1 + xb.sum(-1), s2 + (xb * xb).sum(-1)
n = x.shape[-1]
return s2 / n - (s1 / n) ** 2""",
}


@pytest.mark.parametrize("naive", list(NAIVE_VARIANCES))
@pytest.mark.parametrize("global_x", [None, "benign", "mean-1000"])
def test_exercise_2_3_rejects_the_one_pass_formula(naive, global_x):
    """The counterexample lives in the checker's own cases (rows of mean 1000 in float32), so the
    shortcut fails whatever a global ``x`` holds when the cell runs."""
    from course_utils.exercises import ExerciseError
    extra = {None: {}, "benign": {"x": torch.randn(8, 16)},
             "mean-1000": {"x": torch.randn(8, 4096) + 1000}}[global_x]
    with pytest.raises(ExerciseError, match="Exercise 2.3"):
        _run_with_solution(_exercise_cell("Exercise 2.3"), NAIVE_VARIANCES[naive], extra)


def test_exercise_2_3_solution_passes_and_the_counterexample_is_real(capsys):
    src = _exercise_cell("Exercise 2.3")
    body = src.split("### BEGIN SOLUTION", 1)[1].split("### END SOLUTION", 1)[0]
    body = "\n".join(ln[4:] for ln in body.strip("\n").splitlines())
    _run_with_solution(src, body, {"x": torch.randn(8, 16)})
    assert "✓ Exercise 2.3" in capsys.readouterr().out
    # the reason: in float32, E[x²] ≈ 10⁶ has a spacing of 0.0625, so E[x²] − μ² loses the variance ≈ 1
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 4096, generator=g, dtype=torch.float64) + 1000).float()
    ref = x.double().var(-1, unbiased=False)
    naive = ((x * x).mean(-1) - x.mean(-1) ** 2).double()
    assert ((naive - ref).abs() / ref).max() > 0.03


# ---- the drawing helpers of the appendix --------------------------------------------------------

def test_drawing_helpers_draw_and_reject_bad_placements():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from course_utils.norms import (draw_gradient_profiles, draw_norm_groups, draw_residual_wiring,
                                    draw_top_vs_depth)
    fig, axes = plt.subplots(1, 5)
    for ax, placement in zip(axes, ["post", "pre"]):
        draw_residual_wiring(ax, placement)
    draw_norm_groups(axes[2], torch.arange(3 * 4 * 6).view(3, 4, 6) // 6, title="LayerNorm")
    draw_gradient_profiles(axes[3], {"post": torch.rand(3, 6), "pre": torch.rand(3, 6)})
    draw_top_vs_depth(axes[4], [6, 12, 24], {"post": torch.tensor([0.3, 0.3, 0.4]),
                                              "pre": torch.tensor([0.1, 0.07, 0.05])})
    with pytest.raises(ValueError, match="placement must be 'post' or 'pre'"):
        draw_residual_wiring(axes[0], "sandwich")
    plt.close(fig)
