"""Helpers for the course notebooks.

Infrastructure (hand-written): ``checks``, ``device``, ``plotting``, ``exercises``, ``launch``.
Lesson code (generated from the notebooks' ``#@save`` cells by ``make lib``; do not edit by hand):
one module per notebook, named after it (``notebooks/01_tensors_autograd.ipynb`` ->
``course_utils/tensors_autograd.py``).

Importing the package sets ``TRITON_INTERPRET=1`` when no CUDA GPU is present, so Triton kernels
defined afterwards run on the CPU.
"""
import os as _os

# Ask CUDA "how many GPUs?" through NVML, which does not initialise CUDA in this process: a process
# that initialised CUDA cannot fork ranks that use it (run_distributed with backend="nccl").
_os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

from .checks import check, check_raises, check_true  # noqa: E402
from .device import configure_triton, pick_device  # noqa: E402

configure_triton()

__all__ = ["check", "check_true", "check_raises", "pick_device"]
__version__ = "0.1.0"
