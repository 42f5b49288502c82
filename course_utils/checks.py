"""Checks: compare a result with an independent reference and print one stable line.

Every numeric claim in the course goes through :func:`check`. On success it prints one line such as
``✓ attention forward  max|err| < 1e-06``: the *bound* the result met, never the raw error, so the
text is the same on every CPU and nbval can compare it. On failure it raises ``AssertionError``
with what a learner needs to find the bug: shapes, the worst element and where it is, the tolerance.
"""
from __future__ import annotations

import numbers

import torch

__all__ = ["check", "check_true", "check_raises", "default_atol"]

# Default absolute tolerances by dtype: roughly 100x the unit roundoff of each format, enough for
# a short chain of ops; pass atol/rtol explicitly where a longer computation needs more.
_ATOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
    torch.complex128: 1e-10,
    torch.complex64: 1e-5,
}


def default_atol(*dtypes: torch.dtype) -> float:
    """The loosest default tolerance among ``dtypes`` (0.0 when none is a floating dtype)."""
    return max((_ATOL.get(d, 0.0) for d in dtypes), default=0.0)


def _to_tensor(x, name: str, role: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, bool):
        return torch.tensor(x)
    if isinstance(x, numbers.Integral):
        return torch.tensor(int(x), dtype=torch.int64)
    if isinstance(x, numbers.Real):  # a Python float is a double: compare it as one
        return torch.tensor(float(x), dtype=torch.float64)
    if isinstance(x, numbers.Complex):
        return torch.tensor(complex(x), dtype=torch.complex128)
    try:
        return torch.as_tensor(x).cpu()
    except Exception:  # noqa: BLE001 - re-raised with a clearer message
        raise TypeError(
            f"check({name!r}): {role} must be a tensor, a number or an array-like of numbers, "
            f"got {type(x).__name__}"
        ) from None


def _fmt(x: float) -> str:
    return f"{x:.0e}"


def _index(flat: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    return tuple(reversed(idx))


def check(name: str, got, ref, *, atol: float | None = None, rtol: float = 0.0) -> None:
    """Assert ``|got - ref| <= atol + rtol * |ref|`` elementwise and print one ``✓`` line.

    ``got`` and ``ref`` may be tensors, numbers or arrays; they must have the same shape.
    Integer and boolean inputs are compared exactly unless ``atol`` is given. With no ``atol``,
    floating inputs get the default of the loosest dtype involved (see ``default_atol``).
    """
    if not isinstance(name, str) or not name:
        raise TypeError("check(name, got, ref): name must be a non-empty string")
    g, r = _to_tensor(got, name, "got"), _to_tensor(ref, name, "ref")
    if g.shape != r.shape:
        raise AssertionError(
            f"✗ {name}: shape {tuple(g.shape)} does not match the reference shape {tuple(r.shape)}"
        )
    floating = g.is_floating_point() or r.is_floating_point() or g.is_complex() or r.is_complex()
    if atol is None:
        atol = default_atol(g.dtype, r.dtype) if floating else 0.0
    if atol < 0 or rtol < 0:
        raise ValueError(f"check({name!r}): atol and rtol must be >= 0, got {atol} and {rtol}")
    exact = atol == 0 and rtol == 0
    if g.numel() == 0:
        print(f"✓ {name}  (empty, shape {tuple(g.shape)})")
        return
    if exact:
        bad = (g != r).reshape(-1)
        if bad.any():
            i = int(bad.nonzero()[0])
            where = _index(i, g.shape)
            raise AssertionError(
                f"✗ {name}: {int(bad.sum())} of {g.numel()} elements differ (exact comparison); "
                f"first at index {where}: got {g.reshape(-1)[i].item()}, expected {r.reshape(-1)[i].item()}"
            )
        print(f"✓ {name}  exact")
        return
    dt = torch.complex128 if (g.is_complex() or r.is_complex()) else torch.float64
    gd, rd = g.to(dt).reshape(-1), r.to(dt).reshape(-1)
    err = (gd - rd).abs()
    bound = atol + rtol * rd.abs()
    bad = ~(err <= bound)  # NaN compares False, so a NaN anywhere fails
    tol_text = _fmt(atol) if rtol == 0 else f"{_fmt(atol)} + {_fmt(rtol)}·|ref|"
    if bad.any():
        excess = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err - bound)
        i = int(excess.argmax())
        where = _index(i, g.shape)
        raise AssertionError(
            f"✗ {name}: max|err| = {err.nan_to_num(float('inf')).max().item():.3g} exceeds the "
            f"tolerance {tol_text}\n"
            f"  worst element at index {where}: got {gd[i].item():.6g}, expected {rd[i].item():.6g}\n"
            f"  {int(bad.sum())} of {g.numel()} elements out of tolerance; shape {tuple(g.shape)}, "
            f"dtypes {g.dtype} (got) and {r.dtype} (ref)"
        )
    print(f"✓ {name}  max|err| < {tol_text}")


def check_true(name: str, condition, why: str = "") -> None:
    """Assert a yes/no claim (``condition`` must be a bool or a one-element bool tensor)."""
    if isinstance(condition, torch.Tensor):
        if condition.numel() != 1 or condition.dtype != torch.bool:
            raise TypeError(
                f"check_true({name!r}): condition must be a bool or a one-element bool tensor, "
                f"got a {condition.dtype} tensor of shape {tuple(condition.shape)}"
            )
        condition = bool(condition)
    if not isinstance(condition, bool):
        raise TypeError(f"check_true({name!r}): condition must be a bool, got {type(condition).__name__}")
    if not condition:
        raise AssertionError(f"✗ {name}" + (f": {why}" if why else ""))
    print(f"✓ {name}")


def check_raises(name: str, fn, exc: type[BaseException] = Exception, match: str | None = None):
    """Assert that ``fn()`` raises ``exc`` (with ``match`` in its message); print one line and
    return the exception so the notebook can show its message."""
    if not callable(fn):
        raise TypeError(f"check_raises({name!r}): fn must be callable with no arguments")
    try:
        fn()
    except exc as e:  # the error we expect
        if match is not None and match not in str(e):
            raise AssertionError(
                f"✗ {name}: raised {type(e).__name__} as expected, but its message does not "
                f"contain {match!r}: {e}"
            ) from e
        print(f"✓ {name}  raises {type(e).__name__}")
        return e
    raise AssertionError(f"✗ {name}: expected {exc.__name__}, but nothing was raised")
