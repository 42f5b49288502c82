"""Print how long each notebook took under nbval (the budget is 60 s on a 2-core CPU)."""
from collections import defaultdict

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
