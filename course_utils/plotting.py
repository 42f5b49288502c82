"""One plotting style and the few drawing helpers the notebooks share.

Figures are PNGs at 120 dpi with no text under 9 pt (readable on a projector, and a committed
notebook still stays under 2 MB). Every widget in
the course sits on a plain drawing function: :func:`interact_figure` first draws the function's
default view as a static figure, which stays in the saved notebook, then adds the live controls.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

__all__ = ["COLORS", "use_style", "figure", "draw_dag", "draw_grid", "interact_figure", "ASSETS"]

# A colour-blind-safe palette (Okabe & Ito, 2008), named by role so notebooks read well.
COLORS = {
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "red": "#D55E00",
    "purple": "#CC79A7", "sky": "#56B4E9", "yellow": "#F0E442", "grey": "#999999",
    "ink": "#222222", "paper": "#FFFFFF", "light": "#EEF2F6",
}
CYCLE = [COLORS[c] for c in ("blue", "orange", "green", "red", "purple", "sky", "grey")]

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def use_style() -> None:
    """Set the course style for matplotlib (call once at the top of a notebook)."""
    matplotlib.rcParams.update({
        "figure.figsize": (6.4, 3.4),
        "figure.dpi": 120,           # inline PNGs: readable on a projector, small enough for git
        "savefig.dpi": 120,
        "savefig.bbox": "tight",
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "xtick.labelsize": 9,         # 9 pt is the smallest text in any figure of the course
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "figure.titlesize": 11,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": matplotlib.cycler(color=CYCLE),
        "legend.frameon": False,
        "image.cmap": "viridis",
    })
    try:  # inline figures as PNG only (SVG embeds random ids that churn diffs)
        from matplotlib_inline.backend_inline import set_matplotlib_formats  # noqa: PLC0415
        set_matplotlib_formats("png")
    except Exception:  # noqa: BLE001 - outside IPython there is nothing to set
        pass


def figure(nrows: int = 1, ncols: int = 1, *, width: float | None = None,
           height: float | None = None, **kw):
    """``plt.subplots`` with the course's default size scaled to the grid."""
    w = width or min(4.2 * ncols, 12.0)
    h = height or 3.2 * nrows
    return plt.subplots(nrows, ncols, figsize=(w, h), **kw)


def _layers(nodes, edges):
    preds = defaultdict(list)
    for a, b in edges:
        preds[b].append(a)
    layer = {}

    def depth(n, seen=()):
        if n in layer:
            return layer[n]
        if n in seen:
            raise ValueError(f"draw_dag: the graph has a cycle through {n!r}")
        layer[n] = 1 + max((depth(p, seen + (n,)) for p in preds[n]), default=-1)
        return layer[n]

    for n in nodes:
        depth(n)
    return layer, preds


def draw_dag(ax, nodes, edges, *, labels=None, colors=None, direction: str = "LR",
             box_width: float = 0.8, box_height: float = 0.5, gap: float = 0.4,
             fontsize: int = 9) -> dict:
    """Draw a directed acyclic graph in layers (sources first) and return node positions.

    ``nodes`` is a list of hashable ids, ``edges`` a list of ``(src, dst)`` pairs, ``labels`` and
    ``colors`` optional dicts by node. A simple layered layout: a node's layer is its longest path
    from a source; nodes inside a layer are ordered by the mean position of their predecessors
    (the barycentre heuristic of Sugiyama et al., 1981). ``gap`` is the space between layers.
    """
    nodes = list(nodes)
    known = set(nodes)
    for a, b in edges:
        if a not in known or b not in known:
            raise ValueError(f"draw_dag: edge ({a!r}, {b!r}) names a node that is not in nodes")
    if direction not in ("LR", "TB"):
        raise ValueError(f"draw_dag: direction must be 'LR' or 'TB', got {direction!r}")
    layer, preds = _layers(nodes, edges)
    by_layer = defaultdict(list)
    for n in nodes:
        by_layer[layer[n]].append(n)
    order = {}
    for k in sorted(by_layer):
        members = by_layer[k]
        if k > 0:
            members.sort(key=lambda n: sum(order[p] for p in preds[n]) / max(len(preds[n]), 1))
        for i, n in enumerate(members):
            order[n] = i - (len(members) - 1) / 2
    step_layer = (box_width if direction == "LR" else box_height) + gap
    step_order = (box_height if direction == "LR" else box_width) + 0.25
    pos = {}
    for n in nodes:
        along, across = layer[n] * step_layer, -order[n] * step_order
        pos[n] = (along, across) if direction == "LR" else (-across, -along)
    labels = labels or {}
    colors = colors or {}
    hw, hh = box_width / 2, box_height / 2
    for a, b in edges:  # from the edge of one box to the edge of the next
        (xa, ya), (xb, yb) = pos[a], pos[b]
        start = (xa + hw, ya) if direction == "LR" else (xa, ya - hh)
        end = (xb - hw, yb) if direction == "LR" else (xb, yb + hh)
        ax.annotate("", xy=end, xytext=start,
                    arrowprops=dict(arrowstyle="-|>", color=COLORS["grey"], lw=1.0,
                                    shrinkA=0, shrinkB=0))
    for n in nodes:
        x, y = pos[n]
        ax.add_patch(FancyBboxPatch((x - hw, y - hh), box_width, box_height,
                                    boxstyle="round,pad=0,rounding_size=0.06",
                                    fc=colors.get(n, COLORS["light"]), ec=COLORS["ink"], lw=0.8))
        ax.text(x, y, labels.get(n, str(n)), ha="center", va="center", fontsize=fontsize)
    xs, ys = zip(*pos.values())
    ax.set_xlim(min(xs) - hw - 0.05, max(xs) + hw + 0.05)
    ax.set_ylim(min(ys) - hh - 0.05, max(ys) + hh + 0.05)
    ax.set_aspect("equal")
    ax.set_axis_off()
    return pos


