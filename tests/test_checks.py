"""course_utils.checks: one stable line on success, a clear AssertionError on failure."""
import numpy as np
import pytest
import torch

from course_utils import check, check_raises, check_true
from course_utils.checks import default_atol


def test_pass_prints_the_bound_not_the_error(capsys):
    check("sum", torch.tensor([1.0, 2.0]) + 1e-7, torch.tensor([1.0, 2.0]), atol=1e-6)
    assert capsys.readouterr().out == "✓ sum  max|err| < 1e-06\n"


def test_default_tolerance_follows_the_loosest_dtype(capsys):
    check("x", torch.ones(3, dtype=torch.float64), torch.ones(3))
    assert capsys.readouterr().out.endswith("max|err| < 1e-05\n")
    assert default_atol(torch.float64) == 1e-10
    assert default_atol(torch.int64) == 0.0


def test_python_float_is_compared_as_float64(capsys):
    check("closed form", torch.tensor(1 / 3, dtype=torch.float64), 1 / 3)
    assert capsys.readouterr().out.endswith("< 1e-10\n")


def test_integers_are_exact(capsys):
    check("ints", torch.arange(4), [0, 1, 2, 3])
    assert capsys.readouterr().out == "✓ ints  exact\n"
    with pytest.raises(AssertionError, match=r"1 of 4 elements differ.*index \(2,\): got 5, expected 2"):
        check("ints", torch.tensor([0, 1, 5, 3]), torch.arange(4))


def test_rtol_is_shown(capsys):
    check("rel", torch.tensor([100.0]), torch.tensor([100.001]), atol=1e-8, rtol=1e-4)
    assert capsys.readouterr().out == "✓ rel  max|err| < 1e-08 + 1e-04·|ref|\n"


def test_failure_names_worst_element_and_tolerance():
    got = torch.zeros(3, 4)
    ref = torch.zeros(3, 4)
    ref[2, 1] = 0.5
    ref[0, 0] = 0.1
    with pytest.raises(AssertionError) as e:
        check("grid", got, ref, atol=1e-3)
    msg = str(e.value)
    assert "✗ grid: max|err| = 0.5 exceeds the tolerance 1e-03" in msg
    assert "worst element at index (2, 1): got 0, expected 0.5" in msg
    assert "2 of 12 elements out of tolerance; shape (3, 4)" in msg


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(AssertionError, match=r"shape \(2, 3\) does not match the reference shape \(3, 2\)"):
        check("s", torch.zeros(2, 3), torch.zeros(3, 2))


def test_nan_fails():
    with pytest.raises(AssertionError, match="exceeds"):
        check("nan", torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))


def test_numpy_and_numbers_are_accepted(capsys):
    check("np", np.array([1.0, 2.0]), torch.tensor([1.0, 2.0], dtype=torch.float64))
    check("num", 3, 3)
    assert capsys.readouterr().out.count("✓") == 2


def test_bad_arguments():
    with pytest.raises(TypeError, match="must be a tensor, a number or an array-like"):
        check("obj", object(), 1.0)
    with pytest.raises(ValueError, match="atol and rtol must be >= 0"):
        check("neg", 1.0, 1.0, atol=-1)
    with pytest.raises(TypeError, match="non-empty string"):
        check("", 1.0, 1.0)


def test_check_true(capsys):
    check_true("yes", True)
    check_true("tensor yes", torch.tensor(True))
    assert capsys.readouterr().out == "✓ yes\n✓ tensor yes\n"
    with pytest.raises(AssertionError, match="✗ no: because"):
        check_true("no", False, "because")
    with pytest.raises(TypeError, match="one-element bool tensor"):
        check_true("many", torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="must be a bool"):
        check_true("int", 1)


def test_check_raises(capsys):
    err = check_raises("view fails", lambda: torch.zeros(2, 3).t().view(6), RuntimeError, match="view")
    assert isinstance(err, RuntimeError)
    assert capsys.readouterr().out == "✓ view fails  raises RuntimeError\n"
    with pytest.raises(AssertionError, match="nothing was raised"):
        check_raises("no error", lambda: None, ValueError)
    with pytest.raises(AssertionError, match="does not contain 'xyz'"):
        check_raises("wrong message", lambda: int("a"), ValueError, match="xyz")
