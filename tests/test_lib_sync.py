"""`make lib`: the generated modules are exactly what the notebooks' #@save cells say."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import export_lib  # noqa: E402


def test_generated_modules_are_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "export_lib.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_generated_modules_say_where_they_come_from():
    for path, text in export_lib.plan().items():
        if text is not None:
            assert export_lib.GENERATED in text and "do not edit by hand" in text, path


def test_topic_names_follow_the_notebook():
    assert export_lib.topic(Path("notebooks/03_rope.ipynb")) == "rope"
    assert export_lib.topic(Path("notebooks/01_tensors_autograd.ipynb")) == "tensors_autograd"


def test_render_picks_only_save_cells(tmp_path, monkeypatch):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 42 · Demo"),
        nbformat.v4.new_code_cell("#@save\nimport torch\ndef f():\n    return 1"),
        nbformat.v4.new_code_cell("x = f()"),
        nbformat.v4.new_code_cell("#@save\ndef g():\n    return 2"),
    ])
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "42_demo.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setattr(export_lib, "ROOT", tmp_path)
    text = export_lib.render(path)
    assert text.startswith('"""42 · Demo\n')
    assert "def f():" in text and "def g():" in text and "x = f()" not in text
    compile(text, "demo.py", "exec")
