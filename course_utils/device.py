"""Device choice, Triton mode and an environment summary.

The course runs on a CPU first and uses a CUDA GPU when there is one. Triton kernels are compiled
on a GPU; without one they run under Triton's interpreter (``TRITON_INTERPRET=1``), which must be
set before a kernel is defined, so :func:`configure_triton` runs when ``course_utils`` is imported.
"""
from __future__ import annotations

import os
import platform
import sys

import torch

__all__ = ["pick_device", "configure_triton", "triton_mode", "env_summary", "print_env"]

_CHOICES = ("cuda", "cpu", "mps")


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA if present, else the CPU.

    ``prefer`` (or the environment variable ``COURSE_DEVICE``) may name ``"cuda"``, ``"cpu"`` or
    ``"mps"``. Apple's MPS is never picked by default: some ops there have given wrong numbers, and
    a course that checks every number should not start on them. Opt in with ``prefer="mps"``.
    """
    prefer = prefer if prefer is not None else (os.environ.get("COURSE_DEVICE") or None)
    if prefer is not None and prefer not in _CHOICES:
        raise ValueError(f"pick_device: prefer must be one of {_CHOICES} or None, got {prefer!r}")
    if prefer == "cpu":
        return torch.device("cpu")
    if prefer == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RuntimeError("pick_device: MPS was asked for, but this PyTorch build sees no MPS device")
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if prefer == "cuda":
        raise RuntimeError("pick_device: CUDA was asked for, but torch.cuda.is_available() is False")
    return torch.device("cpu")


def configure_triton() -> str:
    """Without a CUDA GPU, set ``TRITON_INTERPRET=1`` (unless the user set it) so that Triton
    kernels run on the CPU. Returns the resulting :func:`triton_mode`."""
    if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
        os.environ["TRITON_INTERPRET"] = "1"
        if "triton" in sys.modules:
            import warnings  # noqa: PLC0415

            warnings.warn("triton was imported before course_utils, so Triton's own library was "
                          "built for compiled mode and kernels may fail in the interpreter "
                          "('Cannot call @triton.jit'd outside of the scope of a kernel'). Import "
                          "course_utils first (or set TRITON_INTERPRET=1 before starting Python).",
                          stacklevel=2)
    return triton_mode()


def _triton_version() -> str | None:
    try:
        import triton  # noqa: PLC0415 - optional dependency
    except Exception:  # noqa: BLE001 - not installable on macOS/Windows, or broken
        return None
    return getattr(triton, "__version__", "unknown")


def triton_mode() -> str:
    """``"compiled"`` (a CUDA GPU), ``"interpreter"`` (``TRITON_INTERPRET=1``, runs on the CPU) or
    ``"unavailable"`` (Triton does not import, or no GPU and the interpreter is switched off)."""
    if _triton_version() is None:
        return "unavailable"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreter"
    return "compiled" if torch.cuda.is_available() else "unavailable"


def env_summary() -> dict[str, str]:
    """What notebook 00 prints: versions, the device and the Triton mode."""
    import matplotlib  # noqa: PLC0415
    import numpy  # noqa: PLC0415

    from .launch import default_start_method  # noqa: PLC0415

    try:
        import ipywidgets  # noqa: PLC0415
        widgets = ipywidgets.__version__
    except Exception:  # noqa: BLE001
        widgets = "not installed"
    dev = pick_device()
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(0)
        dev_text = f"cuda ({torch.cuda.device_count()} × {name})"
    else:
        dev_text = dev.type
    backends = [b for b, ok in (("gloo", torch.distributed.is_gloo_available()),
                                ("nccl", torch.distributed.is_nccl_available())) if ok]
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "triton": _triton_version() or "not installed",
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
        "ipywidgets": widgets,
        "cpu cores": str(os.cpu_count()),
        "device": dev_text,
        "triton mode": triton_mode(),
        "distributed backends": ", ".join(backends) or "none",
        "process start method": default_start_method(),
    }


def print_env() -> None:
    """Print :func:`env_summary` as aligned lines."""
    summary = env_summary()
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
