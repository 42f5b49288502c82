"""Roofline benchmark for lesson 08: measure a GPU's two roofline numbers, the bf16 matmul rate and
the copy bandwidth, and place measured kernels of a language model under them.

    python benchmarks/roofline.py                 # on a GPU: about a minute on an H100/H200
    python benchmarks/roofline.py --quick         # smaller sizes, to try it out
    python benchmarks/roofline.py --device cpu --quick --out /tmp/roofline   # the script itself, on a CPU

Kernels, in --dtype (default bf16): square GEMMs n³; decode GEMMs (B × 8192)·(8192 × 8192) for batch
sizes B from 1 up; elementwise add (1 FLOP per element) and addcmul (2); attention through
F.scaled_dot_product_attention, prefill (T × T) and decode (one query over T cached keys). FLOPs come
from torch's FlopCounterMode (2 per multiply-add; elementwise ops by their definition); bytes are
the compulsory traffic: every input read once and the output written once. The compute roof is the
best square-GEMM rate, the memory roof a device-to-device copy (bytes read + written). Timing: CUDA
events (or perf_counter on a CPU), median over repetitions after a warm-up.

Writes under --out (default assets/):
    08_roofline.csv   one row per kernel and the two peaks, with the device's name
    08_roofline.png   the measured roof, the datasheet roof (H100 SXM, H200), the measured points
and prints the same table. The numbers belong in benchmarks/NOTES.md, with the machine and command.
"""
from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # course_utils, without installing the package

from course_utils.flash_attention import PEAKS  # noqa: E402 - lesson 07's datasheet table (course_utils before torch/triton)
import torch  # noqa: E402
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def datasheet_peaks(device_name: str):
    """(FLOP/s, bytes/s) from the datasheet for an H100 SXM or an H200, else None."""
    if "H200" in device_name:
        return PEAKS["H200 SXM"]
    if "H100" in device_name and "PCIe" not in device_name:
        return PEAKS["H100 SXM"]
    return None


