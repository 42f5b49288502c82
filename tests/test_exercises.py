"""The exercise mechanism: checkers that explain, stubs that name the exercise, and learner
notebooks that fail only at exercise cells."""
import re
import subprocess
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import nbformat
import numpy as np
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
    # These runs used to wait about 120 s (nbclient's timeout) at a widget cell now and then and
    # carry on without error: nbclient mirrored ipywidgets' Output widget by sending on the shell
    # socket while it polled that socket for the cell's reply, and missed the reply. interact_figure
    # no longer uses an Output widget (tests/test_plotting.py checks); should a long wait come
    # back, the warnings summary names the step.
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


def test_passing_output_is_unchanged(capsys):
    check_function("Exercise 13.6", lambda x: x, [(1,)], lambda x: x)
    check_answer("Exercise 13.6", 3, 3)
    assert capsys.readouterr().out == "✓ Exercise 13.6  passed 1 case\n✓ Exercise 13.6  correct\n"


def test_an_exercise_error_renders_as_its_message_in_ipython():
    """IPython shows an exception that has _render_traceback_ as the lines it returns: the message,
    not the checker's frames above it."""
    with pytest.raises(ExerciseError) as e:
        check_function("Exercise 13.7", lambda x: x.sum(0), [(torch.ones(2, 3),)], lambda x: 2 * x,
                       hint="double it")
    lines = e.value._render_traceback_()
    assert lines == str(e.value).splitlines()
    assert lines[0].startswith("✗ Exercise 13.7: for case 1 (tensor of shape (2, 3)")
    assert lines[-1] == "  Hint: double it"
    # pytest and IPython leave out frames that set __tracebackhide__: every checker frame does
    checker = [f for f, _ in __import__("traceback").walk_tb(e.value.__traceback__)
               if f.f_globals["__name__"] == "course_utils.exercises"]
    assert checker and all(f.f_locals.get("__tracebackhide__") for f in checker)


# A lesson module's helper that calls the learner's function (as notebook 10's simulator does)
COURSE_HELPER = "def simulate(n, fn):\n    return [fn(r, n) for r in range(n)]\n"


def test_a_function_that_raises_gets_the_hint_its_case_and_its_own_frames():
    course = {"__name__": "course_utils.some_lesson"}
    exec(compile(COURSE_HELPER, "/course/some_lesson.py", "exec"), course)

    def lookup(table, i):
        return table[i]

    def learner_index(rank, n):
        return lookup([0, 1], rank + n)   # the bug

    with pytest.raises(ExerciseError) as e:
        check_function("Exercise 13.8", lambda n: course["simulate"](n, learner_index), [(3,)],
                       lambda n: list(range(n)), hint="mirror the formula",
                       describe=lambda n: f"n = {n} ranks")
    msg = str(e.value)
    assert msg.startswith("✗ Exercise 13.8: for case 1 (n = 3 ranks): your function raised "
                          "IndexError: list index out of range")
    assert msg.endswith("\n  Hint: mirror the formula")
    shown = "\n".join(e.value._render_traceback_())
    assert shown.startswith(msg + "\nTraceback of your code (most recent call last):")
    assert "in learner_index\n    return lookup([0, 1], rank + n)   # the bug" in shown
    assert "in lookup\n    return table[i]" in shown
    assert shown.endswith("IndexError: list index out of range")
    assert "course_utils" not in shown and "some_lesson.py" not in shown and "in simulate" not in shown
    assert "in <lambda>" in shown  # the cell's own wrapper is the learner's code
    assert isinstance(e.value.__cause__, IndexError)  # outside IPython the full chain is there


def test_describe_replaces_the_arguments_and_the_default_is_unchanged():
    with pytest.raises(ExerciseError, match=r"for case 2 \(int 5\): you have 6, expected 5"):
        check_function("Exercise 13.9", lambda n: n + (n > 4), [(1,), (5,)], lambda n: n)
    with pytest.raises(ExerciseError, match=r"for case 2 \(N = 5\): you have 6, expected 5"):
        check_function("Exercise 13.9", lambda n: n + (n > 4), [(1,), (5,)], lambda n: n,
                       describe=lambda n: f"N = {n}")
    with pytest.raises(TypeError, match="describe must be a function"):
        check_function("Exercise 13.9", lambda n: n, [(1,)], lambda n: n, describe="N")


