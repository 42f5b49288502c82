"""Tests of course_utils.triton_basics (generated from notebooks/06_triton_basics.ipynb).

On a CPU the kernels run under TRITON_INTERPRET=1 (set by importing course_utils): add, softmax,
online_softmax and matmul (with and without the bias + GELU epilogue) against PyTorch on awkward
shapes (1, 17, 1000, 1823 × 781, transposed views), every bad-input error, watch_memory's byte counts
against closed forms and its out-of-bounds reports, the puzzle checker's diagnoses of typical
mistakes, and a compilation of every kernel for an H100 (sm_90) in a process without the
interpreter. On a CUDA GPU the same kernels are compiled and also tested in float16 and bfloat16
(the GPU tests skip themselves elsewhere).
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import course_utils.triton_basics as tb
from course_utils.device import triton_mode
from course_utils.exercises import ExerciseError, stub_line
from course_utils.triton_basics import add, matmul, online_softmax, softmax, triton, tl

ROOT = Path(__file__).resolve().parent.parent
needs_triton = pytest.mark.skipif(triton_mode() == "unavailable", reason="Triton is not installed")
interpreter = pytest.mark.skipif(not tb.INTERPRET or not tb.HAS_TRITON, reason="needs Triton's interpreter")
gpu = pytest.mark.skipif(not torch.cuda.is_available() or tb.INTERPRET, reason="needs a CUDA GPU")
DEV = tb.DEVICE
CPU_DTYPES = [torch.float32, torch.float16]       # the interpreter gets bfloat16 arithmetic wrong


def randn(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEV)


# ---------------------------------------------------------------- the package's functions, interpreter or GPU

@needs_triton
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (17,), (1000,), (1823, 781), (3, 0)])
def test_add_matches_torch(shape, dtype):
    x, y = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype, seed=1)
    z = add(x, y)
    assert z.shape == x.shape and z.dtype == dtype
    assert_close(z, x + y, atol=0, rtol=0)


@needs_triton
def test_add_non_contiguous_and_small_blocks():
    x = randn(40, 30).T                                  # (30, 40), strides (1, 30)
    y = randn(30, 40, seed=1)
    assert_close(add(x, y, block=16), x + y, atol=0, rtol=0)


@needs_triton
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape, scale", [((1, 1), 1.0), ((1, 17), 50.0), ((3, 1000), 10.0), ((1823, 781), 5.0),
                                          ((2, 8193), 5.0), ((0, 5), 1.0)])
def test_softmax_matches_torch(shape, scale, dtype):
    x = randn(*shape, dtype=dtype, scale=scale)
    y = softmax(x)
    assert y.shape == x.shape and y.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert_close(y.float(), torch.softmax(x.float(), 1), atol=tol, rtol=1e-4 if dtype == torch.float32 else 1e-2)


@needs_triton
def test_softmax_rows_of_a_wider_tensor():
    x = randn(7, 150, scale=20.0)[:, 3:103]              # rows 150 apart, 100 long, columns contiguous
    assert_close(softmax(x), torch.softmax(x, 1), atol=1e-6, rtol=1e-4)
    assert_close(online_softmax(x, block=16), torch.softmax(x, 1), atol=1e-6, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("block", [16, 64, 2048])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (5, 1000), (2, 3000)])
def test_online_softmax_matches_torch(shape, block):
    x = randn(*shape, scale=30.0, seed=block)
    assert_close(online_softmax(x, block=block), torch.softmax(x, 1), atol=1e-6, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (17, 33, 40), (100, 70, 50), (181, 78, 123), (1823, 17, 781)])
@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_float32_matches_torch(M, N, K, transposed):
    a = randn(K, M).T if transposed else randn(M, K)
    b = randn(N, K, seed=1).T if transposed else randn(K, N, seed=1)
    ref = a.double() @ b.double()
    assert_close(matmul(a, b).double(), ref, atol=1e-4 * math.sqrt(K), rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (17, 33, 40), (64, 96, 128)])
def test_matmul_bias_gelu_epilogue(M, N, K, dtype):
    if torch.cuda.is_available() and dtype != torch.float32:
        pytest.skip("on a GPU float16 autotunes per shape: test_gpu_matmul_half_precision covers it")
    a, b, bias = randn(M, K, dtype=dtype), randn(K, N, dtype=dtype, seed=1), randn(N, dtype=dtype, seed=2)
    ref = F.gelu(a.double() @ b.double() + bias.double())
    got = matmul(a, b, bias=bias, activation="gelu")
    assert got.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 5e-3
    assert_close(got.double(), ref, atol=tol, rtol=tol)
    assert_close(matmul(a, b, bias=bias).double(), a.double() @ b.double() + bias.double(), atol=tol, rtol=tol)
    assert_close(matmul(a, b, activation="gelu").double(), F.gelu(a.double() @ b.double()), atol=tol, rtol=tol)


@needs_triton
def test_matmul_non_contiguous_bias():
    a, b, wide = randn(20, 30), randn(30, 16, seed=1), randn(16, 3, seed=2)
    assert_close(matmul(a, b, bias=wide[:, 1]), a @ b + wide[:, 1], atol=1e-4, rtol=1e-5)


# ---------------------------------------------------------------- errors

def _f(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device=DEV)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: add(_f(3), [1.0, 2.0, 3.0]), TypeError, "y must be a torch tensor"),
    (lambda: add(_f(3, dtype=torch.float64), _f(3, dtype=torch.float64)), TypeError, "float16, bfloat16 or float32, got torch.float64"),
    (lambda: add(_f(3), _f(4)), ValueError, r"same shape, got \(3,\) and \(4,\)"),
    (lambda: add(_f(3), _f(3, dtype=torch.float16)), ValueError, "one device and one dtype"),
    (lambda: softmax(_f(3)), ValueError, r"x must be 2-D, got shape \(3,\)"),
    (lambda: softmax(_f(3, 0)), ValueError, "at least one element"),
    (lambda: softmax(_f(8, 3).T), ValueError, r"columns must be contiguous \(x.stride\(1\) == 1\)"),
    (lambda: online_softmax(_f(2, 3), block=100), ValueError, "power of two from 16 to 65536, got 100"),
    (lambda: online_softmax(_f(2, 3), block=8), ValueError, "power of two from 16 to 65536"),
    (lambda: online_softmax(_f(2, 3), block=True), ValueError, "power of two"),
    (lambda: matmul(_f(2, 3), _f(4, 5)), ValueError, r"agree on K, got shapes \(2, 3\) and \(4, 5\)"),
    (lambda: matmul(_f(2, 3, 4), _f(4, 5)), ValueError, "a must be 2-D"),
    (lambda: matmul(_f(0, 3), _f(3, 5)), ValueError, "M, N and K must be at least 1"),
    (lambda: matmul(_f(2, 3), _f(3, 5), bias=_f(4)), ValueError, r"bias must have shape \(N,\) = \(5,\), got \(4,\)"),
    (lambda: matmul(_f(2, 3), _f(3, 5), activation="relu"), ValueError, "activation must be None or 'gelu'"),
    (lambda: matmul(_f(2, 3), _f(3, 5).half()), ValueError, "one device and one dtype"),
])
def test_bad_input_is_refused_with_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@interpreter
def test_add_refuses_more_than_int32_offsets():
    x = torch.empty(2**31, device="meta")                 # no memory: only the checks run
    with pytest.raises(ValueError, match=r"at most 2³¹ − 1 elements \(the kernel's offsets are int32\)"):
        add(x, x)


@interpreter
def test_interpreter_refuses_bfloat16():
    x = _f(4, 4, dtype=torch.bfloat16)
    for call in (lambda: add(x, x), lambda: softmax(x), lambda: matmul(x, x)):
        with pytest.raises(TypeError, match="interpreter computes bfloat16 arithmetic wrongly"):
            call()


def test_clear_errors_without_triton_or_a_way_to_run_it(monkeypatch):
    monkeypatch.setattr(tb, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        add(_f(3), _f(3))
    monkeypatch.setattr(tb, "HAS_TRITON", True)
    monkeypatch.setattr(tb, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="need a CUDA GPU, or TRITON_INTERPRET=1"):
        softmax(torch.zeros(2, 3))                          # CPU tensors, no interpreter


def test_kernels_run_says_why_not(monkeypatch, capsys):
    monkeypatch.setattr(tb, "HAS_TRITON", False)
    assert tb.kernels_run() is False
    assert "Triton is not installed" in capsys.readouterr().out


# ---------------------------------------------------------------- watch_memory (interpreter)

@interpreter
def test_watch_memory_counts_bytes_equal_to_closed_forms():
    n = 1000
    x, y, z = randn(n), randn(n, seed=1), _f(n)
    with tb.watch_memory(X=x, Y=y, Z=z) as mem:
        tb._add_kernel[(triton.cdiv(n, 128),)](x, y, z, n, BLOCK=128)
    assert mem.counted and mem.read == {"X": 4 * n, "Y": 4 * n, "Z": 0} and mem.written == {"X": 0, "Y": 0, "Z": 4 * n}
    M, N = 13, 70
    x, y = randn(M, N).half(), _f(M, N, dtype=torch.float16)
    with tb.watch_memory(X=x, Y=y) as mem:
        tb._online_softmax_kernel[(M,)](x, y, N, N, N, BLOCK=16)
    assert mem.totals() == {"read": 2 * 2 * M * N, "write": 2 * M * N}     # float16: 2 bytes, read twice
    M, N, K = 50, 45, 70
    a, b, bias, c = randn(M, K), randn(K, N, seed=1), randn(N, seed=2), _f(M, N)
    with tb.watch_memory(A=a, B=b, C=c, Bias=bias) as mem:
        tb._matmul_launch(a, b, c, bias, "gelu")
    bm, bn = tb.MATMUL_FIXED[:2]
    tiles_m, tiles_n = math.ceil(M / bm), math.ceil(N / bn)
    assert mem.read == {"A": 4 * M * K * tiles_n, "B": 4 * K * N * tiles_m, "C": 0, "Bias": 4 * N * tiles_m}
    assert mem.written == {"A": 0, "B": 0, "C": 4 * M * N, "Bias": 0}


@triton.jit
def _copy_without_mask(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs))


@triton.jit
def _copy_before_start(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK) - 3
    tl.store(Y + offs + 3, tl.load(X + offs, mask=offs < n), mask=offs + 3 < n)


@triton.jit
def _rows_with_wrong_stride(X, Y, n_cols, stride, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    tl.store(Y + tl.program_id(0) * n_cols + cols, tl.load(X + tl.program_id(0) * n_cols + cols, mask=cols < n_cols),
             mask=cols < n_cols)


@triton.jit
def _sum_without_other(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n) * 0 + tl.sum(tl.load(X + offs, mask=offs < n), 0), mask=offs < n)


@interpreter
def test_watch_memory_reports_accesses_out_of_bounds():
    x, y = randn(20), _f(20)
    with pytest.raises(tb.OutOfBounds, match=r"program \(1, 0, 0\) loads X\[20\], 1 element past the last element of X"):
        with tb.watch_memory(X=x, Y=y):
            _copy_without_mask[(2,)](x, y, 20, BLOCK=16)
    with pytest.raises(tb.OutOfBounds, match=r"loads X\[-3\], 3 elements before the first element of X"):
        with tb.watch_memory(X=x, Y=y):
            _copy_before_start[(2,)](x, y, 20, BLOCK=16)
    x2 = randn(4, 9)[:, :6]                              # rows 9 apart, 6 long
    y2 = _f(4, 6)
    with pytest.raises(tb.OutOfBounds, match=r"offset 6 of X = row 0 · stride 9 \+ column 6.*only 6 columns"):
        with tb.watch_memory(X=x2, Y=y2):
            _rows_with_wrong_stride[(4,)](x2, y2, 6, 9, BLOCK=8)


@interpreter
def test_watch_memory_poisons_masked_lanes_without_other():
    x, y = randn(10), _f(10)
    with tb.watch_memory(X=x, Y=y):
        _sum_without_other[(1,)](x, y, 10, BLOCK=16)
    assert y.isnan().all()                                # the sum saw NaN from the 6 lanes without other=


@interpreter
def test_watch_memory_restores_the_interpreter():
    from triton.runtime import interpreter as interp
    builder = interp.interpreter_builder
    with pytest.raises(tb.OutOfBounds):
        with tb.watch_memory(X=randn(4), Y=_f(4)):
            _copy_without_mask[(1,)](randn(4), _f(4), 4, BLOCK=16)
    assert "create_masked_load" not in vars(builder) and "create_masked_store" not in vars(builder)


# ---------------------------------------------------------------- puzzles and their checker

@triton.jit
def _outer_solution(X, Y, Z, M, N, stride_zm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    x = tl.load(X + offs_m, mask=offs_m < M)
    y = tl.load(Y + offs_n, mask=offs_n < N)
    tl.store(Z + offs_m[:, None] * stride_zm + offs_n[None, :], x[:, None] * y[None, :],
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _outer_stride_n(X, Y, Z, M, N, stride_zm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    x = tl.load(X + offs_m, mask=offs_m < M)
    y = tl.load(Y + offs_n, mask=offs_n < N)
    tl.store(Z + offs_m[:, None] * N + offs_n[None, :], x[:, None] * y[None, :],
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _softmax_zero_padded(X, Y, n_cols, stride_x, stride_y, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + row * stride_x + cols, mask=cols < n_cols, other=0.0)
    num = tl.exp(x - tl.max(x, axis=0))
    tl.store(Y + row * stride_y + cols, num / tl.sum(num, axis=0), mask=cols < n_cols)


@triton.jit
def _softmax_unsafe(X, Y, n_cols, stride_x, stride_y, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    num = tl.exp(tl.load(X + row * stride_x + cols, mask=cols < n_cols, other=float("-inf")))
    tl.store(Y + row * stride_y + cols, num / tl.sum(num, axis=0), mask=cols < n_cols)


_MATMUL_TEMPLATE = """
@triton.jit
def kernel(A, B, C, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K_END, BLOCK_K):
        ks = k + offs_k
        a = tl.load(A + offs_m[:, None] * stride_am + ks[None, :] * stride_ak,
                    mask=(offs_m[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(B + ks[:, None] * B_ROW + offs_n[None, :] * B_COL,
                    mask=(ks[:, None] < K) & (offs_n[None, :] < N), other=0.0)
        acc = ACCUMULATE
    tl.store(C + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc,
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
"""


def _matmul_puzzle_kernel(k_end="K", b_row="stride_bk", b_col="stride_bn", accumulate="tl.dot(a, b, acc)"):
    """The puzzle's kernel with one mistake put in (the source is written out: kernels cannot close over
    Python variables)."""
    import tempfile  # noqa: PLC0415 - @triton.jit needs the source in a file to read it back
    src = (_MATMUL_TEMPLATE.replace("K_END", k_end).replace("B_ROW", b_row).replace("B_COL", b_col)
           .replace("ACCUMULATE", accumulate))
    path = Path(tempfile.mkdtemp()) / "puzzle_kernel.py"
    path.write_text("import triton\nimport triton.language as tl\n" + src)
    ns = {"triton": triton, "tl": tl, "__name__": "puzzle_kernel"}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    return ns["kernel"]


@triton.jit
def _online_no_rescale(X, Y, n_cols, stride_x, stride_y, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = float("-inf")
    l = 0.0
    for start in range(0, n_cols, BLOCK):
        x = tl.load(X + row * stride_x + start + cols, mask=start + cols < n_cols, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        l = l + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    for start in range(0, n_cols, BLOCK):
        x = tl.load(X + row * stride_x + start + cols, mask=start + cols < n_cols)
        tl.store(Y + row * stride_y + start + cols, tl.exp(x - m) / l, mask=start + cols < n_cols)


@needs_triton
@pytest.mark.parametrize("puzzle, kernel", [
    ("add", tb._add_kernel), ("outer", _outer_solution), ("softmax", tb._softmax_kernel),
    ("matmul", _matmul_puzzle_kernel()), ("online_softmax", tb._online_softmax_kernel)])
def test_puzzle_solutions_pass(puzzle, kernel, capsys):
    tb.check_kernel("Exercise 6.9", kernel, puzzle)
    assert capsys.readouterr().out.startswith("✓ Exercise 6.9  passed 4 cases")


@interpreter
@pytest.mark.parametrize("puzzle, kernel, match", [
    ("outer", _outer_stride_n, r"raised OutOfBounds: program .* stores offset 5 of Z = row 0 · stride 8 \+ column 5"),
    ("softmax", _softmax_zero_padded, r"Hint: the masked-off lanes were loaded as 0"),
    ("softmax", _softmax_unsafe, r"(?s)for case 3 .*Hint: overflow"),
    ("matmul", _matmul_puzzle_kernel(k_end="K // BLOCK_K * BLOCK_K"), r"Hint: the K loop stopped before the last, partial block"),
    ("matmul", _matmul_puzzle_kernel(b_row="N", b_col="1"), r"(?s)for case 3 .*Hint: B was read as if it were contiguous"),
    ("matmul", _matmul_puzzle_kernel(accumulate="tl.dot(a, b)"), r"Hint: only the last K block is in the result"),
    ("online_softmax", _online_no_rescale, r"Hint: the running sum was not rescaled"),
])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")  # the unsafe softmax overflows on purpose
def test_checker_says_why(puzzle, kernel, match):
    with pytest.raises(ExerciseError, match=match) as e:
        tb.check_kernel("Exercise 6.9", kernel, puzzle)
    assert str(e.value).startswith("✗ Exercise 6.9: for case ")


@interpreter
def test_a_stub_stays_the_stubs_not_implemented_error():
    ns = {"triton": triton, "tl": tl}
    exec("@triton.jit\ndef k(X, Y, Z, n, BLOCK: tl.constexpr):\n    " + stub_line("Exercise 6.1"), ns)
    with pytest.raises(NotImplementedError, match="Exercise 6.1: your code goes here"):
        tb.check_kernel("Exercise 6.1", ns["k"], "add")


def test_every_puzzle_has_cases_a_reference_and_mistakes():
    for name, p in tb.PUZZLES.items():
        cases = p.cases()
        assert len(cases) >= 4, name
        for case in cases:
            assert all(not isinstance(a, torch.Tensor) or a.device.type == "cpu" for a in case)
            assert p.reference(*case).shape == p.reference(*case).shape
            assert isinstance(p.describe(*case), str)
        for why, wrong in p.mistakes:                     # each mistake shows in at least one case
            assert why and any(not torch.allclose(wrong(*c).double().nan_to_num(123.0), p.reference(*c).double(),
                                                  atol=p.atol) for c in cases), (name, why)


# ---------------------------------------------------------------- compiled for an H100, without one

COMPILE = r"""
import warnings
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import course_utils.triton_basics as tb
def compile_(kernel, ptrs, consts, dtype, **options):
    sig = {n: f"*{dtype}" if n in ptrs else ("constexpr" if n in consts else "i32") for n in kernel.arg_names}
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                          options=options)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for dtype in ("fp32", "fp16", "bf16"):
        compile_(tb._add_kernel, {"X", "Y", "Z"}, {"BLOCK": 1024}, dtype)
        compile_(tb._softmax_kernel, {"X", "Y"}, {"BLOCK": 4096}, dtype, num_warps=8)
        compile_(tb._online_softmax_kernel, {"X", "Y"}, {"BLOCK": 2048}, dtype)
        consts = dict(HAS_BIAS=True, ACTIVATION="gelu", DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
                      BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8)
        k = compile_(tb._matmul_kernel, {"A", "B", "C", "Bias"}, consts, dtype, num_warps=8, num_stages=3)
        print(dtype, "wgmma" if "wgmma.mma_async" in k.asm["ptx"] else "no wgmma", sorted(k.asm))
"""


@pytest.mark.skipif(not tb.HAS_TRITON, reason="Triton is not installed")
def test_every_kernel_compiles_for_an_h100_without_one():
    """The interpreter runs Python, not the compiler: compile each kernel (fp32, fp16, bf16) for
    sm_90 in a process without TRITON_INTERPRET; float16/bfloat16 tl.dot must become Hopper's wgmma."""
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines] == [["fp32", "no"], ["fp16", "wgmma"], ["bf16", "wgmma"]], r.stdout
    assert all("'ptx'" in ln and "'ttgir'" in ln for ln in lines)


# ---------------------------------------------------------------- compiled, on a GPU

@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_add_softmax_and_online_softmax(dtype):
    exact = dict(atol=0, rtol=0) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    for shape in ((1,), (17,), (1823, 781), (2**24 + 3,)):
        x, y = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype, seed=1)
        assert_close(add(x, y), x + y, **exact)
    tol = dict(atol=1e-6, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-2)
    for shape in ((1, 1), (3, 1000), (1823, 781), (64, 8192), (33, 8193), (8, 65536)):
        x = randn(*shape, dtype=dtype, scale=10.0)
        ref = torch.softmax(x.float(), 1)
        assert_close(softmax(x).float(), ref, **tol)
        assert_close(online_softmax(x, block=1024).float(), ref, **tol)