def timer(fn, device: torch.device, budget_s: float = 0.25, min_reps: int = 5, max_reps: int = 200) -> float:
    """Median seconds of fn() after a warm-up; as many repetitions as fit in about budget_s."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    reps = max(min_reps, min(max_reps, int(budget_s / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def attention_flops(fn, q, k) -> int:
    """4·B·H·Tq·Tk·d (QKᵀ and PV, non-causal), checked against FlopCounterMode where it counts the
    backend (it registers the CUDA flash, memory-efficient and cuDNN kernels, not every CPU one)."""
    expected = 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
    with FlopCounterMode(display=False) as counter:
        fn()
    counted = counter.get_total_flops()
    if counted and counted != expected:
        raise RuntimeError(f"attention FLOPs: FlopCounterMode counts {counted}, the formula {expected}")
    return expected


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def kernels(device: torch.device, dtype: torch.dtype, quick: bool):
    """(name, kind, fn, flops, bytes) for every kernel; tensors are made lazily, one kernel at a time."""
    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    gemm_sizes = (256, 512, 1024, 2048) if quick else (256, 512, 1024, 2048, 4096, 8192, 16384)
    for n in gemm_sizes:
        def make(n=n):
            a, b = randn(n, n), randn(n, n)
            return lambda: a @ b, 2 * n ** 3, nbytes(a, b, a)
        yield f"GEMM {n}^3", "gemm", make
    width = 2048 if quick else 8192
    for batch in (1, 8, 64, 256, 1024) if not quick else (1, 8, 64):
        def make(batch=batch):
            x, w = randn(batch, width), randn(width, width)
            return lambda: x @ w, 2 * batch * width * width, nbytes(x, w, x)
        yield f"decode GEMM B={batch}, {width}^2", "decode", make
    numel = 2 ** 22 if quick else 2 ** 28
    def make_add():
        x, y = randn(numel), randn(numel)
        return lambda: x + y, numel, 3 * nbytes(x)
    yield f"add, {numel:,} elements", "elementwise", make_add
    def make_addcmul():
        x, y, z = randn(numel), randn(numel), randn(numel)
        return lambda: torch.addcmul(x, y, z), 2 * numel, 4 * nbytes(x)
    yield f"addcmul, {numel:,} elements", "elementwise", make_addcmul
    T, d, heads = (1024, 64, 8) if quick else (4096, 128, 32)
    def make_prefill():
        q, k, v = randn(1, heads, T, d), randn(1, heads, T, d), randn(1, heads, T, d)
        fn = lambda: F.scaled_dot_product_attention(q, k, v)
        return fn, attention_flops(fn, q, k), nbytes(q, k, v, q)
    yield f"attention prefill T={T}, d={d}", "attention", make_prefill
    def make_decode():
        batch = 8
        q, k, v = randn(batch, heads, 1, d), randn(batch, heads, T, d), randn(batch, heads, T, d)
        fn = lambda: F.scaled_dot_product_attention(q, k, v)
        return fn, attention_flops(fn, q, k), nbytes(q, k, v, q)
    yield f"attention decode B=8, {T} keys", "attention", make_decode


def measure_peaks(device, dtype, quick):
    """The best square-GEMM rate (FLOP/s) and the copy bandwidth (bytes/s)."""
    best = 0.0
    for n in (1024, 2048) if quick else (4096, 8192, 16384):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = max(best, 2 * n ** 3 / timer(lambda: a @ b, device))
        del a, b
    numel = 2 ** 23 if quick else 2 ** 29                                 # 1 GiB of bf16 on a GPU
    src = torch.randn(numel, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    bandwidth = 2 * nbytes(src) / timer(lambda: dst.copy_(src), device)
    return best, bandwidth


def plot(rows, peak, bandwidth, sheet, device_name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5))
    intensities = [r["intensity"] for r in rows]
    lo, hi = min(intensities) / 3, max(max(intensities) * 3, 3 * peak / bandwidth)
    xs = [lo * (hi / lo) ** (i / 199) for i in range(200)]
    ax.loglog(xs, [min(peak, x * bandwidth) / 1e12 for x in xs], color="#222222",
              label=f"measured roof: {peak / 1e12:.0f} TFLOP/s, {bandwidth / 1e12:.2f} TB/s")
    if sheet:
        ax.loglog(xs, [min(sheet[0], x * sheet[1]) / 1e12 for x in xs], color="#999999", ls="--",
                  label=f"datasheet: {sheet[0] / 1e12:.0f} TFLOP/s, {sheet[1] / 1e12:.2f} TB/s")
    colors = {"gemm": "#0072B2", "decode": "#E69F00", "elementwise": "#009E73", "attention": "#D55E00"}
    for kind, color in colors.items():
        pts = [r for r in rows if r["kind"] == kind]
        ax.plot([r["intensity"] for r in pts], [r["tflops"] for r in pts], "o", color=color, ms=7, label=kind)
        for r in pts:  # points near the compute roof crowd together: the colours name those
            if r["tflops"] * 1e12 < 0.4 * peak:
                ax.annotate(r["kernel"].split(",")[0], (r["intensity"], r["tflops"]), fontsize=9,
                            xytext=(4, -10), textcoords="offset points")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)", fontsize=10)
    ax.set_ylabel("TFLOP/s", fontsize=10)
    ax.set_title(f"Roofline measured on {device_name}", fontsize=11)
    ax.tick_params(labelsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def replot(path: Path, out: Path) -> int:
    """Draw 08_roofline.png again from a committed CSV (no GPU needed)."""
    with open(path) as f:
        table = list(csv.DictReader(f))
    num = ("flops", "bytes", "intensity", "seconds", "tflops", "gbps", "roof_tflops", "datasheet_tflops")
    rows = [{k: (float(v) if k in num else v) for k, v in r.items()} for r in table]
    peak = next(r for r in rows if r["kernel"].startswith("peak matmul"))["tflops"] * 1e12
    bandwidth = next(r for r in rows if r["kernel"].startswith("copy bandwidth"))["gbps"] * 1e9
    name = rows[0]["device"]
    plot([r for r in rows if r["kind"] != "peak"], peak, bandwidth, datasheet_peaks(name), name,
         out / "08_roofline.png")
    print(f"redrew {out / '08_roofline.png'} from {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cuda (default when present) or cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--quick", action="store_true", help="small sizes: seconds, not a minute")
    ap.add_argument("--out", default=str(ROOT / "assets"), help="folder for 08_roofline.csv and .png")
    ap.add_argument("--replot", metavar="CSV", help="redraw the .png from a CSV this script wrote; measure nothing")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(Path(args.replot), Path(args.out))
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but torch sees no CUDA GPU; pass --device cpu to try the script")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    torch.manual_seed(0)
    peak, bandwidth = measure_peaks(device, dtype, args.quick)
    sheet = datasheet_peaks(name) if device.type == "cuda" else None
    rows = []
    for kernel, kind, make in kernels(device, dtype, args.quick):
        fn, flops, moved = make()
        seconds = timer(fn, device)
        intensity = flops / moved
        rows.append({"device": name, "kernel": kernel, "kind": kind, "flops": flops, "bytes": moved,
                     "intensity": intensity, "seconds": seconds, "tflops": flops / seconds / 1e12,
                     "gbps": moved / seconds / 1e9,
                     "roof_tflops": min(peak, intensity * bandwidth) / 1e12,
                     "datasheet_tflops": min(sheet[0], intensity * sheet[1]) / 1e12 if sheet else math.nan})
        del fn
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peaks = [{"device": name, "kernel": "peak matmul (best square GEMM)", "kind": "peak", "flops": 0, "bytes": 0,
              "intensity": math.inf, "seconds": 0.0, "tflops": peak / 1e12, "gbps": math.nan,
              "roof_tflops": peak / 1e12, "datasheet_tflops": sheet[0] / 1e12 if sheet else math.nan},
             {"device": name, "kernel": "copy bandwidth (read + write)", "kind": "peak", "flops": 0, "bytes": 0,
              "intensity": 0.0, "seconds": 0.0, "tflops": math.nan, "gbps": bandwidth / 1e9,
              "roof_tflops": math.nan, "datasheet_tflops": math.nan}]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "08_roofline.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in peaks + rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    plot(rows, peak, bandwidth, sheet, name, out / "08_roofline.png")
    print(f"{name}, {args.dtype}: matmul peak {peak / 1e12:.1f} TFLOP/s, copy {bandwidth / 1e9:.0f} GB/s, "
          f"ridge {peak / bandwidth:.0f} FLOP/B" + (f" (datasheet: {sheet[0] / 1e12:.0f} TFLOP/s, "
                                                      f"{sheet[1] / 1e12:.2f} TB/s)" if sheet else ""))
    print(f"{'kernel':34s} {'FLOP/B':>9s} {'TFLOP/s':>9s} {'GB/s':>9s} {'roof':>9s} {'% of roof':>9s}")
    for r in rows:
        print(f"{r['kernel']:34s} {r['intensity']:9.2f} {r['tflops']:9.2f} {r['gbps']:9.0f} "
              f"{r['roof_tflops']:9.2f} {r['tflops'] / r['roof_tflops']:9.0%}")
    print(f"wrote {out / '08_roofline.csv'} and {out / '08_roofline.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
