"""Benchmark for lesson 06: the Triton kernels of course_utils.triton_basics against PyTorch and cuBLAS.

    python benchmarks/triton_basics.py             # on a GPU: about two minutes on an H200
    python benchmarks/triton_basics.py --quick     # fewer, smaller sizes
    python benchmarks/triton_basics.py --quick --out /tmp/tb   # on a CPU: the interpreter, tiny sizes;
                                                               # tests the script, times nothing useful
    python benchmarks/triton_basics.py --replot assets/06_triton_basics.csv   # redraw the PNG only

What is timed (triton.testing.do_bench, median, on a GPU, after a second of warm-up; time.perf_counter,
median of 3, on a CPU), every result first compared with PyTorch's on the same inputs; the matrix
products are also timed replayed from a CUDA graph (ms_graph: GPU time without the per-call Python
and launch overhead, which our wrapper and the autotuner add):
    add        x + y, float32, n = 2^20 ... 2^28: ours, torch, and a device-to-device copy (the
               achievable bandwidth), in GB/s of compulsory traffic (12 bytes per element; 8 for the copy)
    softmax    rows of 4096 × N float32, N = 256 ... 32768: ours (softmax: one block up to 8192 columns,
               online beyond), our online kernel at every N, torch.softmax, and the op-by-op version of
               Triton's tutorial 02; GB/s of compulsory traffic (8 bytes per element)
    matmul     n × n × n, float16 and bfloat16, n = 512 ... 8192: ours (autotuned) against torch.matmul
               (cuBLAS), in TFLOP/s (2n³ FLOPs)
    linear_gelu GELU(a @ b + bias), float16, 4096³ and an MLP up-projection (8192 tokens, 1024 -> 4096):
               ours fused, our matmul alone (no epilogue), torch's 3 kernels (a @ b + bias, gelu) and
               2 kernels (addmm, gelu); milliseconds
Writes, under --out (default assets/): 06_triton_basics.csv (one row per kernel, method, dtype and
shape, and a first row naming the device) and 06_triton_basics.png, and prints the same table.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_utils import triton_basics as tb  # noqa: E402  (sets TRITON_INTERPRET=1 without a GPU)

FIELDS = ["kernel", "method", "dtype", "shape", "size", "ms", "ms_graph", "gb_per_s", "tflops", "note"]
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# NVIDIA datasheets (SXM parts): dense fp16/bf16 tensor-core TFLOP/s, HBM TB/s
DATASHEET = {"H100": (989.4, 3.35), "H200": (989.4, 4.8)}


def timer(fn):
    """Median milliseconds of fn()."""
    if torch.cuda.is_available():
        from triton.testing import do_bench  # noqa: PLC0415
        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_timer(fn):
    """Median milliseconds of fn() replayed from a CUDA graph: the GPU's time without the Python and
    launch overhead of each call (None on a CPU, or where capture fails)."""
    if not torch.cuda.is_available():
        return None
    try:
        from triton.testing import do_bench_cudagraph  # noqa: PLC0415
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception as e:  # noqa: BLE001 - the plain timing stands alone then
        print(f"  (no CUDA-graph timing: {type(e).__name__}: {e})"[:200])
        return None


def naive_softmax(x):
    """Triton tutorial 02's op-by-op softmax: 5 kernels, reads 5MN + 2M and writes 3MN + 2M elements."""
    x_max = x.max(dim=1)[0]
    z = x - x_max[:, None]
    num = torch.exp(z)
    den = num.sum(dim=1)
    return num / den[:, None]


def agrees(got, ref, atol, rtol):
    err = (got.float() - ref.float()).abs().max().item()
    ok = torch.allclose(got.float(), ref.float(), atol=atol, rtol=rtol)
    return f"{'ok' if ok else 'WRONG'} (max abs err {err:.1e})"


def row(kernel, method, dtype, shape, size, ms, nbytes=None, flops=None, note="", ms_graph=None):
    return {"kernel": kernel, "method": method, "dtype": dtype, "shape": shape, "size": size,
            "ms": f"{ms:.5f}", "ms_graph": f"{ms_graph:.5f}" if ms_graph else "",
            "gb_per_s": f"{nbytes / ms / 1e6:.1f}" if nbytes else "",
            "tflops": f"{flops / ms / 1e9:.2f}" if flops else "", "note": note}


