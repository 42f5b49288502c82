"""Test-session set-up: Triton's mode before anything imports Triton, and notebook run times."""
import os
from collections import defaultdict

import torch

# Triton decides between compiled and interpreted functions (its own library's too) when they are
# defined, i.e. when triton is first imported; some torch modules import it (torch.nn.attention
# .bias does), so course_utils' own setting can come too late for a test file that imports those
# first. Set it here, before any test module or notebook kernel (which inherits it) starts.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook run times (nbval, kernel start included)")
    for path, seconds in sorted(_seconds.items()):
        flag = "  <- over the 60 s budget" if seconds > 60 else ""
        terminalreporter.write_line(f"{path:<44} {seconds:6.1f} s{flag}")
