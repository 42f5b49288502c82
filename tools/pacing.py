"""`make pacing`: honest times, the core path, and slide metadata, derived from each notebook.

One rule for every lesson (README, "How long a lesson takes"):

    minutes = prose words / 90  +  code lines / 8  +  15 per exercise

* prose: the words of every markdown cell (a careful first reading of technical text with
  formulas runs at about 90 words a minute, a third of the speed of ordinary reading);
* code: every non-blank line of every code cell, read, run and understood at about 8 lines a
  minute (comments count: they are read too);
* exercises: 15 minutes each, for writing, checking and fixing one (some take longer).

The total is rounded to 5 minutes. The **core path** is what a lecture or a first reading covers:
every section except those whose heading ends in ``*(deep dive)*``, without the exercises; its
time is the same rule applied to its cells. The tool writes, in each notebook:

* the header's last line, ``**Time:** …`` (total with exercises, core path, which sections are
  deep dives), replacing an older reading-time sentence;
* ``metadata.slideshow.slide_type`` of every cell, by the rule in :func:`slide_type`, unless the
  cell carries its own choice in ``metadata.course.slide`` (kept across re-execution);

and in ``README.md``'s lesson table and ``course_utils/course.py`` the total minutes.
``python tools/pacing.py --check`` changes nothing and exits 1 when any of these is out of date
(the test suite runs it).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
WORDS_PER_MIN, LINES_PER_MIN, EXERCISE_MIN = 90, 8, 15
DEEP = "*(deep dive)*"
SECTION = re.compile(r"^##\s+(\d+)\s*[·.]\s*(.*)$", re.M)
TIME_LINE = re.compile(r"\n*\*\*Time:\*\*.*\Z", re.S)
OLD_TIME = re.compile(r"\s*\**Reading time:\**\s*about \d+ minutes\.")
EXERCISE = re.compile(r"^\s*#\s*Exercise \d+\.\d+", re.M)


def _sections(nb):
    """(section number or None, is deep dive, cells) in order; cells before the first ## heading
    belong to section None (the introduction)."""
    out, current = [], [None, False, []]
    for cell in nb.cells:
        m = SECTION.match(cell.source.lstrip()) if cell.cell_type == "markdown" else None
        if m:
            out.append(current)
            current = [m.group(1), DEEP in m.group(2), []]
        current[2].append(cell)
    out.append(current)
    return [s for s in out if s[2]]


def _is_exercise(cell) -> bool:
    return cell.cell_type == "code" and bool(EXERCISE.match(cell.source))


def _prose(cell) -> str:
    """A markdown cell's text without the time line this tool writes (so applying it twice gives
    the same estimate)."""
    return OLD_TIME.sub("", TIME_LINE.sub("", cell.source))


def _minutes(cells) -> float:
    words = sum(len(_prose(c).split()) for c in cells if c.cell_type == "markdown")
    lines = sum(1 for c in cells if c.cell_type == "code" for ln in c.source.splitlines() if ln.strip())
    return words / WORDS_PER_MIN + lines / LINES_PER_MIN


def _round5(x: float) -> int:
    return max(5, int(5 * round(x / 5)))


def _fmt(minutes: int) -> str:
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def estimate(nb) -> dict:
    """Total minutes (with exercises), core-path minutes, deep-dive section numbers."""
    sections = _sections(nb)
    cells = [c for _, _, cs in sections for c in cs]
    n_ex = sum(_is_exercise(c) for c in cells)
    core_cells, deep = [], []
    for number, is_deep, cs in sections:
        if is_deep:
            deep.append(number)
        else:
            core_cells += [c for c in cs if not _is_exercise(c)]
    total = _round5(_minutes(cells) + EXERCISE_MIN * n_ex)
    return {"total": total, "core": _round5(_minutes(core_cells)), "deep": deep, "exercises": n_ex}


def time_line(est: dict) -> str:
    deep = (f"; deep dives: section{'s' if len(est['deep']) > 1 else ''} {', '.join(est['deep'])}"
            if est["deep"] else "")
    return (f"**Time:** about {_fmt(est['total'])} with the {est['exercises']} exercises; the core "
            f"path about {_fmt(est['core'])}{deep} (the README's rule: prose at {WORDS_PER_MIN} words "
            f"a minute, code at {LINES_PER_MIN} lines a minute, {EXERCISE_MIN} minutes an exercise).")


def _plumbing(cell) -> bool:
    """A code cell that only defines drawing helpers (``def draw_…``/``def _…``) and shows nothing."""
    code = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return (not cell.get("outputs") and bool(code)
            and all(ln.startswith(("def draw", "def _")) for ln in code if not ln[0].isspace()
                    and not ln.startswith(("@", ")"))))


def slide_type(cell, index: int, section_is_deep: bool, first_in_section: bool, prev=None) -> str:
    """The lecture deck, about 20–40 slides for a lesson's core path:

    * the title and each core section's heading open a slide; deep dives are skipped;
    * a markdown cell opens a sub-slide, except one that follows another markdown cell of the
      same section (a derivation in steps), which appears as a fragment of the same slide;
    * a code cell shows on the slide of the text above it, except the set-up cell, exercise
      solutions (the task's text stays: it is the homework slide), ``#@save`` library cells longer
      than 25 lines (validation and plumbing, read in the notebook) and cells that only define
      drawing helpers, which are skipped.

    ``prev`` is the cell before this one in its section (None for the first)."""
    if index == 0:
        return "slide"
    if section_is_deep:
        return "skip"
    if cell.cell_type == "code":
        long_lib = cell.source.startswith("#@save") and len(cell.source.splitlines()) > 25
        skip = index == 1 or long_lib or _is_exercise(cell) or _plumbing(cell)
        return "skip" if skip else "-"
    if first_in_section:
        return "slide"
    return "fragment" if prev is not None and prev.cell_type == "markdown" else "subslide"


def apply(nb) -> None:
    est = estimate(nb)
    head = nb.cells[0]
    src = OLD_TIME.sub("", TIME_LINE.sub("", head.source)).rstrip()
    src = src.replace("In this notebook (about 10 minutes) you", "In this notebook you")
    head.source = src + "\n\n" + time_line(est)
    index = 0
    for number, is_deep, cells in _sections(nb):
        for k, cell in enumerate(cells):
            chosen = cell.metadata.get("course", {}).get("slide")
            kind = chosen or slide_type(cell, index, is_deep, k == 0 and number is not None,
                                        prev=cells[k - 1] if k else None)
            cell.metadata.setdefault("slideshow", {})["slide_type"] = kind
            index += 1


def _readme_and_course(minutes: dict[str, int], write: bool) -> list[str]:
    stale = []
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    for name, m in minutes.items():
        text2 = re.sub(rf"(\| `{re.escape(name)}` \|[^\n]*\| )[^|\n]+( \|)", rf"\g<1>{_fmt(m)}\g<2>", text)
        text = text2
    if text != readme.read_text(encoding="utf-8"):
        stale.append("README.md")
        if write:
            readme.write_text(text, encoding="utf-8")
    course = ROOT / "course_utils" / "course.py"
    src = course.read_text(encoding="utf-8")
    new = src
    for name, m in minutes.items():
        new = re.sub(rf'(Lesson\("\d\d", "{re.escape(name)}", "[^"]*", )\d+', rf"\g<1>{m}", new)
    if new != src:
        stale.append("course_utils/course.py")
        if write:
            course.write_text(new, encoding="utf-8")
    return stale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if out of date")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stale, minutes = [], {}
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        before = nbformat.writes(nb)
        apply(nb)
        minutes[p.name] = estimate(nb)["total"]
        if nbformat.writes(nb) != before:
            stale.append(str(p.relative_to(ROOT) if p.is_absolute() else p))
            if not args.check:
                nbformat.write(nb, p)
        print(f"{p.name:<30} {time_line(estimate(nb))[10:60]}…")
    stale += _readme_and_course(minutes, write=not args.check)
    if args.check and stale:
        print("out of date (run `make pacing`):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