def draw_grid(ax, values, *, title: str | None = None, fmt: str = "{:g}", cmap: str = "Blues",
              highlight=None, annotate: bool = True, vmin=None, vmax=None):
    """Draw a 2-D array as a grid of coloured cells with their values written in.

    ``values`` is anything ``numpy.asarray`` takes (1-D is drawn as one row; NaN cells are left
    blank); ``highlight`` an optional iterable of ``(row, col)`` cells to outline in red.
    """
    import numpy as np  # noqa: PLC0415

    a = np.asarray(values)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"draw_grid: values must be 1-D or 2-D, got shape {a.shape}")
    image = ax.imshow(a.astype(float), cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal")
    if annotate:
        for (i, j), v in np.ndenumerate(a):
            if isinstance(v, (float, np.floating)) and np.isnan(v):
                continue  # NaN cells stay blank (and need no fmt that takes NaN)
            if isinstance(v, (float, np.floating)):
                v = v + 0.0  # -0.0 + 0.0 == 0.0: no "-0" in a grid of values
            r, g, b, _ = image.cmap(image.norm(float(v)))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5   # perceived luminance of the cell
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=9,
                    color="white" if dark else COLORS["ink"])
    for i, j in highlight or ():
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=COLORS["red"], lw=2))
    ax.set_xticks(range(a.shape[1]))
    ax.set_yticks(range(a.shape[0]))
    ax.grid(False)
    ax.tick_params(length=0, labelsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def interact_figure(draw, **controls):
    """Show ``draw(**defaults)`` as one figure, with live controls above it that redraw it in place.

    ``draw`` is a function of keyword arguments that draws one figure; ``controls`` maps each
    argument to an ipywidgets control (``IntSlider``, ``Dropdown``, ...), whose current value is
    the default. The figure is an ordinary PNG output, so it is what a reader sees where widgets do
    not render (GitHub, nbviewer, slides, CI); in a live kernel, moving a control replaces that same
    output (an IPython display handle), so the learner sees one figure, never a second copy.

    Why not ``ipywidgets.interactive``: its figure lives in an ``Output`` widget, which a live
    JupyterLab shows below the static copy (two figures), and which makes nbclient answer every
    output with a message on the kernel's shell socket while it is waiting on that same socket for
    the cell's reply; a reply that arrives at that moment can go unnoticed until the cell timeout
    (the "silent 120 s stall" of executing learner notebooks).
    """
    import ipywidgets  # noqa: PLC0415
    from IPython.display import display  # noqa: PLC0415

    if not callable(draw):
        raise TypeError("interact_figure: draw must be a function of keyword arguments")
    for k, c in controls.items():
        if not isinstance(c, ipywidgets.ValueWidget):
            raise TypeError(f"interact_figure: control {k!r} must be an ipywidgets control "
                            f"(IntSlider, Dropdown, ...), got {type(c).__name__}")

    def render():
        before = set(plt.get_fignums())
        draw(**{k: c.value for k, c in controls.items()})
        new = [n for n in plt.get_fignums() if n not in before]
        fig = plt.figure(new[-1]) if new else plt.gcf()
        for n in new:
            plt.close(n)  # shown through the handle only, never again by the inline backend
        return fig

    display(ipywidgets.VBox(list(controls.values())))
    handle = display(render(), display_id=True)

    def redraw(_change):
        fig = render()
        if handle is not None:  # None outside IPython (plain Python, tests)
            handle.update(fig)

    for c in controls.values():
        c.observe(redraw, names="value")
    return None  # nothing for the cell to echo
