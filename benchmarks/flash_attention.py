"""FlashAttention benchmark for lesson 07: our Triton kernel against naive PyTorch attention and
every backend of F.scaled_dot_product_attention the GPU offers, in one run.

    python benchmarks/flash_attention.py            # the full run (about 6 minutes on an H100)
    python benchmarks/flash_attention.py --quick    # a few shapes, to try it out
    python benchmarks/flash_attention.py --sweep    # time each tuning candidate (course_utils TUNING)
    python benchmarks/flash_attention.py --runs 3   # 3 passes of a small grid, median with p20/p80,
                                                    # torch.compile'd naive attention as a baseline and
                                                    # ours with the pointer kernels forced (no TMA)

Setting of the FlashAttention-2 paper (Dao, 2023, §4.1): batch × T = 16k tokens, hidden 2048, so
H = 2048 / d heads; T from 512 to 16384; bf16 and fp16; d = 64 and 128; causal and not. FLOPs are
4·B·H·T²·d for the forward pass, halved when causal; the backward pass counts 2.5× the forward.
Every result is checked against SDPA's memory-efficient kernel on float32 copies of the inputs
before it is timed (triton.testing.do_bench, median). Writes, under --out (default assets/):
    07_flash_attention_tflops.csv / .png   speed of every method, shape and pass
    07_flash_attention_memory.csv / .png   peak memory against T (B = 1, H = 16, d = 64)
and prints a summary table, the CS336 leaderboard setting and the configs the autotuner chose.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from course_utils import flash_attention as fa  # noqa: E402

TOKENS, HIDDEN = 16384, 2048
SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)


def naive_attention(q, k, v, causal):
    """Standard attention as written in most model code: S and P materialised, softmax in float32."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5                  # (B, H, T, T)
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def sdpa(backend):
    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


METHODS = {
    "naive": naive_attention,
    "sdpa_flash": sdpa(SDPBackend.FLASH_ATTENTION),          # FlashAttention-2 inside PyTorch
    "sdpa_cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
    "sdpa_efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),  # xFormers' memory-efficient kernel
    "ours": lambda q, k, v, causal: fa.flash_attention(q, k, v, causal=causal),
}


def flops(B, H, T, d, causal, mode):
    f = 4 * B * H * T * T * d / (2 if causal else 1)
    return f * (3.5 if mode == "fwd_bwd" else 1.0)                      # backward = 2.5 × forward


def inputs(B, H, T, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, T, d, device="cuda", dtype=dtype, generator=g) for _ in range(4))
    return [t.requires_grad_() for t in (q, k, v)], do


def rel_err(x, ref):
    return ((x.float() - ref).norm() / ref.norm()).item()


def reference(q, k, v, do, causal):
    """Output and gradients from SDPA's memory-efficient kernel on float32 copies (independent of
    both FlashAttention implementations; O(T) memory, so it reaches T = 16384)."""
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        o = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
    o.backward(do.float())
    return o.detach(), [t.grad for t in (q32, k32, v32)]


