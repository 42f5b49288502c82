"""The course itself as data: its lessons, what each needs first, and the map drawn from that.

Notebook 00 draws the map; tests/test_packaging.py checks that the README lists the same lessons.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Lesson", "LESSONS", "lesson", "prerequisites", "draw_course_map"]


@dataclass(frozen=True)
class Lesson:
    id: str                    # "07"
    file: str                  # "07_flash_attention.ipynb"
    title: str
    minutes: int               # time with the exercises, by tools/pacing.py's rule (README)
    requires: tuple[str, ...]  # direct prerequisites (ids)
    part: str                  # "basics", "model", "kernels", "distributed", "rl"


LESSONS = (
    Lesson("00", "00_start_here.ipynb", "Start here", 50, (), "basics"),
    Lesson("01", "01_tensors_autograd.ipynb", "Tensors and autograd", 150, ("00",), "basics"),
    Lesson("02", "02_norms.ipynb", "Norms, residuals, dropout", 180, ("01",), "model"),
    Lesson("03", "03_rope.ipynb", "RoPE", 150, ("01",), "model"),
    Lesson("04", "04_attention.ipynb", "Attention: MHA → MQA → GQA → MLA", 190, ("02", "03"), "model"),
    Lesson("05", "05_moe.ipynb", "MoE routing", 205, ("01",), "model"),
    Lesson("06", "06_triton_basics.ipynb", "Triton from zero", 245, ("01",), "kernels"),
    Lesson("07", "07_flash_attention.ipynb", "FlashAttention in Triton", 240, ("04", "06"), "kernels"),
    Lesson("08", "08_precision.ipynb", "Precision and counting", 205, ("01",), "kernels"),
    Lesson("09", "09_inference.ipynb", "Inference", 210, ("04", "08"), "kernels"),
    Lesson("10", "10_collectives.ipynb", "Collectives with real processes", 210, ("01",), "distributed"),
    Lesson("11", "11_zero.ipynb", "ZeRO", 300, ("08", "10"), "distributed"),
    Lesson("12", "12_parallelism.ipynb", "Parallelism beyond data", 225, ("05", "07", "10"), "distributed"),
    Lesson("13", "13_pipeline.ipynb", "Pipeline schedules", 200, ("10",), "distributed"),
    Lesson("14", "14_mdp_bellman.ipynb", "MDPs and the Bellman equations", 185, ("01",), "rl"),
)
_BY_ID = {x.id: x for x in LESSONS}


def lesson(lesson_id: str) -> Lesson:
    """The lesson with this two-digit id ("00" … "15"; only lessons that exist are listed)."""
    if lesson_id not in _BY_ID:
        raise KeyError(f"lesson: unknown id {lesson_id!r}; expected one of {sorted(_BY_ID)}")
    return _BY_ID[lesson_id]


def prerequisites(lesson_id: str) -> set[str]:
    """Every lesson to finish before ``lesson_id`` (direct and indirect), as a set of ids."""
    todo, seen = list(lesson(lesson_id).requires), set()
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo.extend(lesson(x).requires)
    return seen


def draw_course_map(ax=None, highlight: str | None = None):
    """Draw the lessons as a graph, coloured by part; with ``highlight``, that lesson is red and
    its prerequisites orange. Returns the axes."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from .plotting import COLORS, draw_dag  # noqa: PLC0415

    part_color = {"basics": COLORS["light"], "model": "#DCEBFA", "kernels": "#FCE9D6",
                  "distributed": "#DDF2EA", "rl": "#F3E1EC"}
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 5.6))
    colors = {x.id: part_color[x.part] for x in LESSONS}
    if highlight is not None:
        for p in prerequisites(highlight):
            colors[p] = COLORS["orange"]
        colors[lesson(highlight).id] = COLORS["red"]
    labels = {x.id: f"{x.id} {x.title}\n~{x.minutes // 60} h {x.minutes % 60:02d}" if x.minutes >= 60
              else f"{x.id} {x.title}\n~{x.minutes} min" for x in LESSONS}
    labels = {k: v.replace(": MHA → MQA → GQA → MLA", "\nMHA→MQA→GQA→MLA").replace(
        " with real processes", "\nwith real processes").replace(
        " and the Bellman equations", "\n& Bellman").replace(", residuals, dropout", ",\nresiduals, dropout").replace(
        " in Triton", "\nin Triton").replace(" and counting", "\nand counting").replace(" and autograd", "\nand autograd").replace(
        "Pipeline schedules", "Pipeline\nschedules").replace(" beyond data", "\nbeyond data").replace(" from zero", "\nfrom zero")
        for k, v in labels.items()}
    edges = [(r, x.id) for x in LESSONS for r in x.requires]
    draw_dag(ax, [x.id for x in LESSONS], edges, labels=labels, colors=colors, box_width=1.85,
             box_height=0.62, gap=0.45, fontsize=9)
    title = "Course map" + (f": what to finish before {highlight}" if highlight else "")
    ax.set_title(title)
    return ax
