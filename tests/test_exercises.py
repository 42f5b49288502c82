"""The exercise mechanism: checkers that explain, stubs that name the exercise, and learner
notebooks that fail only at exercise cells."""
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from course_utils.exercises import BEGIN, END, ExerciseError, check_answer, check_function, stub_line

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_exercises  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_check_function_passes_and_counts_cases(capsys):
    check_function("Exercise 13.1", lambda x: x * 2, [(torch.ones(2),), (torch.zeros(3),)], lambda x: 2 * x)
    assert capsys.readouterr().out == "✓ Exercise 13.1  passed 2 cases\n"


@pytest.mark.parametrize("fn, match", [
    (lambda x: x.sum(0), r"your result has shape \(3,\), expected shape \(2, 3\)"),
    (lambda x: (x * 2).long(), r"your result has dtype torch.int64, expected torch.float32"),
    (lambda x: x * 3, r"6 of 6 values are wrong; the first is at index \(0, 0\): you have 3, expected 2"),
    (lambda x: 2.0, r"you returned float 2.0, but a tensor was expected"),
    (lambda x: x.foo(), r"your function raised AttributeError"),
])
def test_check_function_explains_mistakes(fn, match):
    with pytest.raises(ExerciseError, match=match):
        check_function("Exercise 13.2", fn, [(torch.ones(2, 3),)], lambda x: 2 * x,
                       hint="double it")


def test_learner_cannot_change_the_reference_inputs():
    def in_place(x):
        x.mul_(0)
        return x

    with pytest.raises(ExerciseError, match="values are wrong"):
        check_function("Exercise 13.3", in_place, [(torch.ones(3),)], lambda x: x.clone())


def test_stub_raises_not_implemented_naming_the_exercise():
    ns = {}
    exec("def f():\n    " + stub_line("Exercise 4.2"), ns)
    with pytest.raises(NotImplementedError, match="Exercise 4.2: your code goes here"):
        check_function("Exercise 4.2", ns["f"], [()], lambda: 1)


def test_check_answer_sets_and_numbers(capsys):
    check_answer("Exercise 13.4", 0.5, 0.5)
    assert "✓ Exercise 13.4  correct" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match=r"missing \['07'\]; should not contain \['05'\]"):
        check_answer("Exercise 13.4", {"00", "01", "05"}, {"00", "01", "07"})
    with pytest.raises(ExerciseError, match="you have 3, expected 4"):
        check_answer("Exercise 13.4", 3, 4)


def test_strip_solutions_keeps_indentation_and_names_the_exercise():
    src = f"# Exercise 2.1 — demo\ndef f(x):\n    {BEGIN}\n    return x\n    {END}\ncheck(f)"
    out, name = make_exercises.strip_solutions(src, "cell")
    assert name == "Exercise 2.1"
    assert out.splitlines()[2] == "    " + stub_line("Exercise 2.1")
    assert "return x" not in out and BEGIN not in out


def test_strip_solutions_rejects_unnamed_or_broken_blocks():
    with pytest.raises(SystemExit, match="first line is not"):
        make_exercises.strip_solutions(f"x = 1\n{BEGIN}\n{END}", "cell 3")
    with pytest.raises(SystemExit, match="without"):
        make_exercises.strip_solutions(f"# Exercise 1.1 — x\n{BEGIN}\nx = 1", "cell 3")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_two_to_four_exercises(path):
    _, names = make_exercises.learner_notebook(path)
    assert 2 <= len(names) <= 4, f"{path.name} has {len(names)} exercises"
    assert len(set(names)) == len(names), f"{path.name}: exercise names repeat: {names}"
    number = int(path.name[:2])
    assert all(re.match(rf"Exercise {number}\.\d+$", n) for n in names), names


def test_make_exercises_writes_learner_versions(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_exercises.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for path in NOTEBOOKS:
        nb = nbformat.read(tmp_path / path.name, as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        assert BEGIN not in text and "### BEGIN" not in text
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_learner_notebook_fails_only_at_exercise_cells(path, tmp_path):
    nb, names = make_exercises.learner_notebook(path)
    events = [("start", None, time.monotonic())]      # (what, cell index, when): see below

    def mark(what):
        return lambda cell=None, cell_index=None, **_: events.append((what, cell_index, time.monotonic()))

    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}},
                            on_notebook_start=mark("kernel ready"), on_cell_execute=mark("cell sent"),
                            on_cell_executed=mark("cell replied"), on_notebook_complete=mark("done"))
    client.execute()
    events.append(("kernel shut down", None, time.monotonic()))
    # Rarely (about once in ten full runs, cause not yet found) one of these runs waits about
    # 120 s, nbclient's timeout, and then carries on without error. Name the slow step in the
    # warnings summary so the next occurrence in CI says where the time went.
    gaps = sorted(((t1 - t0, what, i) for (_, _, t0), (what, i, t1) in zip(events, events[1:])), reverse=True)
    if gaps[0][0] > 30:
        warnings.warn(f"{path.name}: {gaps[0][0]:.0f} s passed before {gaps[0][1]!r} (cell {gaps[0][2]}); "
                      f"next longest waits (s, before what, cell): {[(round(g), w, i) for g, w, i in gaps[1:4]]}")
    failed = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        is_exercise = 'raise NotImplementedError("Exercise' in cell.source
        if errors:
            assert is_exercise, f"{path.name}: a non-exercise cell failed:\n{cell.source[:300]}\n{errors[0].evalue}"
            assert errors[0].ename == "NotImplementedError"
            failed.append(re.match(r"(Exercise \d+\.\d+)", errors[0].evalue).group(1))
        else:
            assert not is_exercise, f"{path.name}: an exercise stub did not fail:\n{cell.source[:300]}"
    assert failed == names


def test_tuples_of_tensors_are_compared_element_by_element():
    ref = lambda x: (2 * x, x.sum())  # noqa: E731
    check_function("Exercise 13.5", ref, [(torch.ones(3),)], ref)
    with pytest.raises(ExerciseError, match=r"result 1: your result has shape \(3,\)"):
        check_function("Exercise 13.5", lambda x: (2 * x, x), [(torch.ones(3),)], ref)
    with pytest.raises(ExerciseError, match="a tuple of 2 results was expected"):
        check_function("Exercise 13.5", lambda x: 2 * x, [(torch.ones(3),)], ref)