def free():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def measure(name, fn, q, k, v, do, causal, ref, tol):
    """Check one method against the reference, then time forward and forward+backward and read its
    peak memory. Returns a dict; 'status' is ok, unsupported, oom or WRONG."""
    row = {"method": name}
    try:
        fn(q, k, v, causal).backward(do)  # warm-up: compilation and autotuning stay out of the numbers
        for t in (q, k, v):
            t.grad = None
        free()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        o = fn(q, k, v, causal)
        torch.cuda.synchronize()
        row["peak_fwd_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        o.backward(do)
        torch.cuda.synchronize()
        row["peak_fwd_bwd_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        errs = [rel_err(o, ref[0])] + [rel_err(t.grad, g) for t, g in zip((q, k, v), ref[1])]
        row["err_out"], row["err_grad"] = errs[0], max(errs[1:])
        del o
        if not all(e <= tol for e in errs) or not all(math.isfinite(e) for e in errs):
            row["status"] = "WRONG"
            return row
        row["ms_fwd"] = do_bench(lambda: fn(q, k, v, causal), warmup=10, rep=50, return_mode="median")

        def fwd_bwd():
            fn(q, k, v, causal).backward(do)
        row["ms_fwd_bwd"] = do_bench(fwd_bwd, warmup=10, rep=50, grad_to_none=[q, k, v], return_mode="median")
        row["status"] = "ok"
    except torch.OutOfMemoryError:
        row["status"] = "oom"
    except RuntimeError as e:  # SDPA: "No available kernel" for a backend that does not apply
        if "out of memory" in str(e):
            row["status"] = "oom"
        elif "No available kernel" in str(e) or "not supported" in str(e).lower():
            row["status"] = "unsupported"
        else:
            raise
    finally:
        for t in (q, k, v):
            t.grad = None
        free()
    return row


def device_ceilings():
    """Measured bf16 matmul rate and device-to-device copy bandwidth (the roofline's two numbers)."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, return_mode="median")
    x = torch.randn(2**28, device="cuda")                                # 1 GiB of float32
    y = torch.empty_like(x)
    ms_copy = do_bench(lambda: y.copy_(x), return_mode="median")
    return 2 * 8192**3 / ms / 1e9, 2 * x.nbytes / ms_copy / 1e6           # TFLOP/s, GB/s


def main_sweep(args):
    configs = {
        "fwd": [(128, 64, 4, 3), (128, 64, 4, 4), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2),
                (128, 32, 4, 4), (64, 64, 4, 3), (64, 64, 4, 4), (128, 128, 4, 3), (64, 32, 4, 4)],
        "dkdv": [(32, 128, 4, 3), (32, 128, 8, 3), (64, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3),
                 (64, 64, 4, 3), (16, 128, 4, 3), (32, 128, 4, 2), (64, 128, 4, 3)],
        "dq": [(128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3),
               (64, 32, 4, 3), (128, 64, 4, 3), (128, 32, 4, 2), (64, 32, 4, 4)],
    }
    rows = []
    for d in (64, 128):
        for causal in (False, True):
            for T in args.sweep_T:
                B, H = TOKENS // T, HIDDEN // d
                (q, k, v), do = inputs(B, H, T, d, torch.bfloat16)
                q, k, v = q.detach(), k.detach(), v.detach()
                o_ref, g_ref = reference(q, k, v, do, causal)
                o, lse2 = fa._flash_forward(q, k, v, causal, d ** -0.5)
                f = flops(B, H, T, d, causal, "fwd")
                for kind in ("fwd", "dkdv", "dq"):
                    for cfg in configs[kind]:
                        try:
                            if kind == "fwd":
                                run = lambda: fa._flash_forward(q, k, v, causal, d ** -0.5, config=cfg)
                                got = [run()[0]]
                                want = [o_ref]
                            else:
                                cf = (cfg, None) if kind == "dkdv" else (None, cfg)
                                run = lambda: fa._flash_backward(q, k, v, o, lse2, do, causal, d ** -0.5, configs=cf)
                                dq, dk, dv = run()
                                got, want = ((dk, dv), g_ref[1:]) if kind == "dkdv" else ((dq,), g_ref[:1])
                            err = max(rel_err(g, w) for g, w in zip(got, want))
                            ms = do_bench(run, warmup=10, rep=50, return_mode="median")
                            status = "ok" if err < 2e-2 else "WRONG"
                        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
                            ms, err, status = float("nan"), float("nan"), type(e).__name__
                        rows.append(dict(kernel=kind, d=d, causal=causal, T=T, config=str(cfg), ms=ms,
                                         err=err, status=status))
                        print(f"{kind:5s} d={d:3d} causal={causal!s:5s} T={T:5d} {str(cfg):18s} "
                              f"{ms:8.3f} ms  err {err:.1e}  {status}"
                              + (f"  fwd {f / ms / 1e9:6.1f} TFLOP/s" if kind == "fwd" and status == "ok" else ""),
                              flush=True)
                for name in ("sdpa_flash", "sdpa_cudnn"):
                    try:
                        ms = do_bench(lambda: METHODS[name](q, k, v, causal), warmup=10, rep=50, return_mode="median")
                        print(f"  {name} fwd {ms:.3f} ms = {f / ms / 1e9:.1f} TFLOP/s", flush=True)
                    except RuntimeError as e:
                        print(f"  {name}: {str(e)[:80]}")
                del q, k, v, do, o, lse2, o_ref, g_ref
                free()
    path = Path(args.out) / "07_flash_attention_sweep.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("wrote", path)


def tuned_configs(d, T, causal, dtype):
    """The configs the autotuner kept for this shape, as 'fwd 128x64 w4 s3; dkdv ...; dq ...'."""
    out = []
    for name in ("fwd", "dkdv", "dq", "dkdv_tma", "dq_tma"):
        tuner = fa._TUNERS.get((name, max(d, 64)))
        for key, c in (tuner.cache.items() if tuner else ()):
            if key[0] == T and key[1] == T and key[2] == causal and str(dtype) in key:  # N_Q, N_KV, CAUSAL, d
                out.append(f"{name} {c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']} w{c.num_warps} s{c.num_stages}")
    return "; ".join(out)


def main_speed(args):
    rows = []
    for dtype in args.dtypes:
        tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
        for d in (64, 128):
            for causal in (False, True):
                for T in args.seqlens:
                    B, H = TOKENS // T, HIDDEN // d
                    (q, k, v), do = inputs(B, H, T, d, dtype)
                    ref = reference(q, k, v, do, causal)
                    for name, fn in METHODS.items():
                        r = measure(name, fn, q, k, v, do, causal, ref, tol)
                        if name == "ours":
                            r["tuned"] = tuned_configs(d, T, causal, dtype)
                        r.update(dtype=str(dtype).replace("torch.", ""), d=d, causal=causal, T=T, B=B, H=H)
                        for mode in ("fwd", "fwd_bwd"):
                            ms = r.get(f"ms_{mode}")
                            r[f"tflops_{mode}"] = flops(B, H, T, d, causal, mode) / ms / 1e9 if ms else None
                        rows.append(r)
                        print(f"{r['dtype']:8s} d={d:3d} causal={causal!s:5s} T={T:5d} {name:15s} "
                              f"{r['status']:11s} fwd {r['tflops_fwd'] or 0:6.1f}  fwd+bwd "
                              f"{r['tflops_fwd_bwd'] or 0:6.1f} TFLOP/s  peak {r.get('peak_fwd_bwd_mib', 0):8.0f} MiB"
                              f"  err {r.get('err_out', float('nan')):.1e}/{r.get('err_grad', float('nan')):.1e}",
                              flush=True)
                    del q, k, v, do, ref
                    free()
                    write_csv(rows, Path(args.out) / "07_flash_attention_tflops.csv", quiet=True)  # so far
    return rows


def main_memory(args):
    """Peak memory of one forward pass (beyond the inputs) against T at B = 1, H = 16, d = 64."""
    rows = []
    for T in args.memory_T:
        (q, k, v), do = inputs(1, 16, T, 64, torch.bfloat16)
        for name in ("naive", "sdpa_flash", "ours"):
            try:
                with torch.no_grad():
                    METHODS[name](q, k, v, False)  # warm-up (autotuning allocates buffers of its own)
                free()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                with torch.no_grad():
                    o = METHODS[name](q, k, v, False)
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                del o
            except torch.OutOfMemoryError:
                peak = float("nan")
            rows.append(dict(method=name, T=T, peak_fwd_mib=peak))
            print(f"memory T={T:6d} {name:12s} {peak:10.1f} MiB", flush=True)
        del q, k, v, do
        free()
    return rows


def cs336_row():
    """Stanford CS336 (2025) leaderboard setting: H100, B = 1, T = 16384, 16 heads, d = 64, bf16,
    causal, forward+backward with loss = o.sum(), timed by triton.testing.do_bench (its mean)."""
    (q, k, v), _ = inputs(1, 16, 16384, 64, torch.bfloat16)
    out = {}
    for name in ("ours", "sdpa_flash", "sdpa_cudnn"):
        def step():
            METHODS[name](q, k, v, True).sum().backward()
        try:
            out[name] = do_bench(step, rep=2000, warmup=500, grad_to_none=[q, k, v])
        except RuntimeError as e:
            out[name] = float("nan")
            print(name, str(e)[:80])
    return out


def write_csv(rows, path, quiet=False):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    if not quiet:
        print("wrote", path)


def plot(rows, mem_rows, out, gpu):
    from course_utils import plotting  # noqa: PLC0415
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    plotting.use_style()
    colors = {"naive": "grey", "sdpa_flash": "orange", "sdpa_cudnn": "purple",
              "sdpa_efficient": "sky", "ours": "blue"}
    labels = {"naive": "naive PyTorch", "sdpa_flash": "SDPA FlashAttention-2", "sdpa_cudnn": "SDPA cuDNN",
              "sdpa_efficient": "SDPA mem-efficient", "ours": "ours (Triton)"}
    panels = [(d, c) for d in (64, 128) for c in (False, True)]
    fig, axes = plotting.figure(2, 4, width=15, height=6.4, sharex=True)
    for col, (d, causal) in enumerate(panels):
        for row, mode in enumerate(("fwd", "fwd_bwd")):
            ax = axes[row, col]
            for m in METHODS:
                pts = [(r["T"], r[f"tflops_{mode}"]) for r in rows if r["method"] == m and r["d"] == d
                       and r["causal"] == causal and r["dtype"] == "bfloat16" and r[f"tflops_{mode}"]]
                if pts:
                    ax.plot(*zip(*pts), "o-", ms=3, color=plotting.COLORS[colors[m]], label=labels[m],
                            lw=2.2 if m == "ours" else 1.2)
            ax.set_xscale("log", base=2)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{'forward' if mode == 'fwd' else 'forward + backward'}, d = {d}, "
                         f"{'causal' if causal else 'not causal'}", fontsize=9)
            if col == 0:
                ax.set_ylabel("TFLOP/s")
            if row == 1:
                ax.set_xlabel("sequence length T")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Attention speed on {gpu}, bf16, B·T = 16k tokens, hidden 2048")
    fig.tight_layout()
    fig.savefig(Path(out) / "07_flash_attention_tflops.png")
    plot_memory(mem_rows, out, gpu)


def plot_memory(mem_rows, out, gpu):
    from course_utils import plotting  # noqa: PLC0415
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")

    plotting.use_style()
    colors = {"naive": "grey", "sdpa_flash": "orange", "ours": "blue"}
    labels = {"naive": "naive PyTorch", "sdpa_flash": "SDPA FlashAttention-2", "ours": "ours (Triton)"}
    fig, ax = plotting.figure(width=6, height=3.4)
    for m, ls in (("naive", "o-"), ("sdpa_flash", "s-"), ("ours", "o--")):
        pts = [(r["T"], r["peak_fwd_mib"]) for r in mem_rows if r["method"] == m and r["peak_fwd_mib"] == r["peak_fwd_mib"]]
        oom = [r["T"] for r in mem_rows if r["method"] == m and r["peak_fwd_mib"] != r["peak_fwd_mib"]]
        if pts:
            ax.plot(*zip(*pts), ls, color=plotting.COLORS[colors[m]], ms=4,
                    label=labels[m] + (f" (out of memory at T = {oom[0]})" if oom else ""))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="sequence length T", ylabel="peak extra memory (MiB)",
           title=f"Forward-pass memory, B = 1, H = 16, d = 64, bf16\n{gpu}")
    ax.legend(fontsize=8)
    fig.savefig(Path(out) / "07_flash_attention_memory.png")


def summary(rows):
    print("\nbf16, T >= 2048: ours / SDPA FlashAttention-2 (and / cuDNN)")
    print(f"{'d':>4} {'causal':>6} {'T':>6} {'fwd':>12} {'fwd+bwd':>12}")
    by = {(r["dtype"], r["d"], r["causal"], r["T"], r["method"]): r for r in rows if "tflops_fwd" in r}
    for (dt, d, c, T, m), r in sorted(by.items()):
        if dt != "bfloat16" or m != "ours" or T < 2048:
            continue
        f, cu = by.get((dt, d, c, T, "sdpa_flash"), {}), by.get((dt, d, c, T, "sdpa_cudnn"), {})
        ratio = lambda a, b, k: (a.get(k) or float("nan")) / (b.get(k) or float("nan"))
        print(f"{d:>4} {c!s:>6} {T:>6} {ratio(r, f, 'tflops_fwd'):5.2f} ({ratio(r, cu, 'tflops_fwd'):4.2f})"
              f" {ratio(r, f, 'tflops_fwd_bwd'):5.2f} ({ratio(r, cu, 'tflops_fwd_bwd'):4.2f})")


_compiled_naive = None


def naive_compiled(q, k, v, causal):
    """torch.compile of naive_attention (dynamic shapes: one compile per dtype, d and mask, not per T)."""
    global _compiled_naive
    if _compiled_naive is None:
        _compiled_naive = torch.compile(naive_attention, dynamic=True)
    return _compiled_naive(q, k, v, causal)


def spread_time(fn, grad_to_none=None, min_iters=30, min_ms=100):
    """Median, p20 and p80 (ms) over at least min_iters timed calls (triton's do_bench with the L2
    flushed between calls; rep chosen from a first estimate so that the count is >= min_iters)."""
    est = do_bench(fn, warmup=5, rep=20, grad_to_none=grad_to_none, return_mode="median")
    rep = max(min_ms, 1.2 * min_iters * est)
    times = do_bench(fn, warmup=10, rep=rep, grad_to_none=grad_to_none, return_mode="all")
    t = torch.tensor(times)
    return t.median().item(), t.quantile(0.2).item(), t.quantile(0.8).item(), len(times)


RUN_SHAPES = [(d, c, T) for d in (64, 128) for c in (False, True) for T in (2048, 8192)]


def ours_pointers(q, k, v, causal):
    """Lesson 07's op with its pointer kernels forced in both passes (the taught versions). Timed next to
    "ours" in every --runs pass, it measures what section 9's TMA fast path changes, in the same process."""
    return fa._FlashAttention.apply(q, k, v, causal, q.shape[-1] ** -0.5, False)[0]


RUN_METHODS = ("ours", "ours_pointers", "sdpa_cudnn", "sdpa_flash", "naive_compiled")


def main_runs(args):
    """--runs N: N full passes over RUN_SHAPES (bf16, 16k tokens, H = 2048/d) and RUN_METHODS, each
    point timed as median with p20/p80 over >= 30 calls, plus the CS336 row; one CSV row per
    (run, shape, method, pass). Autotuning happens in the check before run 0 (the shapes tuned on
    are the shapes reported)."""
    methods = dict(METHODS, naive_compiled=naive_compiled, ours_pointers=ours_pointers)
    rows, t0 = [], time.time()
    for run in range(args.runs):
        for d, causal, T in RUN_SHAPES + [(64, True, 16384)]:
            cs336 = T == 16384
            B, H = (1, 16) if cs336 else (TOKENS // T, HIDDEN // d)
            (q, k, v), do = inputs(B, H, T, d, torch.bfloat16, seed=run)
            ref = reference(q, k, v, do, causal) if run == 0 else None
            for order, name in enumerate(args.methods):
                if cs336 and name == "naive_compiled":
                    continue
                fn = methods[name]
                row = dict(run=run, dtype="bfloat16", d=d, causal=causal, T=T, B=B, H=H, method=name, order=order,
                           setting="cs336" if cs336 else "fa2_paper")
                try:
                    o = fn(q, k, v, causal)
                    o.backward(do)
                    if ref is not None:
                        errs = [rel_err(o, ref[0])] + [rel_err(t.grad, g) for t, g in zip((q, k, v), ref[1])]
                        row["err"] = max(errs)
                        if not max(errs) <= 2e-2:
                            row["status"] = "WRONG"
                            rows.append(row)
                            continue
                    del o
                    for t in (q, k, v):
                        t.grad = None
                    for mode, f in (("fwd", lambda: fn(q, k, v, causal)),
                                    ("fwd_bwd", lambda: fn(q, k, v, causal).backward(do))):
                        med, p20, p80, n = spread_time(f, grad_to_none=[q, k, v])
                        fl = flops(B, H, T, d, causal, mode)
                        rows.append(dict(row, mode=mode, ms_median=med, ms_p20=p20, ms_p80=p80, n_iter=n,
                                         tflops=fl / med / 1e9, status="ok"))
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    rows.append(dict(row, status=f"error: {str(e)[:60]}"))
                finally:
                    for t in (q, k, v):
                        t.grad = None
                    free()
            print(f"run {run} d={d} causal={causal} T={T}: " + ", ".join(
                f"{r['method']} {r['mode']} {r['ms_median']:.3f} ms" for r in rows[-2 * len(args.methods):] if r.get("status") == "ok"
                and r["run"] == run and r["T"] == T and r["d"] == d and r["causal"] == causal),
                f"[{time.time() - t0:.0f} s]", flush=True)
            write_csv(rows, Path(args.out) / "07_flash_attention_runs.csv", quiet=True)
    tuned = {f"{n}/d{d}": str(list(fa._TUNERS[(n, d)].cache.items())[:4]) for n in ("fwd", "dkdv", "dq", "fwd_tma", "dkdv_tma", "dq_tma")
             for d in (64, 128) if (n, d) in fa._TUNERS}
    print("autotuner choices (key -> config):", tuned)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=0,
                   help="N full passes of the small grid with median/p20/p80 (writes 07_flash_attention_runs.csv)")
    p.add_argument("--out", default=str(ROOT / "assets"))
    p.add_argument("--methods", nargs="+", default=list(RUN_METHODS), choices=RUN_METHODS,
                   help="--runs: the methods, timed in this order at each shape")
    p.add_argument("--quick", action="store_true", help="a few shapes only")
    p.add_argument("--sweep", action="store_true", help="time every tuning candidate instead")
    p.add_argument("--memory", action="store_true", help="only the peak-memory run (CSV and PNG)")
    p.add_argument("--sweep-T", type=int, nargs="+", default=[4096, 16384])
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/flash_attention.py needs a CUDA GPU")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    print(f"{gpu}; torch {torch.__version__}, triton {triton.__version__}")
    t0 = time.time()
    if args.runs:
        main_runs(args)
        print(f"total {time.time() - t0:.0f} s")
        return
    if args.sweep:
        main_sweep(args)
        return
    if args.memory:
        args.memory_T = (1024, 2048, 4096, 8192, 16384, 32768)
        mem_rows = main_memory(args)
        write_csv(mem_rows, Path(args.out) / "07_flash_attention_memory.csv")
        plot_memory(mem_rows, args.out, gpu)
        return
    tflops, gbs = device_ceilings()
    print(f"measured ceilings: bf16 matmul 8192³ {tflops:.0f} TFLOP/s, copy {gbs:.0f} GB/s")
    args.dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float16]
    args.seqlens = (1024, 4096, 16384) if args.quick else SEQLENS
    args.memory_T = (1024, 4096, 16384) if args.quick else (1024, 2048, 4096, 8192, 16384, 32768)
    rows = main_speed(args)
    mem_rows = main_memory(args)
    cs = cs336_row()
    print(f"\nCS336 2025 leaderboard setting (B=1, T=16384, H=16, d=64, bf16, causal, fwd+bwd, "
          f"do_bench mean): " + ", ".join(f"{k} {v:.2f} ms" for k, v in cs.items()))
    for r in ({"method": f"cs336_{k}", "ms_fwd_bwd": v} for k, v in cs.items()):
        r.update(dtype="bfloat16", d=64, causal=True, T=16384, B=1, H=16, status="cs336")
        rows.append(r)
    rows.append({"method": "device", "status": f"{gpu}; torch {torch.__version__}; triton {triton.__version__}; "
                 f"matmul {tflops:.0f} TFLOP/s; copy {gbs:.0f} GB/s"})
    write_csv(rows, Path(args.out) / "07_flash_attention_tflops.csv")
    write_csv(mem_rows, Path(args.out) / "07_flash_attention_memory.csv")
    plot(rows, mem_rows, args.out, gpu)
    summary(rows)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
