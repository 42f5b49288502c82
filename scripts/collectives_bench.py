"""All-reduce bandwidth of the naive, ring and library all-reduce (notebook 10).

Run it with torchrun, which starts the ranks and sets RANK, WORLD_SIZE and LOCAL_RANK:

    torchrun --nproc-per-node 2 scripts/collectives_bench.py
    torchrun --nproc-per-node 2 scripts/collectives_bench.py --sizes 4K,1M --reps 3

It uses NCCL (one GPU per rank) when CUDA is available and gloo on the CPU otherwise; the code is
the same. Rank 0 prints a table (algbw and busbw as nccl-tests defines them) and writes
10_allreduce_bandwidth.csv and .png into --out-dir (default: assets/).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # course_utils, when the course is not pip-installed

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from course_utils.collectives import ALL_REDUCE_ALGORITHMS, allreduce_bandwidth  # noqa: E402

UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
NAME = "10_allreduce_bandwidth"


def parse_size(text: str) -> int:
    """'4K' -> 4096, '1M' -> 1048576, '512' -> 512."""
    text = text.strip().upper().removesuffix("B")
    scale = UNITS.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in UNITS else text) * scale)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help="comma-separated message sizes, e.g. 4K,1M "
                    "(default: 4K..4M on a CPU, 64K..256M on GPUs)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per size (default 5 CPU, 20 GPU)")
    ap.add_argument("--out-dir", default=str(ROOT / "assets"))
    ap.add_argument("--no-png", action="store_true", help="write only the CSV")
    args = ap.parse_args(argv)
    for var in ("RANK", "WORLD_SIZE"):
        if var not in os.environ:
            sys.exit(f"{var} is not set: start this script with torchrun "
                     f"(torchrun --nproc-per-node 2 {Path(__file__).name})")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    owner = not dist.is_initialized()  # under torchrun we join the group; a launcher may have done it
    backend = ("nccl" if torch.cuda.is_available() else "gloo") if owner else dist.get_backend()
    cuda = backend == "nccl"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if owner:
        dist.init_process_group(backend, device_id=device if cuda else None)  # env:// from torchrun
    default = "64K,1M,16M,64M,256M" if cuda else "4K,64K,1M,4M"
    sizes = [parse_size(s) for s in (args.sizes or default).split(",")]
    reps = args.reps or (20 if cuda else 5)
    rows = allreduce_bandwidth(sizes, reps=reps, warmup=2, device=device)
    dev_name = torch.cuda.get_device_name(device) if cuda else "CPU"
    if rank == 0:
        print(f"{backend}, {world_size} ranks, {dev_name}, {reps} reps")
        print(f"{'algorithm':16s} {'bytes':>11s} {'time (us)':>11s} {'algbw GB/s':>11s} {'busbw GB/s':>11s}")
        for r in rows:
            print(f"{r['algorithm']:16s} {r['bytes']:11d} {r['seconds'] * 1e6:11.1f} "
                  f"{r['algbw_GBps']:11.3f} {r['busbw_GBps']:11.3f}")
        write(rows, Path(args.out_dir), backend, world_size, dev_name, png=not args.no_png)
        print(f"wrote {NAME}.csv" + ("" if args.no_png else f" and {NAME}.png"))
    if owner:
        dist.destroy_process_group()
    return 0


def write(rows, out_dir: Path, backend: str, world_size: int, dev_name: str, png: bool = True) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = ["backend", "world_size", "device", "algorithm", "bytes", "reps", "seconds", "algbw_GBps",
              "busbw_GBps"]
    with (out_dir / f"{NAME}.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({"backend": backend, "world_size": world_size, "device": dev_name, **r})
    if not png:
        return
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    from course_utils import plotting  # noqa: PLC0415
    plotting.use_style()
    fig, axes = plotting.figure(1, 2, width=10, height=3.4)
    for name in ALL_REDUCE_ALGORITHMS:
        mine = [r for r in rows if r["algorithm"] == name]
        for ax, key in zip(axes, ("algbw_GBps", "busbw_GBps")):
            ax.loglog([r["bytes"] for r in mine], [r[key] for r in mine], "o-", label=name)
    for ax, key in zip(axes, ("algbw", "busbw")):
        ax.set(xlabel="message size (bytes)", ylabel=f"{key} (GB/s)",
               title=f"all-reduce {key}: {backend}, {world_size} × {dev_name}")
    axes[0].legend()
    fig.savefig(out_dir / f"{NAME}.png")


if __name__ == "__main__":
    sys.exit(main())