def test_a_stub_stays_a_one_line_not_implemented_error():
    ns = {}
    exec("def f(x):\n    " + stub_line("Exercise 4.3"), ns)
    with pytest.raises(NotImplementedError) as e:
        check_function("Exercise 4.3", ns["f"], [(1,)], lambda x: x, hint="not shown for a stub")
    assert type(e.value) is NotImplementedError
    assert str(e.value).startswith("Exercise 4.3: your code goes here") and "\n" not in str(e.value)

    def not_a_stub(x):  # a NotImplementedError of the learner's code is an ordinary mistake
        raise NotImplementedError("sparse tensors are not supported")

    with pytest.raises(ExerciseError, match=r"raised NotImplementedError: sparse[\s\S]*Hint: h"):
        check_function("Exercise 4.3", not_a_stub, [(1,)], lambda x: x, hint="h")


@pytest.mark.parametrize("got, expected, match", [
    (0.5, Fraction(1, 2), r"expected an exact Fraction, got the float 0.5 — give it as a fractions.Fraction"),
    (63.0, 63, r"expected an exact integer, got the float 63.0 — give it as an int"),
    (np.float64(2.0), 2, r"expected an exact integer, got the float 2.0 — "),
    (torch.tensor(2.0), 2, r"expected an exact integer, got a torch.float32 tensor"),
    (True, 1, r"expected an exact integer, got the bool True"),
    ([96, 96.0], [96, 96], r"expected an exact integer, got the float 96.0"),
])
def test_check_answer_refuses_a_float_for_an_exact_answer(got, expected, match):
    assert got == expected or isinstance(got, list)  # equal, and still refused
    with pytest.raises(ExerciseError, match=match) as e:
        check_answer("Exercise 13.10", got, expected, hint="count, do not divide")
    assert str(e.value).startswith("✗ Exercise 13.10: expected an exact ")
    assert str(e.value).endswith("\n  Hint: count, do not divide")


def test_check_answer_accepts_exact_answers(capsys):
    check_answer("Exercise 13.11", Fraction(3, 6), Fraction(1, 2))
    check_answer("Exercise 13.11", 2, Fraction(2))          # an int is exact
    check_answer("Exercise 13.11", np.int64(4), 4)
    check_answer("Exercise 13.11", torch.tensor(4), 4)      # an integer tensor too
    check_answer("Exercise 13.11", True, True)              # a yes/no answer is no integer
    check_answer("Exercise 13.11", 0.1 + 0.2, 0.3)          # a float answer keeps its tolerance
    assert capsys.readouterr().out.count("✓ Exercise 13.11  correct") == 6


RENDER_CELLS = [
    "import torch\nfrom course_utils.exercises import check_function, check_answer",
    "def f(x):\n    return x.sum(0)\n"
    "check_function('Exercise 13.12', f, [(torch.ones(2, 3),)], lambda x: 2 * x, hint='double it')",
    "def g(x):\n    return x[5]\n"
    "check_function('Exercise 13.12', g, [(torch.ones(3),)], lambda x: 2 * x, hint='double it')",
    "def h(x):\n    " + stub_line("Exercise 13.12") + "\n"
    "check_function('Exercise 13.12', h, [(1,)], lambda x: x)",
    "check_answer('Exercise 13.12', 63.0, 63)",
]


def test_what_jupyter_shows_for_each_kind_of_mistake():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in RENDER_CELLS])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    plain = re.compile(r"\x1b\[[0-9;]*m")  # IPython colours its own tracebacks
    shown = ["\n".join(plain.sub("", "\n".join(o.traceback)) for o in c.outputs if o.output_type == "error")
             for c in nb.cells]
    assert shown[0] == ""
    assert shown[1] == ("✗ Exercise 13.12: for case 1 (tensor of shape (2, 3) and dtype torch.float32): "
                        "your result has shape (3,), expected shape (2, 3).\n  Hint: double it")
    assert shown[2].startswith("✗ Exercise 13.12: for case 1 (tensor of shape (3,) and dtype "
                               "torch.float32): your function raised IndexError: index 5 is out of "
                               "bounds for dimension 0 with size 3\n  Hint: double it\n"
                               "Traceback of your code (most recent call last):\n"
                               "  Cell In[3], line 2, in g\n    return x[5]\nIndexError: ")
    assert "NotImplementedError: Exercise 13.12: your code goes here" in shown[3]
    assert nb.cells[3].outputs[0].ename == "NotImplementedError"
    assert "course_utils" not in shown[3] and "check_function(name" not in shown[3]
    assert shown[4].startswith("✗ Exercise 13.12: expected an exact integer, got the float 63.0")
    for text in shown[1:]:
        assert "Traceback (most recent call last)" not in text or text is shown[3]
        assert "course_utils" not in text
