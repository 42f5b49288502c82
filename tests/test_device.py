"""course_utils.device: device choice, Triton mode, environment summary."""
import os

import pytest
import torch

from course_utils import device


def test_pick_device_defaults_to_cuda_or_cpu(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.pick_device().type == expected
    assert device.pick_device("cpu").type == "cpu"


def test_mps_is_never_the_default(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.pick_device().type != "mps"


def test_pick_device_rejects_unknown_and_unavailable(monkeypatch):
    with pytest.raises(ValueError, match="one of .*'cuda', 'cpu', 'mps'"):
        device.pick_device("tpu")
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert device.pick_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA was asked for"):
            device.pick_device("cuda")


def test_triton_interpreter_is_set_without_a_gpu():
    import course_utils  # noqa: F401 - importing it configures Triton

    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
        assert device.triton_mode() in ("interpreter", "unavailable")
    else:
        assert device.triton_mode() == "compiled"


def test_triton_unavailable_when_it_cannot_import(monkeypatch):
    monkeypatch.setattr(device, "_triton_version", lambda: None)
    assert device.triton_mode() == "unavailable"


def test_env_summary_has_the_lines_notebook_00_prints(capsys):
    s = device.env_summary()
    for key in ("python", "torch", "triton", "device", "triton mode"):
        assert key in s
    device.print_env()
    assert "triton mode" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only chosen without a GPU")
def test_warns_when_triton_was_imported_first():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import warnings, torch.nn.attention.bias\n"   # this torch module imports triton
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import course_utils\n"
            "print([str(x.message)[:40] for x in w])")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "triton was imported before course_utils" in r.stdout, r.stdout + r.stderr
