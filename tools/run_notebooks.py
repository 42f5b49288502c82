"""`make notebooks`: execute notebooks top to bottom, in place, and print how long each took.

Committed notebooks carry their outputs (execution counts 1..N); this is how they are produced.
Cells that show an error on purpose carry `# NBVAL_RAISES_EXCEPTION`, which is also turned into
nbclient's `raises-exception` tag so execution goes on past them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def execute(path: Path, timeout: int = 300) -> float:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            tags = cell.metadata.setdefault("tags", [])
            if "NBVAL_RAISES_EXCEPTION" in cell.source and "raises-exception" not in tags:
                tags.append("raises-exception")
            if not tags:
                del cell.metadata["tags"]
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": "python3"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for p in paths:
        seconds = execute(p.resolve())
        size = p.stat().st_size / 1e6
        flag = "  <- over the 60 s budget" if seconds > 60 else ""
        print(f"{p.name:<34} {seconds:6.1f} s  {size:5.2f} MB{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