def bench_add(sizes, dev):
    out = []
    for n in sizes:
        x, y = torch.randn(n, device=dev), torch.randn(n, device=dev)
        note = agrees(tb.add(x, y), x + y, 0, 0)
        for method, fn, nbytes in (("ours", lambda: tb.add(x, y), 12 * n), ("torch", lambda: x + y, 12 * n),
                                   ("copy", lambda: x.clone(), 8 * n)):
            out.append(row("add", method, "float32", str(n), n, timer(fn), nbytes=nbytes, flops=n, note=note))
    return out


def bench_softmax(m, widths, dev):
    out = []
    for n in widths:
        x = torch.randn(m, n, device=dev)
        ref = torch.softmax(x, 1)
        block = min(tb.ONLINE_BLOCK, max(16, 1 << (n - 1).bit_length()))
        methods = {"ours": lambda: tb.softmax(x), "online": lambda: tb.online_softmax(x, block=block),
                   "torch": lambda: torch.softmax(x, 1), "naive": lambda: naive_softmax(x)}
        for method, fn in methods.items():
            note = agrees(fn(), ref, 1e-6, 1e-4)
            out.append(row("softmax", method, "float32", f"{m}x{n}", n, timer(fn), nbytes=8 * m * n,
                           flops=5 * m * n, note=note))
    return out


