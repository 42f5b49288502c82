"""Exercises: checkers that explain, and the stubs that learner notebooks get.

An exercise is one code cell in a notebook that starts with a title line and holds the solution
between nbgrader-style markers, then calls a checker::

    # Exercise 1.2 — target log-probabilities with gather
    def target_logprobs(logp, targets):
        ### BEGIN SOLUTION
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ### END SOLUTION

    check_function("Exercise 1.2", target_logprobs, cases, reference)

``make exercises`` (``tools/make_exercises.py``) writes a learner copy of each notebook into
``exercises/`` with every solution block replaced by :func:`stub_line`, which raises
``NotImplementedError`` naming the exercise. The checkers compare the learner's answer with an
independent reference and say in words what is wrong: the shape, the dtype, or the worst value.

What a learner sees when an answer is wrong: in Jupyter, only the checker's message (an
:class:`ExerciseError` renders itself without the checker's traceback); when the learner's own
function raised, the message, the hint, the case's arguments and the traceback of the learner's
code, with the course's frames left out. Outside IPython (pytest, a script) the exception is an
ordinary ``AssertionError`` with an ordinary traceback, the checker's frames hidden from pytest.

Hidden cases, for grading: when the environment variable ``COURSE_HIDDEN_CASES`` names a Python
file (``course_utils.grade --hidden FILE`` sets it for the learners' kernels), that file's
``HIDDEN = {"Exercise 3.1": [case, ...], ...}`` adds cases to :func:`check_function` after the
ones the notebook shows (a value may also be a function returning the list, to build tensors
lazily). Without the variable nothing changes; the passing line keeps its form, counting every
case it ran.
"""
from __future__ import annotations

import numbers
import os
import re
import runpy
import traceback

import torch

