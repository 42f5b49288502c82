"""The two set-up routes install the same things, and the README matches what CI runs."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import course

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def norm(req: str) -> str:
    return re.sub(r"\s+", "", req).replace('"', "'").lower()


def test_environment_yml_installs_what_pyproject_declares():
    yaml = pytest.importorskip("yaml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "--editable ." in pip, "the conda route must install the course itself"
    listed = {norm(p) for p in pip if not p.startswith("-")}
    declared = {norm(p) for p in project["dependencies"]}
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject: {declared - listed}"


def test_triton_only_where_it_installs():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    triton = [d for d in deps if d.startswith("triton")]
    assert triton and "platform_system == 'Linux'" in triton[0]


def test_ci_runs_the_readme_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^exec make test$", ci, re.M)
    assert "make lab" in readme and "make test" in readme


def test_readme_lists_every_lesson():
    readme = (ROOT / "README.md").read_text()
    for x in course.LESSONS:
        assert x.file in readme, f"README does not list {x.file}"


def test_makefile_targets_exist():
    mk = (ROOT / "Makefile").read_text()
    for target in ("lab", "test", "lib", "exercises", "notebooks"):
        assert re.search(rf"^{target}:", mk, re.M), target
    assert "--dist loadfile" in mk  # nbval cells of one notebook must stay on one worker


def _fake_old_python(folder):
    """An executable that answers like Python 3.9 (what `make` checks), for the tests below."""
    exe = folder / "python3.9"
    exe.write_text('#!/bin/sh\ncase "$1" in --version) echo "Python 3.9.18";; *) exit 1;; esac\n')
    exe.chmod(0o755)
    return exe


@pytest.mark.skipif(shutil.which("make") is None or sys.platform.startswith("win"), reason="needs make")
def test_make_refuses_an_old_python_with_a_hint(tmp_path):
    old = _fake_old_python(tmp_path)
    r = subprocess.run(["make", "--no-print-directory", "venv", f"PYTHON={old}", f"VENV={tmp_path}/v1"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "needs Python 3.10 or newer" in r.stdout + r.stderr, r.stdout + r.stderr
    (tmp_path / "v2" / "bin").mkdir(parents=True)             # a .venv an old Python made earlier
    (tmp_path / "v2" / "bin" / "python").symlink_to(old)
    r = subprocess.run(["make", "--no-print-directory", "venv", f"VENV={tmp_path}/v2"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and "make clean" in r.stdout + r.stderr, r.stdout + r.stderr


def test_make_takes_the_cpu_torch_where_there_is_no_nvidia_gpu():
    mk = (ROOT / "Makefile").read_text()
    assert "TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu" in mk
    assert "command -v nvidia-smi" in mk and "--index-url $(TORCH_CPU_INDEX)" in mk
