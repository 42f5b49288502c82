"""course_utils.plotting and course_utils.course: drawing helpers and the course map."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

from course_utils import course, plotting  # noqa: E402


def test_draw_dag_layers_sources_first():
    fig, ax = plt.subplots()
    pos = plotting.draw_dag(ax, ["a", "b", "c", "d"], [("a", "b"), ("b", "d"), ("a", "c"), ("c", "d")])
    assert pos["a"][0] < pos["b"][0] < pos["d"][0]
    assert pos["b"][0] == pos["c"][0] and pos["b"][1] != pos["c"][1]
    plt.close(fig)


def test_draw_dag_rejects_cycles_and_unknown_nodes():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="cycle"):
        plotting.draw_dag(ax, ["a", "b"], [("a", "b"), ("b", "a")])
    with pytest.raises(ValueError, match="not in nodes"):
        plotting.draw_dag(ax, ["a"], [("a", "z")])
    with pytest.raises(ValueError, match="direction"):
        plotting.draw_dag(ax, ["a"], [], direction="RL")
    plt.close(fig)


def test_draw_grid_shapes():
    fig, ax = plt.subplots()
    plotting.draw_grid(ax, [1, 2, 3])
    plotting.draw_grid(ax, [[1, 2], [3, 4]], highlight=[(0, 1)])
    with pytest.raises(ValueError, match="1-D or 2-D"):
        plotting.draw_grid(ax, [[[1]]])
    plt.close(fig)


def test_interact_figure_draws_one_figure_and_redraws_it_in_place():
    import ipywidgets

    calls = []

    def draw(n):
        calls.append(n)
        plt.subplots()

    slider = ipywidgets.IntSlider(value=3, min=1, max=5)
    open_before = len(plt.get_fignums())
    plotting.interact_figure(draw, n=slider)
    assert calls == [3]
    slider.value = 4            # what moving the slider does in a live kernel
    assert calls == [3, 4]
    assert len(plt.get_fignums()) == open_before, "interact_figure left figures open"
    with pytest.raises(TypeError, match="must be an ipywidgets control"):
        plotting.interact_figure(lambda n: None, n=(1, 5))


def test_a_widget_cell_leaves_one_figure_and_no_output_widget(tmp_path):
    """Executed as nbclient executes learner notebooks: the cell's output is one PNG (no second
    copy), and nbclient gets no Output widget to mirror. Mirroring one makes nbclient send on the
    kernel's shell socket while it polls that socket for the reply, which lost replies until the
    cell timeout (the 120 s stall of test_exercises, issue 14)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import ipywidgets, matplotlib.pyplot as plt\n"
        "from course_utils import plotting\n"
        "plotting.use_style()\n"
        "plotting.interact_figure(lambda k: plt.subplots(), k=ipywidgets.IntSlider(value=2))")])
    client = NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    outputs = nb.cells[0].outputs
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1, outputs
    assert not any(type(c).__name__ == "OutputWidget" for c in client.comm_objects.values())


def test_course_map_prerequisites():
    assert course.prerequisites("00") == set()
    assert course.prerequisites("07") == {"00", "01", "02", "03", "04", "06"}
    with pytest.raises(KeyError, match="unknown id"):
        course.lesson("99")
    ax = course.draw_course_map(highlight="11")
    assert "11" in ax.get_title()
    plt.close(ax.figure)


def test_lessons_are_numbered_in_order():
    """Ids follow the curriculum's numbering (00-15); the map lists only lessons that exist."""
    ids = [x.id for x in course.LESSONS]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and all("00" <= i <= "15" for i in ids)
    assert {x.file for x in course.LESSONS} == {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    for x in course.LESSONS:
        assert x.file.startswith(x.id + "_") and all(r < x.id for r in x.requires)


def test_draw_grid_leaves_nan_blank():
    import numpy as np

    fig, ax = plt.subplots()
    plotting.draw_grid(ax, np.array([[1.0, np.nan], [2.0, 3.0]]), fmt="{:.0f}")
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]
    plt.close(fig)


def test_draw_grid_text_is_legible_on_dark_cells():
    fig, ax = plt.subplots()
    plotting.draw_grid(ax, [[0.0, 1.0]], cmap="viridis", fmt="{:.0f}")  # viridis: dark at 0
    assert [t.get_color() for t in ax.texts] == ["white", plotting.COLORS["ink"]]
    plt.close(fig)