__all__ = ["ExerciseError", "check_function", "check_answer", "stub_line", "TITLE_RE",
           "BEGIN", "END", "HIDDEN_CASES_ENV"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
# The first line of an exercise cell: "# Exercise 1.2 — what it is about"
TITLE_RE = re.compile(r"^#\s*(Exercise\s+\d+\.\d+)\b")
# Names a Python file of hidden cases (see the module's docstring); set only when grading.
HIDDEN_CASES_ENV = "COURSE_HIDDEN_CASES"


def _hidden_cases(name: str) -> list:
    """The grader's extra cases for exercise ``name``, or [] (not grading, or none for it)."""
    path = os.environ.get(HIDDEN_CASES_ENV)
    if not path:
        return []
    table = runpy.run_path(path).get("HIDDEN", {})
    cases = table.get(name, [])
    return list(cases() if callable(cases) else cases)


class ExerciseError(AssertionError):
    """A learner's answer is wrong; the message says how.

    IPython (Jupyter) shows an exception with a ``_render_traceback_`` method as the lines that it
    returns: here the message, and the traceback of the learner's code when that raised, instead
    of twenty lines of checker internals above a one-line message."""

    def __init__(self, message: str, learner_traceback: str = ""):
        super().__init__(message)
        self.learner_traceback = learner_traceback

    def _render_traceback_(self) -> list[str]:
        return str(self).splitlines() + self.learner_traceback.splitlines()


def stub_line(name: str) -> str:
    """The line that replaces a solution block in the learner's notebook."""
    return (f'raise NotImplementedError("{name}: your code goes here — replace this line with '
            f'your solution, then run the cell again")')


def _is_course_frame(frame) -> bool:
    return (frame.f_globals.get("__name__", "").partition(".")[0] == "course_utils"
            or bool(frame.f_locals.get("__tracebackhide__")))


def _frame_title(filename: str, lineno: int, name: str) -> str:
    """As IPython names a notebook cell ("Cell In[3], line 4"), else as Python names a file."""
    try:
        from IPython import get_ipython  # noqa: PLC0415

        cell = get_ipython().compile._filename_map[filename]
        return f"  Cell In[{cell}], line {lineno}, in {name}"
    except Exception:  # noqa: BLE001 - not in IPython, or not a cell
        return f'  File "{filename}", line {lineno}, in {name}'


def _learner_traceback(exc: BaseException) -> str:
    """The frames of ``exc``'s traceback that are the learner's (or torch's), not the course's."""
    try:
        kept = [traceback.FrameSummary(f.f_code.co_filename, lineno, f.f_code.co_name)
                for f, lineno in traceback.walk_tb(exc.__traceback__) if not _is_course_frame(f)]
    except Exception:  # noqa: BLE001 - the message alone must still reach the learner
        return ""
    if not kept:
        return ""
    lines = ["Traceback of your code (most recent call last):"]
    for fs in kept:
        lines.append(_frame_title(fs.filename, fs.lineno, fs.name))
        if fs.line:
            lines.append(f"    {fs.line}")
    lines += [ln.rstrip("\n") for ln in traceback.format_exception_only(type(exc), exc)]
    return "\n".join(lines)


def _is_stub(exc: BaseException) -> bool:
    """The NotImplementedError of an unfinished exercise (see stub_line)."""
    return isinstance(exc, NotImplementedError) and "your code goes here" in str(exc)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def _clone(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return type(x)(_clone(v) for v in x)
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def _compare(name: str, got, want, where: str, atol: float, rtol: float, hint: str | None):
    __tracebackhide__ = True  # noqa: F841 - pytest and IPython leave this frame out
    tail = f"\n  Hint: {hint}" if hint else ""
    lead = f"✗ {name}: " + (f"{where} " if where else "")
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            raise ExerciseError(f"{lead}you returned {_describe(got)}, "
                                f"but a tensor was expected ({_describe(want)}).{tail}")
        if got.shape != want.shape:
            expected = (f"shape {tuple(want.shape)}" if want.dim() else
                        "shape () (a 0-dimensional tensor, one number)")
            raise ExerciseError(f"{lead}your result has shape {tuple(got.shape)}, "
                                f"expected {expected}.{tail}")
        if got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
            raise ExerciseError(f"{lead}your result has dtype {got.dtype}, "
                                f"expected {want.dtype}.{tail}")
        g, w = got.detach().double().reshape(-1), want.detach().double().reshape(-1)
        bad = ~((g - w).abs() <= atol + rtol * w.abs())
        if bad.any():
            i = int(bad.nonzero()[0])
            idx = (tuple(int(v) for v in torch.unravel_index(torch.tensor(i), want.shape))
                   if want.dim() else ())
            raise ExerciseError(
                f"{lead}{int(bad.sum())} of {want.numel()} values are wrong; the first "
                f"is at index {idx}: you have {g[i].item():.6g}, expected {w[i].item():.6g}.{tail}")
        return
    if isinstance(want, (tuple, list)) and any(isinstance(w, torch.Tensor) for w in want):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            raise ExerciseError(f"{lead}you returned {_describe(got)}, but a {type(want).__name__} "
                                f"of {len(want)} results was expected.{tail}")
        for i, (g, w) in enumerate(zip(got, want)):
            _compare(name, g, w, f"{where} result {i}:".strip(), atol, rtol, hint)
        return
    if isinstance(want, (set, frozenset)) and isinstance(got, (set, frozenset)):
        if got != want:
            parts = []
            if want - got:
                parts.append(f"missing {sorted(want - got)}")
            if got - want:
                parts.append(f"should not contain {sorted(got - want)}")
            raise ExerciseError(f"{lead}your set is {sorted(got)}: " + "; ".join(parts) + f".{tail}")
        return
    if isinstance(want, float):
        ok = isinstance(got, (int, float)) and abs(got - want) <= atol + rtol * abs(want)
    else:
        try:
            ok = bool(got == want)
        except Exception:  # noqa: BLE001 - e.g. a tensor compared with a number
            ok = False
    if not ok:
        raise ExerciseError(f"{lead}you have {got!r}, expected {want!r}.{tail}")


def check_function(name: str, fn, cases, reference, *, atol: float = 1e-5, rtol: float = 0.0,
                   hint: str | None = None, describe=None) -> None:
    """Call the learner's ``fn(*case)`` for each case and compare with ``reference(*case)``.

    ``cases`` is a list of argument tuples (each gets fresh copies, so in-place edits by ``fn``
    cannot change the reference); results may be tensors, numbers or anything comparable with
    ``==``. Prints one ``✓`` line when every case passes.

    A message about a case shows its arguments. Where ``fn`` wraps the learner's function (say
    ``lambda n: simulate(n, learner_fn)``), pass ``describe``, a function of the case's arguments
    that returns the text to show instead, such as ``describe=lambda n: f"n = {n} ranks"``.
    """
    __tracebackhide__ = True  # noqa: F841 - pytest and IPython leave this frame out
    if not callable(fn) or not callable(reference):
        raise TypeError(f"{name}: fn and reference must be callables")
    if describe is not None and not callable(describe):
        raise TypeError(f"{name}: describe must be a function of a case's arguments that returns "
                        f"a string, got {type(describe).__name__}")
    cases = list(cases)
    if not cases:
        raise ValueError(f"{name}: check_function needs at least one case")
    shown_cases = len(cases)
    cases += _hidden_cases(name)
    for k, args in enumerate(cases):
        if not isinstance(args, tuple):
            raise TypeError(f"{name}: each case must be a tuple of arguments, case {k} is "
                            f"{type(args).__name__}")
        shown = str(describe(*args)) if describe else ", ".join(_describe(a) for a in args)
        label = f"case {k + 1}" if k < shown_cases else f"hidden case {k - shown_cases + 1}"
        where = f"for {label} ({shown}):"
        try:
            got = fn(*_clone(args))
        except Exception as e:  # noqa: BLE001 - turned into a learner-facing message
            if _is_stub(e):
                raise  # the stub's own one-line message names the exercise
            tail = f"\n  Hint: {hint}" if hint else ""
            raise ExerciseError(f"✗ {name}: {where} your function raised "
                                f"{type(e).__name__}: {e}{tail}", _learner_traceback(e)) from e
        _compare(name, got, reference(*_clone(args)), where, atol, rtol, hint)
    print(f"✓ {name}  passed {len(cases)} case{'s' if len(cases) > 1 else ''}")


def _inexact(got, want) -> str | None:
    """Why ``got`` cannot stand for the exact ``want`` (an int or a Fraction), or None.
    A float may compare equal to the answer and still be rounded (0.1 + 0.2); bool is no int."""
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)) and len(got) == len(want):
        return next((p for p in map(_inexact, got, want) if p), None)
    if isinstance(want, bool) or not isinstance(want, numbers.Rational):
        return None
    kind, how = (("integer", "an int (integer arithmetic: //, %, math.ceil, math.comb)")
                 if isinstance(want, numbers.Integral) else
                 ("Fraction", "a fractions.Fraction (Fraction(1, 3), not 1 / 3), which keeps every digit"))
    if isinstance(got, bool):
        what = f"the bool {got!r}"
    elif isinstance(got, numbers.Real) and not isinstance(got, numbers.Rational):
        what = f"the float {float(got)!r}"
    elif isinstance(got, torch.Tensor) and (got.is_floating_point() or got.is_complex()):
        what = f"a {got.dtype} tensor"
    else:
        return None
    return f"expected an exact {kind}, got {what} — give it as {how}"


def check_answer(name: str, got, expected, *, atol: float = 1e-6, rtol: float = 0.0,
                 hint: str | None = None) -> None:
    """Compare a value the learner computed (a number, a tensor, a set, ...) with the expected
    one, computed independently in the checker cell. Prints one ``✓`` line.

    An exact answer (an int or a ``fractions.Fraction``) must be given exactly: a float is
    refused even where it compares equal."""
    __tracebackhide__ = True  # noqa: F841 - pytest and IPython leave this frame out
    problem = _inexact(got, expected)
    if problem:
        raise ExerciseError(f"✗ {name}: {problem}." + (f"\n  Hint: {hint}" if hint else ""))
    _compare(name, got, expected, "", atol, rtol, hint)
    print(f"✓ {name}  correct")
