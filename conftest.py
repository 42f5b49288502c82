"""Test-session set-up: Triton's mode before anything imports Triton, notebook run times, and a
guard that the suite never changes a learner's files in exercises/."""
import hashlib
import os
from collections import defaultdict
from pathlib import Path

import torch

# Triton decides between compiled and interpreted functions (its own library's too) when they are
# defined, i.e. when triton is first imported; some torch modules import it (torch.nn.attention
# .bias does), so course_utils' own setting can come too late for a test file that imports those
# first. Set it here, before any test module or notebook kernel (which inherits it) starts.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_seconds: dict[str, float] = defaultdict(float)
_EXERCISES = Path(__file__).resolve().parent / "exercises"
_learner_files: dict[str, str] = {}


def _snapshot() -> dict[str, str]:
    return {str(p.relative_to(_EXERCISES)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(_EXERCISES.rglob("*")) if p.is_file()} if _EXERCISES.is_dir() else {}


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller, not each xdist worker
        _learner_files.update(_snapshot())


def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return
    now = _snapshot()
    changed = sorted(k for k, v in _learner_files.items() if now.get(k) != v)
    if changed:
        session.config._learner_files_changed = changed  # reported in the summary below
        session.exitstatus = 1


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    changed = getattr(terminalreporter.config, "_learner_files_changed", None)
    if changed:
        terminalreporter.section("learner files changed by the test suite (a bug)", red=True)
        for k in changed:
            terminalreporter.write_line(f"exercises/{k}")
    if not _seconds:
        return
    terminalreporter.section("notebook run times (nbval, kernel start included)")
    for path, seconds in sorted(_seconds.items()):
        flag = "  <- over the 60 s budget" if seconds > 60 else ""
        terminalreporter.write_line(f"{path:<44} {seconds:6.1f} s{flag}")