def _half_tol(dtype, K):
    return dict(atol=(2e-2 if dtype == torch.bfloat16 else 4e-3) * math.sqrt(K), rtol=2e-2)


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_matmul_half_precision(dtype):
    """Awkward shapes with the largest tuning configuration forced (every mask in use), then one
    autotuned square product (the autotuner compiles and times all of MATMUL_TUNING)."""
    for M, N, K in ((1, 1, 1), (17, 33, 40), (1823, 781, 129)):
        a, b, bias = randn(M, K, dtype=dtype), randn(N, K, dtype=dtype, seed=1).T, randn(N, dtype=dtype, seed=2)
        ref = a.double() @ b.double()
        for bias_, act, want in ((None, None, ref), (bias, "gelu", F.gelu(ref + bias.double()))):
            c = torch.empty(M, N, dtype=dtype, device=DEV)
            tb._matmul_launch(a, b, c, bias_, act, config=tb.MATMUL_TUNING[0])
            assert_close(c.double(), want, **_half_tol(dtype, K))
    a, b = randn(1024, 1024, dtype=dtype), randn(1024, 1024, dtype=dtype, seed=1)
    assert_close(matmul(a, b).double(), a.double() @ b.double(), **_half_tol(dtype, 1024))


@gpu
def test_gpu_float32_matmul_is_exact_not_tf32():
    """float32 inputs use input_precision="ieee": errors of float32 rounding (~1e-6 relative), not
    TF32's (~1e-3)."""
    a, b = randn(512, 2048), randn(2048, 384, seed=1)
    ref = a.double() @ b.double()
    rel = ((matmul(a, b).double() - ref).norm() / ref.norm()).item()
    assert rel < 1e-5, rel


@needs_triton
def test_every_kernel_compiles_for_hopper_without_a_gpu():
    """Lesson 06's four kernels, compiled for sm_90 to a cubin in a process where Triton is not in
    interpreter mode (no GPU needed): code the interpreter accepts but the compiler refuses fails
    here, on a CPU. The tiled matmul's PTX uses Hopper's wgmma."""
    import json
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "_compile_for_hopper.py"), "06"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["kernel"]: r for r in (json.loads(x) for x in done.stdout.splitlines() if x.startswith("{"))}
    assert sorted(rows) == ["add", "matmul_gelu", "online_softmax", "softmax"]
    assert all("cubin" in r["stages"] for r in rows.values()) and rows["matmul_gelu"]["wgmma"]
