"""Hygiene of the committed notebooks: what a learner opens must be valid, executed in order,
free of stray errors and machine paths, and small."""
import base64
import json
import re
import struct
from pathlib import Path

import nbformat
import pytest
import torch

from course_utils import course

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMALL_FONT = re.compile(r"(\b(fontsize|labelsize|titlesize)|[(,]\s*size)\s*=\s*([0-8](\.\d*)?)\b(?!\s*[*/+-])")
MACHINE_PATH = re.compile(r"/(root|tmp|home/[^/\s]+|Users/[^/\s]+|work)/|\.venv/|site-packages|[A-Z]:\\\\Users")


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def test_there_are_notebooks_and_they_are_in_the_course_map():
    names = {p.name for p in NOTEBOOKS}
    assert "00_start_here.ipynb" in names and "01_tensors_autograd.ipynb" in names
    assert names <= {x.file for x in course.LESSONS}, names - {x.file for x in course.LESSONS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
class TestNotebook:
    def test_valid(self, path):
        nbformat.validate(nbformat.read(path, as_version=4))

    def test_small(self, path):
        assert path.stat().st_size < 2_000_000, f"{path.name} is {path.stat().st_size / 1e6:.2f} MB"

    def test_executed_top_to_bottom(self, path):
        counts = [c.execution_count for c in code_cells(nbformat.read(path, as_version=4))]
        assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts}"

    def test_no_stored_errors_except_on_purpose(self, path):
        for c in code_cells(nbformat.read(path, as_version=4)):
            for o in c.outputs:
                if o.output_type == "error":
                    assert "NBVAL_RAISES_EXCEPTION" in c.source, f"stored {o.ename} in:\n{c.source[:200]}"

    def test_no_machine_paths_in_outputs(self, path):
        for c in code_cells(nbformat.read(path, as_version=4)):
            text = json.dumps([{k: v for k, v in o.items() if k != "data"} for o in c.outputs])
            text += json.dumps([o.get("data", {}).get("text/plain", "") for o in c.outputs])
            m = MACHINE_PATH.search(text)
            assert m is None, f"machine path {m.group(0)!r} in the output of:\n{c.source[:200]}"

    def test_has_checks_a_widget_and_a_title(self, path):
        nb = nbformat.read(path, as_version=4)
        src = "\n".join(c.source for c in code_cells(nb))
        outputs = json.dumps([c.outputs for c in code_cells(nb)], ensure_ascii=False)
        assert "✓" in outputs, "no check printed a ✓ line"
        assert "interact_figure(" in src, "no widget (plotting.interact_figure)"
        first = nb.cells[0]
        assert first.cell_type == "markdown" and re.match(rf"# {path.name[:2]} · ", first.source)

    def test_widget_cells_ignore_their_output(self, path):
        for c in code_cells(nbformat.read(path, as_version=4)):
            if "interact_figure(" in c.source and "def interact_figure" not in c.source:
                assert c.source.lstrip().startswith("# NBVAL_IGNORE_OUTPUT"), c.source[:200]

    def test_uses_the_course_plot_style(self, path):
        src = "\n".join(c.source for c in code_cells(nbformat.read(path, as_version=4)))
        assert "plotting.use_style()" in src
        assert "!pip" not in src and "%pip" not in src

    def test_no_library_versions_in_compared_outputs(self, path):
        """A version printed into a compared output fails nbval on every other release."""
        versions = {torch.__version__, torch.__version__.split("+")[0]}
        for c in code_cells(nbformat.read(path, as_version=4)):
            if c.source.lstrip().startswith("# NBVAL_IGNORE_OUTPUT"):
                continue
            text = json.dumps([o.get("text", "") for o in c.outputs] +
                              [o.get("data", {}).get("text/plain", "") for o in c.outputs])
            for v in versions:
                assert v not in text, f"torch's version {v} in a compared output of:\n{c.source[:200]}"

    def test_figures_are_readable(self, path):
        """No strip of tiny panels: every figure at most 4.5 times as wide as it is high, at least
        200 px high; no text under 9 pt in the notebook's own drawing code."""
        for c in code_cells(nbformat.read(path, as_version=4)):
            m = SMALL_FONT.search(c.source)
            assert m is None, f"{m.group(0)!r}: text under 9 pt in:\n{c.source[:200]}"
            for o in c.outputs:
                png = o.get("data", {}).get("image/png")
                if png:
                    w, h = struct.unpack(">II", base64.b64decode(png)[16:24])
                    assert h >= 200 and w <= 4.5 * h, f"a {w}x{h} px figure from:\n{c.source[:200]}"


def test_library_figures_use_no_text_under_9pt():
    for p in sorted((ROOT / "course_utils").glob("*.py")):
        m = SMALL_FONT.search(p.read_text(encoding="utf-8"))
        assert m is None, f"{p.name}: {m.group(0)!r} (text under 9 pt)"
