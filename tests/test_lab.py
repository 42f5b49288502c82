"""`make lab` starts a JupyterLab server that serves the notebooks (headless, on a free port), and
no command overwrites a learner's copy in exercises/."""
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from _servers import free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent


def learner_copy(folder: Path) -> Path:
    """Write the learner copies into folder, then edit one as a learner would; return it."""
    subprocess.run(["make", "--no-print-directory", "exercises", f"EXERCISES={folder}"], cwd=ROOT,
                   check=True, capture_output=True)
    mine = folder / "01_tensors_autograd.ipynb"
    nb = json.loads(mine.read_text())
    nb["cells"].append({"cell_type": "markdown", "id": "mine", "metadata": {}, "source": ["my notes"]})
    mine.write_text(json.dumps(nb))
    return mine


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_exercises_never_overwrites_a_learner_copy(tmp_path):
    mine = learner_copy(tmp_path)
    before = mine.read_bytes()
    (tmp_path / "02_norms.ipynb").unlink()           # a missing copy is written again
    out = subprocess.run(["make", "--no-print-directory", "exercises", f"EXERCISES={tmp_path}"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert mine.read_bytes() == before and (tmp_path / "02_norms.ipynb").exists(), out
    # refreshing asks first; anything but yes leaves the file alone
    r = subprocess.run(["make", "--no-print-directory", "refresh-exercise", "NB=01",
                        f"EXERCISES={tmp_path}"], cwd=ROOT, input="no\n", capture_output=True, text=True)
    assert r.returncode != 0 and mine.read_bytes() == before, r.stdout + r.stderr
    r = subprocess.run(["make", "--no-print-directory", "refresh-exercise", "NB=01",
                        f"EXERCISES={tmp_path}"], cwd=ROOT, input="yes\n", capture_output=True, text=True)
    assert r.returncode == 0 and b"my notes" not in mine.read_bytes(), r.stdout + r.stderr
    kept = list((tmp_path / ".backup").glob("01_tensors_autograd.*.ipynb"))
    assert len(kept) == 1 and kept[0].read_bytes() == before


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_serves_the_notebooks_and_keeps_the_learner_copy(tmp_path):
    mine = learner_copy(tmp_path)
    before = mine.read_bytes()
    port, token = free_port(), "course-test-token"
    flags = f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.token={token}"
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_FLAGS={flags}",
                             f"EXERCISES={tmp_path}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
    try:
        deadline, listing = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    listing = json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        if listing is None:
            if proc.poll() is not None:
                log = proc.stdout.read().decode(errors="replace")[-3000:]
            else:
                log = "(still running)"
            pytest.fail(f"JupyterLab did not answer on port {port} (exit code {proc.poll()}):\n{log}")
        names = {item["name"] for item in listing["content"]}
        assert "00_start_here.ipynb" in names and "01_tensors_autograd.ipynb" in names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
        assert mine.read_bytes() == before, "make lab overwrote the learner's copy"
    finally:
        stop_group(proc)
