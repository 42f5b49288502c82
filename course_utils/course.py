"""The course itself as data: its lessons, what each needs first, and the map drawn from that.

Notebook 00 draws the map; tests/test_packaging.py checks that the README lists the same lessons.
"""
from __future__ import annotations

import textwrap
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
    Lesson("07", "07_flash_attention.ipynb", "FlashAttention in Triton", 330, ("04", "06"), "kernels"),
    Lesson("08", "08_precision.ipynb", "Precision and counting", 205, ("01",), "kernels"),
    Lesson("09", "09_inference.ipynb", "Inference", 210, ("04", "08"), "kernels"),
    Lesson("10", "10_collectives.ipynb", "Collectives with real processes", 210, ("01",), "distributed"),
    Lesson("11", "11_zero.ipynb", "ZeRO", 300, ("08", "10"), "distributed"),
    Lesson("12", "12_parallelism.ipynb", "Parallelism beyond data", 225, ("05", "07", "10"), "distributed"),
    Lesson("13", "13_pipeline.ipynb", "Pipeline schedules", 200, ("10",), "distributed"),
    Lesson("14", "14_mdp_bellman.ipynb", "MDPs and the Bellman equations", 185, ("01",), "rl"),
    Lesson("15", "15_rl_for_llms.ipynb", "RL for LLMs", 200, ("14",), "rl"),
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


PARTS = ("basics", "model", "kernels", "distributed", "rl")
PART_TITLES = {"basics": "start", "model": "the model", "kernels": "kernels and numbers",
               "distributed": "training at scale", "rl": "reinforcement learning"}


def draw_course_map(ax=None, highlight: str | None = None):
    """Draw the lessons as a graph: one column per part of the course, lessons in order down each
    column, an arrow from each lesson to those that build on it. With ``highlight``, that lesson is
    red and its prerequisites orange. Returns the axes."""
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import FancyBboxPatch  # noqa: PLC0415

    from .plotting import COLORS  # noqa: PLC0415

    part_color = {"basics": COLORS["light"], "model": "#DCEBFA", "kernels": "#FCE9D6",
                  "distributed": "#DDF2EA", "rl": "#F3E1EC"}
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 6.8))
    colors = {x.id: part_color[x.part] for x in LESSONS}
    if highlight is not None:
        for p in prerequisites(highlight):
            colors[p] = COLORS["orange"]
        colors[lesson(highlight).id] = COLORS["red"]
    w, h, dx, dy = 2.1, 0.95, 2.6, 1.2              # box size and spacing, in data units
    pos = {}
    for col, part in enumerate(PARTS):
        members = [x for x in LESSONS if x.part == part]
        top = (len(members) - 1) / 2 if part in ("basics", "rl") else 1.5  # short columns centred
        for row, x in enumerate(members):
            pos[x.id] = (col * dx, (top - row) * dy)
        ax.text(col * dx, 2.3 * dy, PART_TITLES[part], ha="center", va="center", fontsize=10,
                color=COLORS["ink"], style="italic")
    # Every lesson builds on 01 (and 00): those arrows would cross the whole map, so the start
    # column says it in words instead; prerequisites() still counts them.
    ax.text(0, pos["01"][1] - 1.0 * dy, "every lesson\nbuilds on these", ha="center", va="center",
            fontsize=9, color=COLORS["grey"], style="italic")
    for x in LESSONS:                                # arrows first, boxes on top
        for r in x.requires:
            if lesson(r).part == "basics" and x.part != "basics":
                continue
            (xa, ya), (xb, yb) = pos[r], pos[x.id]
            same = xa == xb
            start = (xa, ya - h / 2) if same else (xa + w / 2, ya)
            end = (xb, yb + h / 2) if same else (xb - w / 2, yb)
            bend = 0.0 if (same and abs(ya - yb) <= dy * 1.01) else (-0.35 if same else 0.08)
            ax.annotate("", xy=end, xytext=start, arrowprops=dict(
                arrowstyle="-|>", color=COLORS["grey"], lw=1.0, shrinkA=0, shrinkB=0,
                connectionstyle=f"arc3,rad={bend}"))
    for x in LESSONS:
        cx, cy = pos[x.id]
        ax.add_patch(FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                    fc=colors[x.id], ec=COLORS["ink"], lw=0.8))
        t = f"~{x.minutes // 60} h {x.minutes % 60:02d}" if x.minutes >= 60 else f"~{x.minutes} min"
        title = textwrap.fill(f"{x.id} " + x.title.replace(": MHA → MQA → GQA → MLA", ""), 20)
        ax.text(cx, cy, f"{title}\n{t}", ha="center", va="center", fontsize=9)
    xs, ys = zip(*pos.values())
    ax.set_xlim(min(xs) - w / 2 - 0.1, max(xs) + w / 2 + 0.1)
    ax.set_ylim(min(ys) - h / 2 - 0.1, 2.3 * dy + 0.3)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title("Course map" + (f": what to finish before {highlight}" if highlight else ""))
    return ax
