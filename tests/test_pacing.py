"""tools/pacing.py: each lesson's stated time, core path and slide metadata follow from the
notebook by the README's one rule, and nobody forgot to re-run it."""
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import pacing  # noqa: E402


def nb_of(*cells):
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
        for c in cells])


def test_the_rule():
    words = " ".join(["w"] * 180)                       # 2 min of prose
    code = "\n".join(["x = 1"] * 16)                    # 2 min of code
    nb = nb_of("md:# 01 · T\n" + words, code, "md:## 1 · Core\n" + words, code,
               "md:## 2 · Extra *(deep dive)*\n" + words, code, "# Exercise 1.1 — e\n" + code)
    est = pacing.estimate(nb)
    assert est["exercises"] == 1 and est["deep"] == ["2"]
    # total: 3·2 (prose, +a few heading words) + 4·2 (code) + 2 (exercise code) + 15 (exercise)
    assert est["total"] == pacing._round5(6 + 8 + 0.1 + 2 + 15)
    assert est["core"] == pacing._round5(4 + 4)      # intro + section 1, no deep dive, no exercise


def test_slide_types_and_overrides():
    nb = nb_of("md:# 01 · T", "import torch", "md:## 1 · A", "md:more", "x = 1",
               "md:## 2 · B *(deep dive)*", "y = 2")
    nb.cells[3].metadata["course"] = {"slide": "notes"}
    pacing.apply(nb)
    kinds = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
    assert kinds == ["slide", "skip", "slide", "notes", "-", "skip", "skip"]
    assert nb.cells[0].source.splitlines()[-1].startswith("**Time:**")
    pacing.apply(nb)                                    # idempotent: one time line, not two
    assert nb.cells[0].source.count("**Time:**") == 1


def test_the_deck_leaves_out_solutions_and_plumbing():
    lib = "#@save\n" + "\n".join(f"x{i} = {i}" for i in range(30))
    nb = nb_of("md:# 01 · T", "import torch", "md:## 1 · A", "md:the next step of the derivation",
               "y = 1", "md:### Exercise 1.1 — e", "# Exercise 1.1 — e\nx = 1", lib,
               "def draw_it(n=1):\n    plt.plot([n])\n\ndef _helper():\n    pass",
               "md:a picture", "draw_it()")
    pacing.apply(nb)
    kinds = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
    assert kinds == ["slide", "skip", "slide", "fragment", "-", "subslide", "skip", "skip", "skip",
                     "subslide", "-"]


def test_every_lesson_is_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "pacing.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
