"""`make exercises`: write learner versions of the notebooks into `exercises/`, never over a file
that is already there (it is the learner's work).

    python tools/make_exercises.py                    # write the copies that are missing
    python tools/make_exercises.py --refresh 03_rope  # replace one copy, after asking; the old
                                                      # one is kept in exercises/.backup/

Each solution block (the lines from `### BEGIN SOLUTION` to `### END SOLUTION`) becomes one line
that raises `NotImplementedError` naming the exercise, indented like the block; outputs are
cleared so the learner runs the notebook fresh. The exercise's name comes from the first line of
its cell (`# Exercise 1.2 — ...`); a block in a cell without one is an error.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course_utils.exercises import BEGIN, END, TITLE_RE, stub_line  # noqa: E402

BANNER = ("> **Your copy** of `notebooks/{name}` (written by `make exercises`; no command overwrites "
          "it, so your work here is safe). Each exercise cell raises `NotImplementedError` until "
          "you write your solution; the checker in the same cell then tells you what, if anything, "
          "is wrong. **Run All stops at the first unfinished exercise**: finish it (or run the "
          "cells below it one by one) to go on. The solved lesson is `notebooks/{name}`; read it "
          "there, but work here (editing the tracked notebooks makes `git pull` conflict). "
          "`make refresh-exercise NB={stem}` gives you a fresh copy, keeping this one in "
          "`exercises/.backup/`.")


def strip_solutions(source: str, where: str) -> tuple[str, str | None]:
    """Return (learner source, exercise name or None when the cell holds no solution)."""
    if BEGIN not in source:
        return source, None
    first = source.lstrip().splitlines()[0]
    m = TITLE_RE.match(first)
    if not m:
        raise SystemExit(f"make_exercises: {where} has a solution block, but its first line is "
                         f"not '# Exercise N.M — title': {first!r}")
    name = m.group(1)
    out, inside = [], False
    for line in source.splitlines():
        s = line.strip()
        if s == BEGIN:
            if inside:
                raise SystemExit(f"make_exercises: {where}: nested {BEGIN}")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + stub_line(name))
        elif s == END:
            if not inside:
                raise SystemExit(f"make_exercises: {where}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise SystemExit(f"make_exercises: {where}: {BEGIN} without {END}")
    return "\n".join(out), name


def learner_notebook(path: Path):
    """The learner version of one notebook and the names of its exercises, in order."""
    nb = nbformat.read(path, as_version=4)
    names = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        cell.source, name = strip_solutions(cell.source, f"{path.name} cell {i}")
        if name:
            names.append(name)
        cell.outputs, cell.execution_count = [], None
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(BANNER.format(name=path.name, stem=path.stem)))
    nb.metadata.pop("widgets", None)
    return nb, names


def _lessons(only: str | None = None) -> list[Path]:
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only is None:
        return paths
    match = [p for p in paths if p.stem == only or p.name == only or p.name.startswith(f"{only}_")]
    if len(match) != 1:
        raise SystemExit(f"make_exercises: --refresh takes one lesson, such as 03 or 03_rope; "
                         f"{only!r} matches {[p.stem for p in match] or 'none of'} "
                         f"{[p.stem for p in paths]}")
    return match


def refresh(path: Path, out: Path, yes: bool) -> int:
    """Replace the learner copy of one lesson, after confirmation; the old copy goes to .backup/."""
    target = out / path.name
    if target.exists():
        if not yes:
            answer = input(f"Replace {target} with a fresh copy? Your current file is kept in "
                           f"{out / '.backup'}/. Type yes to go on: ")
            if answer.strip().lower() not in ("y", "yes"):
                print("Nothing changed.")
                return 1
        backup = out / ".backup" / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, backup)
        print(f"kept your copy as {backup}")
    nb, names = learner_notebook(path)
    nbformat.write(nb, target)
    print(f"wrote a fresh {target} ({len(names)} exercises)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "exercises"))
    ap.add_argument("--refresh", metavar="LESSON", help="replace this lesson's copy (asks first)")
    ap.add_argument("--yes", action="store_true", help="with --refresh: do not ask")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.refresh:
        return refresh(_lessons(args.refresh)[0], out, args.yes)
    for path in _lessons():
        target = out / path.name
        if target.exists():  # the learner's file: never overwritten
            if path.stat().st_mtime > target.stat().st_mtime:
                print(f"{path.name}: your copy is older than the lesson; `make refresh-exercise "
                      f"NB={path.stem}` gets the new one (yours is kept)")
            continue
        nb, names = learner_notebook(path)
        nbformat.write(nb, target)
        print(f"{path.name}: wrote your copy ({len(names)} exercise{'s' if len(names) != 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
