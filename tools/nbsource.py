"""Convert between a notebook and a plain-text "percent" script, for editing notebooks as text.

    python tools/nbsource.py to-py notebooks/01_tensors_autograd.ipynb build/01.py
    python tools/nbsource.py to-ipynb build/01.py notebooks/01_tensors_autograd.ipynb

In the script, `# %%` starts a code cell and `# %% [markdown]` a markdown cell whose lines are
written as `# text`; a cell's metadata (slide type, tags) follows the marker as one line of JSON,
`# %% [markdown] {"slideshow": {"slide_type": "slide"}}`, so a round trip keeps it. The format is
jupytext's "percent" (which writes metadata as key=value pairs instead). `to-ipynb` writes a
notebook without outputs: run `make notebooks NB=...` next.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat


def _meta(cell) -> str:
    meta = {k: v for k, v in cell.metadata.items() if k not in ("execution", "collapsed", "scrolled")}
    return " " + json.dumps(meta, ensure_ascii=False, sort_keys=True) if meta else ""


def to_py(nb) -> str:
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            body = "\n".join(("# " + ln) if ln else "#" for ln in cell.source.splitlines())
            parts.append("# %% [markdown]" + _meta(cell) + "\n" + body)
        elif cell.cell_type == "code":
            parts.append("# %%" + _meta(cell) + "\n" + cell.source)
    return "\n\n".join(parts) + "\n"


def to_nb(text: str):
    cells, kind, meta, buf = [], None, {}, []

    def flush():
        if kind is None:
            return
        src = "\n".join(buf).strip("\n")
        if kind == "markdown":
            src = "\n".join(ln[2:] if ln.startswith("# ") else ln.lstrip("#")
                            for ln in src.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(src, metadata=meta))
        else:
            cells.append(nbformat.v4.new_code_cell(src, metadata=meta))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind = "markdown" if line.startswith("# %% [markdown]") else "code"
            rest = line[len("# %% [markdown]") if kind == "markdown" else len("# %%"):].strip()
            meta, buf = (json.loads(rest) if rest.startswith("{") else {}), []
        else:
            buf.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python",
                                 "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("to-py", "to-ipynb"):
        print(__doc__)
        return 2
    cmd, src, dst = argv
    if cmd == "to-py":
        Path(dst).write_text(to_py(nbformat.read(src, as_version=4)), encoding="utf-8")
    else:
        nbformat.write(to_nb(Path(src).read_text(encoding="utf-8")), dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
