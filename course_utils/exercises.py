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
"""
from __future__ import annotations

import re

import torch

__all__ = ["ExerciseError", "check_function", "check_answer", "stub_line", "TITLE_RE",
           "BEGIN", "END"]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
# The first line of an exercise cell: "# Exercise 1.2 — what it is about"
TITLE_RE = re.compile(r"^#\s*(Exercise\s+\d+\.\d+)\b")


class ExerciseError(AssertionError):
    """A learner's answer is wrong; the message says how."""


def stub_line(name: str) -> str:
    """The line that replaces a solution block in the learner's notebook."""
    return (f'raise NotImplementedError("{name}: your code goes here — replace this line with '
            f'your solution, then run the cell again")')


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
                   hint: str | None = None) -> None:
    """Call the learner's ``fn(*case)`` for each case and compare with ``reference(*case)``.

    ``cases`` is a list of argument tuples (each gets fresh copies, so in-place edits by ``fn``
    cannot change the reference); results may be tensors, numbers or anything comparable with
    ``==``. Prints one ``✓`` line when every case passes.
    """
    if not callable(fn) or not callable(reference):
        raise TypeError(f"{name}: fn and reference must be callables")
    cases = list(cases)
    if not cases:
        raise ValueError(f"{name}: check_function needs at least one case")
    for k, args in enumerate(cases):
        if not isinstance(args, tuple):
            raise TypeError(f"{name}: each case must be a tuple of arguments, case {k} is "
                            f"{type(args).__name__}")
        where = f"for case {k + 1} (" + ", ".join(_describe(a) for a in args) + "):"
        try:
            got = fn(*_clone(args))
        except NotImplementedError:
            raise  # the stub's own message names the exercise
        except Exception as e:  # noqa: BLE001 - turned into a learner-facing message
            raise ExerciseError(f"✗ {name}: {where} your function raised "
                                f"{type(e).__name__}: {e}") from e
        _compare(name, got, reference(*_clone(args)), where, atol, rtol, hint)
    print(f"✓ {name}  passed {len(cases)} case{'s' if len(cases) > 1 else ''}")


def check_answer(name: str, got, expected, *, atol: float = 1e-6, rtol: float = 0.0,
                 hint: str | None = None) -> None:
    """Compare a value the learner computed (a number, a tensor, a set, ...) with the expected
    one, computed independently in the checker cell. Prints one ``✓`` line."""
    _compare(name, got, expected, "", atol, rtol, hint)
    print(f"✓ {name}  correct")