def compiled_info(a, b, cfg):
    """The configuration the autotuner kept, and what its compiled kernel is made of: shared memory
    (pipelined K steps need one buffer each) and the PTX instructions for loads and tensor cores."""
    try:
        c = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype, device=a.device)
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        k = tb._matmul_kernel[(-(-a.shape[0] // bm) * -(-b.shape[1] // bn),)](
            a, b, c, c, a.shape[0], b.shape[1], a.shape[1], *a.stride(), *b.stride(), *c.stride(),
            HAS_BIAS=False, ACTIVATION="none", DOT_PRECISION="tf32", GROUP_M=8, **cfg.kwargs,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        ptx = k.asm["ptx"]
        counts = ", ".join(f"{op} x{ptx.count(op)}" for op in ("wgmma.mma_async", "cp.async.bulk", "cp.async.cg", "ld.global"))
        return (f"{bm}x{bn}x{cfg.kwargs['BLOCK_K']}, {cfg.num_warps} warps, {cfg.num_stages} stages; "
                f"shared {k.metadata.shared} B; {counts}")
    except Exception as e:  # noqa: BLE001 - information only
        return f"{cfg} ({type(e).__name__}: {e})"[:300]


def bench_matmul(sizes, dtypes, dev):
    out = []
    for dtype in dtypes:
        for n in sizes:
            a, b = (torch.randn(n, n, device=dev, dtype=DTYPES[dtype]) for _ in range(2))
            ref = a.float() @ b.float()
            tol = 1e-2 * n**0.5 if dtype != "float32" else 1e-3
            note = agrees(tb.matmul(a, b), ref, tol, 2e-2)
            best = ""
            if tb._MATMUL_TUNER and getattr(tb._MATMUL_TUNER[0], "best_config", None) is not None:
                best = f"; autotuned: {compiled_info(a, b, tb._MATMUL_TUNER[0].best_config)}"
            for method, fn in (("ours", lambda: tb.matmul(a, b)), ("torch", lambda: a @ b)):
                out.append(row("matmul", method, dtype, f"{n}x{n}x{n}", n, timer(fn), flops=2 * n**3,
                               note=note + (best if method == "ours" else ""), ms_graph=graph_timer(fn)))
    return out


def bench_linear_gelu(shapes, dev):
    out = []
    for m, k, n in shapes:
        a = torch.randn(m, k, device=dev, dtype=torch.float16)
        w = torch.randn(k, n, device=dev, dtype=torch.float16) / k**0.5
        bias = torch.randn(n, device=dev, dtype=torch.float16)
        ref = F.gelu(a.float() @ w.float() + bias.float())
        methods = {"fused": lambda: tb.matmul(a, w, bias=bias, activation="gelu"),
                   "ours_matmul_only": lambda: tb.matmul(a, w),
                   "torch_3_kernels": lambda: F.gelu(a @ w + bias),
                   "torch_addmm_gelu": lambda: F.gelu(torch.addmm(bias, a, w))}
        for method, fn in methods.items():
            note = "ok (no epilogue)" if method == "ours_matmul_only" else agrees(fn(), ref, 2e-2, 2e-2)
            out.append(row("linear_gelu", method, "float16", f"{m}x{k}x{n}", m * k * n, timer(fn),
                           flops=2 * m * n * k, note=note, ms_graph=graph_timer(fn)))
    return out


def plot(rows, device, path):
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from course_utils import plotting  # noqa: PLC0415
    plotting.use_style()
    C = plotting.COLORS
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.6))
    sel = lambda k, m, d=None: sorted(((int(r["size"]), r) for r in rows if r["kernel"] == k and r["method"] == m
                                      and (d is None or r["dtype"] == d)), key=lambda t: t[0])
    ax = axes[0, 0]
    for m, c in (("ours", "blue"), ("torch", "orange"), ("copy", "grey")):
        pts = sel("add", m)
        ax.plot([s for s, _ in pts], [float(r["gb_per_s"]) for _, r in pts], "o-", color=C[c],
                label={"ours": "ours (Triton)", "torch": "torch: x + y", "copy": "torch: x.clone()"}[m])
    peak = next((v for k, v in DATASHEET.items() if k in device), None)
    if peak:
        ax.axhline(peak[1] * 1e3, color=C["ink"], ls=":", label=f"datasheet {peak[1]} TB/s")
    ax.set(xscale="log", xlabel="n (float32 elements)", ylabel="GB/s (compulsory bytes)", title="add")
    ax = axes[0, 1]
    for m, c in (("ours", "blue"), ("online", "sky"), ("torch", "orange"), ("naive", "red")):
        pts = sel("softmax", m)
        ax.plot([s for s, _ in pts], [float(r["gb_per_s"]) for _, r in pts], "o-", color=C[c],
                label={"ours": "ours: softmax", "online": "ours: online_softmax", "torch": "torch.softmax",
                       "naive": "op by op (5 kernels)"}[m])
    rows_m = next((r["shape"].split("x")[0] for r in rows if r["kernel"] == "softmax"), "?")
    ax.set(xscale="log", xlabel=f"N (columns; {rows_m} rows, float32)", ylabel="GB/s (compulsory bytes)", title="softmax")
    ax.set_xscale("log", base=2)
    ax = axes[1, 0]
    graph = any(r["ms_graph"] for r in rows if r["kernel"] == "matmul")
    rate = lambda r: 2 * int(r["size"]) ** 3 / float(r["ms_graph"] if graph else r["ms"]) / 1e9
    for d, ls in (("float16", "-"), ("bfloat16", "--")):
        for m, c in (("ours", "blue"), ("torch", "orange")):
            pts = sel("matmul", m, d)
            ax.plot([s for s, _ in pts], [rate(r) for _, r in pts], "o" + ls, color=C[c],
                    label=f"{'ours' if m == 'ours' else 'cuBLAS'} {d}")
    if graph:   # what one Python call costs at small sizes: launch overhead on top of the GPU time
        pts = sel("matmul", "ours", "float16")
        ax.plot([s for s, _ in pts], [float(r["tflops"]) for _, r in pts], "x:", color=C["grey"],
                label="ours float16, per call (Python + launch)")
    if peak:
        ax.axhline(peak[0], color=C["ink"], ls=":", label=f"datasheet {peak[0]:.0f} TFLOP/s (dense)")
    ax.set(xlabel="n (n × n × n)", ylabel="TFLOP/s", ylim=(0, 1450),
           title="matmul, GPU time (CUDA-graph replay)" if graph else "matmul")
    ax.set_xscale("log", base=2)
    ax = axes[1, 1]
    shapes = sorted({r["shape"] for r in rows if r["kernel"] == "linear_gelu"})
    methods = (("fused", "ours, fused", "blue"), ("ours_matmul_only", "ours, matmul alone", "sky"),
               ("torch_addmm_gelu", "torch: addmm, gelu", "orange"), ("torch_3_kernels", "torch: a @ b + bias, gelu", "red"))
    for i, (m, label, c) in enumerate(methods):
        vals = [float(next(r["ms"] for r in rows if r["kernel"] == "linear_gelu" and r["method"] == m and r["shape"] == s))
                for s in shapes]
        ax.bar([j + 0.2 * (i - 1.5) for j in range(len(shapes))], vals, width=0.2, color=C[c], label=label)
    ax.set_xticks(range(len(shapes)), [s.replace("x", " × ") for s in shapes])
    ax.set(ylabel="ms (float16)", title="GELU(a @ b + bias): M × K × N")
    for ax in axes.flat:
        ax.legend(fontsize=9, loc="upper left" if ax is axes[1, 0] else "best", ncol=2 if ax is axes[1, 0] else 1)
    fig.suptitle(device, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, smaller sizes")
    ap.add_argument("--out", default=str(ROOT / "assets"), help="folder for the CSV and PNG")
    ap.add_argument("--replot", metavar="CSV", help="only redraw the PNG (into --out) from a CSV this script wrote")
    args = ap.parse_args(argv)
    if args.replot:
        with open(args.replot) as fh:
            rows = list(csv.DictReader(fh))
        device = next(r["note"] for r in rows if r["kernel"] == "device")
        plot([r for r in rows if r["kernel"] != "device"], device, Path(args.out) / "06_triton_basics.png")
        print(f"redrew {Path(args.out) / '06_triton_basics.png'} from {args.replot}")
        return 0
    gpu = torch.cuda.is_available()
    dev = "cuda" if gpu else "cpu"
    if not gpu and not args.quick:
        raise SystemExit("triton_basics.py: without a GPU only --quick runs (the interpreter is slow)")
    import triton  # noqa: PLC0415
    name = torch.cuda.get_device_name(0) if gpu else "CPU (Triton interpreter)"
    device = f"{name}, torch {torch.__version__.split('+')[0]}, Triton {triton.__version__}"
    print(device)
    t0 = time.time()
    if gpu:   # clocks up before the first timing: a second of large matrix products
        w = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
        for _ in range(400):
            w @ w
        torch.cuda.synchronize()
    if gpu and not args.quick:
        rows = (bench_add([2**k for k in (20, 22, 24, 26, 28)], dev)
                + bench_softmax(4096, [2**k for k in range(8, 16)], dev)
                + bench_matmul([512, 1024, 2048, 4096, 8192], ["float16", "bfloat16"], dev)
                + bench_linear_gelu([(4096, 4096, 4096), (8192, 1024, 4096)], dev))
    elif gpu:
        rows = (bench_add([2**20, 2**24], dev) + bench_softmax(1024, [256, 4096, 16384], dev)
                + bench_matmul([1024, 4096], ["float16"], dev) + bench_linear_gelu([(2048, 1024, 4096)], dev))
    else:
        rows = (bench_add([2**10, 2**12], dev) + bench_softmax(8, [64, 256], dev)
                + bench_matmul([32, 64], ["float16"], dev) + bench_linear_gelu([(64, 32, 64)], dev))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "06_triton_basics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerow({"kernel": "device", "method": "", "dtype": "", "shape": "", "size": "", "ms": "",
                    "gb_per_s": "", "tflops": "", "note": device})
        w.writerows(rows)
    plot(rows, device, out / "06_triton_basics.png")
    print(f"{'kernel':<12} {'method':<17} {'dtype':<9} {'shape':<16} {'ms':>9} {'ms graph':>9} {'GB/s':>8} "
          f"{'TFLOP/s':>8}  note")
    for r in rows:
        print(f"{r['kernel']:<12} {r['method']:<17} {r['dtype']:<9} {r['shape']:<16} {float(r['ms']):9.4f} "
              f"{r['ms_graph']:>9} {r['gb_per_s']:>8} {r['tflops']:>8}  {r['note']}")
    print(f"wrote {out / '06_triton_basics.csv'} and .png in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
