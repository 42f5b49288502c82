"""`make grade`: one row per submission, whatever the submission does, and hidden cases.

The lesson graded here is a tiny one written below (three exercises, a second to run), so that
five real kernels fit in the test's time; the learner copies come from `tools/make_exercises.py`
like the real ones."""
import csv
import hashlib
import io
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_exercises import learner_notebook  # noqa: E402

from course_utils.exercises import HIDDEN_CASES_ENV, ExerciseError, check_function  # noqa: E402

EX1 = '''# Exercise 98.1 — square
def square(x):
    ### BEGIN SOLUTION
    return x * x
    ### END SOLUTION

check_function("Exercise 98.1", square, cases=[(2.0,), (torch.tensor([1.0, -3.0]),)],
               reference=lambda x: x ** 2)'''
EX2 = '''# Exercise 98.2 — absolute value
def absolute(x):
    ### BEGIN SOLUTION
    return x if x >= 0 else -x
    ### END SOLUTION

check_function("Exercise 98.2", absolute, cases=[(3.0,), (0.5,)], reference=abs)'''
EX3 = '''# Exercise 98.3 — count
### BEGIN SOLUTION
answer = 6
### END SOLUTION
check_answer("Exercise 98.3", answer, 3 * 2)'''
HIDDEN = 'HIDDEN = {"Exercise 98.2": [(-4.0,)]}\n'   # what the visible cases never try


def lesson(number: str, cells: list[str]) -> nbformat.NotebookNode:
    head = [f"md:# {number} · Tiny\n\nA lesson for testing the grader.",
            "import torch\nfrom course_utils.exercises import check_function, check_answer",
            "md:## 1 · Exercises"]
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbformat.v4.new_code_cell(c)
        for c in head + cells])


def submission(folder: Path, name: str, learner, edits: dict[str, str], extra_after: dict) -> None:
    """A learner copy with some exercise cells replaced and some cells inserted after others."""
    nb = nbformat.from_dict(nbformat.reads(nbformat.writes(learner), as_version=4))
    for i, cell in reversed(list(enumerate(nb.cells))):
        title = cell.source.splitlines()[0] if cell.source else ""
        for key, src in edits.items():
            if title.startswith(f"# Exercise {key}"):
                cell.source = src
        for key, src in extra_after.items():
            if title.startswith(f"# Exercise {key}"):
                nb.cells.insert(i + 1, nbformat.v4.new_code_cell(src))
    nbformat.write(nb, folder / name)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("grading")
    lessons, subs, out = base / "lessons", base / "submissions", base / "grades"
    lessons.mkdir()
    subs.mkdir()
    nbformat.write(lesson("98", [EX1, EX2, EX3]), lessons / "98_tiny.ipynb")
    nbformat.write(lesson("97", [EX1.replace("98.1", "97.1")]), lessons / "97_other.ipynb")
    (base / "hidden.py").write_text(HIDDEN)
    learner, names = learner_notebook(lessons / "98_tiny.ipynb")
    assert names == ["Exercise 98.1", "Exercise 98.2", "Exercise 98.3"]
    solved = {"98.1": EX1, "98.2": EX2, "98.3": EX3}
    wrong_abs = EX2.replace("return x if x >= 0 else -x", "return x")  # right on the visible cases
    # 1. correct
    submission(subs, "alice.ipynb", learner, solved, {})
    # 2. partly wrong: 98.1 right, 98.2 wrong on the hidden case only, 98.3 not attempted
    submission(subs, "bob.ipynb", learner, {"98.1": EX1, "98.2": wrong_abs}, {})
    # 3. hangs after its first exercise
    submission(subs, "carol.ipynb", learner, solved,
               {"98.1": "import time\nwhile True:\n    time.sleep(0.05)"})
    # 4. deletes every file of its working folder, then kills its own kernel
    submission(subs, "dave.ipynb", learner, solved, {"98.1": (
        "import os, signal\nfor f in os.listdir('.'):\n    os.remove(f)\n"
        "os.kill(os.getpid(), signal.SIGKILL)")})
    # 5. not a notebook; and two cheap extras: a broken one and one of another lesson
    (subs / "erin.txt").write_text("my answers: 4, 3, 6\n")
    (subs / "frank.ipynb").write_text("{ this is not json")
    other, _ = learner_notebook(lessons / "97_other.ipynb")
    nbformat.write(other, subs / "gina.ipynb")
    before = tree_digest(subs)
    r = subprocess.run(
        ["make", "--no-print-directory", "grade", f"SUBMISSIONS={subs}", f"GRADES={out}",
         "TIMEOUT=25", f"HIDDEN={base / 'hidden.py'}", f"GRADE_FLAGS=--lessons {lessons} -j 2"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert tree_digest(subs) == before, "the grader changed a submission"
    with open(out / "98_tiny.csv", newline="", encoding="utf-8") as f:
        rows = {row["submission"]: row for row in csv.DictReader(f)}
    return rows, (out / "98_tiny.md").read_text(encoding="utf-8"), r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_each_submission_gets_its_row(graded):
    rows, md, _ = graded
    assert list(rows) == ["alice.ipynb", "bob.ipynb", "carol.ipynb", "dave.ipynb", "erin.txt",
                          "frank.ipynb", "gina.ipynb"]
    ex = ["Exercise 98.1", "Exercise 98.2", "Exercise 98.3"]
    verdict = {name: [rows[name][e] for e in ex] for name in rows}
    assert verdict["alice.ipynb"] == ["passed"] * 3, rows["alice.ipynb"]
    assert rows["alice.ipynb"]["result"] == "3/3 passed"
    bob = verdict["bob.ipynb"]
    assert bob[0] == "passed" and bob[2] == "not attempted", bob
    assert bob[1].startswith("failed: ✗ Exercise 98.2: for hidden case 1 (float -4.0)"), bob
    carol = verdict["carol.ipynb"]
    assert carol[0] == "passed" and all(v.startswith("error: not run") for v in carol[1:]), carol
    assert "timeout" in rows["carol.ipynb"]["note"], rows["carol.ipynb"]
    dave = verdict["dave.ipynb"]
    assert dave[0] == "passed" and all("kernel died" in v for v in dave[1:]), dave
    assert rows["erin.txt"]["result"].startswith("not a notebook"), rows["erin.txt"]
    assert rows["frank.ipynb"]["result"] == "not a notebook", rows["frank.ipynb"]
    assert rows["gina.ipynb"]["result"] == "other lesson" and "lesson 97" in rows["gina.ipynb"]["note"]
    assert md.count("\n") == len(rows) + 2 and "| alice.ipynb | 98 | 3/3 passed |" in md


def test_hidden_cases_run_only_when_grading(tmp_path, monkeypatch):
    (tmp_path / "hidden.py").write_text(HIDDEN)

    def run(fn):
        buf = io.StringIO()
        with redirect_stdout(buf):
            check_function("Exercise 98.2", fn, cases=[(3.0,), (0.5,)], reference=abs)
        return buf.getvalue()

    monkeypatch.delenv(HIDDEN_CASES_ENV, raising=False)
    assert run(lambda x: x) == "✓ Exercise 98.2  passed 2 cases\n"    # the learner's view
    monkeypatch.setenv(HIDDEN_CASES_ENV, str(tmp_path / "hidden.py"))
    assert run(abs) == "✓ Exercise 98.2  passed 3 cases\n"            # same form, one more case
    with pytest.raises(ExerciseError, match=r"for hidden case 1 \(float -4.0\).*expected 4.0"):
        run(lambda x: x)
