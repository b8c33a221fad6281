"""Drawings of DARTS cells and of the architecture weights during a search.

:func:`plot_cell` / :func:`plot_cells` draw a cell as quark0/darts ``cnn/visualize.py`` does (Liu et al. 2019,
https://github.com/quark0/darts): inputs ``c_{k-2}``, ``c_{k-1}``, intermediate nodes ``0..3`` (nodes 2..5 of
the arch), one edge per ``(op, input)`` labelled with the op, and every intermediate node feeding ``c_{k}``.
They use graphviz when its ``dot`` program is on PATH, else a matplotlib drawing of their own; the log says
which. :func:`plot_alpha_history` draws the per-edge op probabilities over the epochs of a search, so that
a collapse onto ``skip_connect`` shows. :func:`plot_comparison` draws every retrain of ``nni-darts compare`` as a
point, per candidate cell.

Outputs go through :mod:`nni_darts_ext.io` (atomic); the path's suffix (``.png``, ``.svg``, ``.pdf``) picks the
format. Without a path each function returns a :class:`matplotlib.figure.Figure` (drawn on an Agg canvas;
pyplot and the global backend are left alone).

Example::

    plot_cells(load_arch("runs/search/arch.json"), "runs/search/cells.svg")
    fig = plot_cell(DARTS_V2, cell="reduce")
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import numbers
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nni_darts_ext.arch import _coerce_arch
from nni_darts_ext.constants import CELL_TYPES, FIRST_NODE, INPUTS_PER_NODE, NODES_PER_CELL, PRIMITIVES
from nni_darts_ext.io import atomic_open

__all__ = ["plot_cell", "plot_cells", "plot_alpha_history", "plot_comparison"]

_logger = logging.getLogger(__name__)

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
# Node labels and colours of quark0/darts cnn/visualize.py.
_INPUT_LABELS = ("c_{k-2}", "c_{k-1}")
_OUTPUT_LABEL = "c_{k}"
_COLORS = {"input": "darkseagreen2", "node": "lightblue", "output": "palegoldenrod"}
# Matplotlib has no X11 colour names: the same colours in hex (X11 rgb.txt).
_MPL_COLORS = {"input": "#b4eeb4", "node": "#add8e6", "output": "#eee8aa"}
_CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}
# Resolution of the PNG that graphviz renders for an in-memory Figure (graphviz's own default is 96).
_GRAPHVIZ_PNG_DPI = 96
# Matplotlib layout: distance between layers and between nodes of one layer (data units), edge curvature.
_LAYER_GAP = 3.4
_ROW_GAP = 1.5
# Candidate bends (matplotlib arc3 ``rad``) of an edge, in order of preference, and the points along a curve
# (0 = source, 1 = target) at which its distance from other nodes is measured.
_EDGE_BENDS = (0.15, -0.15, 0.3, -0.3, 0.45, -0.45)
_CURVE_SAMPLES = tuple(i / 20 for i in range(2, 19))
# Positions of an op label along its edge, in order of preference: the first whose box overlaps no node and no
# label placed before is taken (else the one that overlaps least).
_LABEL_POSITIONS = (0.6, 0.5, 0.7, 0.4, 0.75, 0.3, 0.8, 0.25, 0.65, 0.55, 0.45, 0.35, 0.85, 0.2)
# Font sizes (points) of node and op labels; margins around the curves (data units); scale of the drawing.
_NODE_FONT_SIZE = 12
_LABEL_FONT_SIZE = 8
_X_MARGIN = 0.8
_Y_MARGIN = 0.5
_INCHES_PER_UNIT = 0.55
_TITLE_HEIGHT = 0.5
# Free space kept around node boxes and labels (points), and the figure's points per inch.
_LABEL_PAD_POINTS = 1.5
_POINTS_PER_INCH = 72
# A drawing whose labels overlap is redrawn with the layers this factor farther apart, at most this many times.
_SPREAD_FACTOR = 1.25
_MAX_SPREADS = 4
# Alpha-history grid: inches per subplot, and the highlighted op (DARTS collapses onto it; Zela et al. 2020).
_ALPHA_SUBPLOT_SIZE = (2.4, 1.7)
_HIGHLIGHT_OP = "skip_connect"
_ALPHA_LEGEND_HEIGHT = 0.9
# plot_comparison: inches per candidate column and the height; points spread this far around their column
# (deterministically, by run order) so that equal accuracies stay visible; marker colours of the two kinds.
_COMPARISON_COLUMN_WIDTH = 0.7
_COMPARISON_HEIGHT = 4.0
_COMPARISON_SPREAD = 0.25
_COMPARISON_COLORS = {"arch": "tab:red", "random": "tab:blue"}
_EDGE_LABEL_RE = re.compile(r"(?P<cell>.+)/(?P<node>\d+)_(?P<input>\d+)")


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def _output_format(path: Any) -> str | None:
    """The format for ``path`` from its suffix, or None when ``path`` is None."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    suffix = Path(path).suffix
    if suffix.lower() not in _FORMATS:
        raise ValueError(f"unsupported plot suffix {suffix!r} in {os.fspath(path)!r}: use .png, .svg or .pdf")
    return _FORMATS[suffix.lower()]


def _new_figure(figsize: tuple[float, float], dpi: float | None = None, layout: str | None = None):
    """A Figure on its own Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: Any, fmt: str, tight: bool = True) -> Path:
    with atomic_open(path) as handle:
        fig.savefig(handle, format=fmt, bbox_inches="tight" if tight else None)
    return Path(path)


def _cell_edges(arch: dict[str, Any], cell: str) -> list[tuple[str, str, str]]:
    """``(source label, target label, op)`` of one cell, in genotype order, then the edges into ``c_{k}``."""
    edges = []
    for node in range(FIRST_NODE, FIRST_NODE + NODES_PER_CELL):
        for k in range(INPUTS_PER_NODE):
            source = arch[f"{cell}/input_{node}_{k}"][0]
            source_label = _INPUT_LABELS[source] if source < FIRST_NODE else str(source - FIRST_NODE)
            edges.append((source_label, str(node - FIRST_NODE), arch[f"{cell}/op_{node}_{k}"]))
    edges.extend((str(i), _OUTPUT_LABEL, "") for i in range(NODES_PER_CELL))
    return edges


def _check_cell(cell: Any) -> str:
    if cell not in CELL_TYPES:
        raise ValueError(f"cell must be one of {', '.join(map(repr, CELL_TYPES))}, got {cell!r}")
    return cell


# ----------------------------------------------------------------------------------------------------------------
# graphviz backend
# ----------------------------------------------------------------------------------------------------------------


def _graphviz_graph(arch: Any, cells: Sequence[str]):
    """The graphviz Digraph of ``cells`` (one cluster per cell when there are several), styled as visualize.py."""
    import graphviz

    arch = _coerce_arch(arch)

    graph = graphviz.Digraph(
        engine="dot",
        edge_attr=dict(fontsize="20", fontname="times"),
        node_attr=dict(
            style="filled", shape="rect", align="center", fontsize="20", height="0.5", width="0.5",
            penwidth="2", fontname="times",
        ),
    )
    graph.attr(rankdir="LR")
    # With rankdir=LR, dot stacked the clusters bottom-up in every case we tried: define the last one first
    # so that the normal cell ends on top.
    for cell in reversed(cells):
        body = graph.subgraph(name=f"cluster_{cell}") if len(cells) > 1 else contextlib.nullcontext(graph)
        with body as sub:
            if len(cells) > 1:
                sub.attr(label=_CELL_TITLES[cell], fontsize="24", fontname="times")
            for label in _INPUT_LABELS:
                sub.node(f"{cell}_{label}", label=label, fillcolor=_COLORS["input"])
            for i in range(NODES_PER_CELL):
                sub.node(f"{cell}_{i}", label=str(i), fillcolor=_COLORS["node"])
            sub.node(f"{cell}_{_OUTPUT_LABEL}", label=_OUTPUT_LABEL, fillcolor=_COLORS["output"])
            for source, target, op in _cell_edges(arch, cell):
                attrs = dict(label=op) if op else {}
                sub.edge(f"{cell}_{source}", f"{cell}_{target}", fillcolor="gray", **attrs)
    return graph


def _render_graphviz(graph, path: Any, fmt: str | None):
    if fmt is not None:
        data = graph.pipe(format=fmt)
        with atomic_open(path) as handle:
            handle.write(data)
        return Path(path)
    import matplotlib.image

    png = graph.pipe(format="png")
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    height, width = image.shape[:2]
    fig = _new_figure((width / _GRAPHVIZ_PNG_DPI, height / _GRAPHVIZ_PNG_DPI), dpi=_GRAPHVIZ_PNG_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image)
    ax.set_axis_off()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# matplotlib backend
# ----------------------------------------------------------------------------------------------------------------


def _layout(edges: list[tuple[str, str, str]], layer_gap: float = _LAYER_GAP) -> dict[str, tuple[float, float]]:
    """Layered positions: inputs in layer 0, each node one layer right of its deepest input, output last."""
    depth = {label: 0 for label in _INPUT_LABELS}
    for i in range(NODES_PER_CELL):
        sources = [source for source, target, _ in edges if target == str(i)]
        depth[str(i)] = 1 + max(depth[source] for source in sources)
    depth[_OUTPUT_LABEL] = 1 + max(depth[str(i)] for i in range(NODES_PER_CELL))
    layers: dict[int, list[str]] = {}
    for label, d in depth.items():  # insertion order: inputs, nodes 0..3, output
        layers.setdefault(d, []).append(label)
    positions = {}
    for d, labels in layers.items():
        for row, label in enumerate(labels):
            positions[label] = (d * layer_gap, ((len(labels) - 1) / 2 - row) * _ROW_GAP)
    return positions


def _bezier(p0: tuple[float, float], p2: tuple[float, float], rad: float, t: float) -> tuple[float, float]:
    """A point of matplotlib's ``arc3`` curve from ``p0`` to ``p2``: a quadratic Bezier whose control point is the
    chord midpoint moved by ``rad * (dy, -dx)`` (exact in data units because the axes keep an equal aspect)."""
    (x1, y1), (x2, y2) = p0, p2
    cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
    return (
        (1 - t) ** 2 * x1 + 2 * (1 - t) * t * cx + t**2 * x2,
        (1 - t) ** 2 * y1 + 2 * (1 - t) * t * cy + t**2 * y2,
    )


def _clearance(point: tuple[float, float], obstacles: list[tuple[float, float]]) -> float:
    """Distance from ``point`` to the nearest of ``obstacles`` (inf when there are none)."""
    return min((math.hypot(point[0] - x, point[1] - y) for x, y in obstacles), default=math.inf)


def _overlap(box, other) -> float:
    """Area shared by two display-space boxes (matplotlib ``Bbox``), 0 when they are apart."""
    width = min(box.x1, other.x1) - max(box.x0, other.x0)
    height = min(box.y1, other.y1) - max(box.y0, other.y0)
    return max(width, 0.0) * max(height, 0.0)


def _choose_bends(
    edges: list[tuple[str, str, str]], positions: dict[str, tuple[float, float]]
) -> list[float]:
    """Per edge, the bend that keeps its curve farthest from the nodes it passes (dot routes around them; this
    is the cheap version), never the bend of an identical (source, target) edge chosen before."""
    bends: list[float] = []
    used: set[tuple[str, str, float]] = set()
    for source, target, _ in edges:
        start, end = positions[source], positions[target]
        others = [xy for label, xy in positions.items() if label not in (source, target)]
        candidates = [r for r in _EDGE_BENDS if (source, target, r) not in used]
        rad = max(
            candidates,
            key=lambda r: (
                round(min(_clearance(_bezier(start, end, r, t), others) for t in _CURVE_SAMPLES), 1),
                -abs(r),
            ),
        )
        used.add((source, target, rad))
        bends.append(rad)
    return bends


def _cell_plan(arch: dict[str, Any], cell: str, layer_gap: float) -> dict[str, Any]:
    """Positions, edges, bends and data limits of one cell's drawing, layers ``layer_gap`` data units apart."""
    edges = _cell_edges(arch, cell)
    positions = _layout(edges, layer_gap)
    bends = _choose_bends(edges, positions)
    points = list(positions.values())
    for (source, target, _), rad in zip(edges, bends, strict=True):
        points.extend(_bezier(positions[source], positions[target], rad, t) for t in _CURVE_SAMPLES)
    xs, ys = [x for x, _ in points], [y for _, y in points]
    limits = ((min(xs) - _X_MARGIN, max(xs) + _X_MARGIN), (min(ys) - _Y_MARGIN, max(ys) + _Y_MARGIN))
    return {"cell": cell, "edges": edges, "positions": positions, "bends": bends, "limits": limits}


def _draw_cell_matplotlib(ax, plan: dict[str, Any]) -> float:
    """Draw a :func:`_cell_plan`; each op label goes where its box overlaps no node and no other label.

    Returns the area (display units) by which labels still overlap nodes or each other: 0 when all are free.
    """
    edges, positions, bends = plan["edges"], plan["positions"], plan["bends"]
    (x0, x1), (y0, y1) = plan["limits"]
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")
    ax.set_axis_off()
    ax.set_title(_CELL_TITLES[plan["cell"]])
    ax.apply_aspect()  # final data -> display transform: label boxes are measured with it
    renderer = ax.figure.canvas.get_renderer()
    pad = _LABEL_PAD_POINTS * ax.figure.dpi / _POINTS_PER_INCH
    taken = []  # display boxes of the nodes and of the labels placed so far
    for label, (x, y) in positions.items():
        kind = "input" if label in _INPUT_LABELS else "output" if label == _OUTPUT_LABEL else "node"
        text = ax.text(
            x, y, f"${label}$" if kind != "node" else label, ha="center", va="center", fontsize=_NODE_FONT_SIZE,
            zorder=5, bbox=dict(boxstyle="round,pad=0.4", fc=_MPL_COLORS[kind], ec="black", lw=1.5),
        )
        taken.append(text.get_window_extent(renderer).padded(pad))
    node_points = list(positions.values())
    overlap = 0.0
    for (source, target, op), rad in zip(edges, bends, strict=True):
        start, end = positions[source], positions[target]
        ax.annotate(
            "", xy=end, xytext=start,
            arrowprops=dict(
                arrowstyle="-|>", connectionstyle=f"arc3,rad={rad}", color="gray", lw=1.3,
                shrinkA=16, shrinkB=16, mutation_scale=14,
            ),
            zorder=1,
        )
        if not op:
            continue
        text = ax.text(
            *start, op, ha="center", va="center", fontsize=_LABEL_FONT_SIZE, zorder=4,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9),
        )
        best = None
        for t in _LABEL_POSITIONS:  # in order of preference; the first free place wins
            point = _bezier(start, end, rad, t)
            text.set_position(point)
            box = text.get_window_extent(renderer)
            score = (round(sum(_overlap(box, other) for other in taken), 1), -_clearance(point, node_points))
            if best is None or score < best[0]:
                best = (score, point, box)
            if score[0] == 0:
                break
        text.set_position(best[1])
        taken.append(best[2].padded(pad))
        overlap += best[0][0]
    return overlap


def _render_matplotlib(arch: dict[str, Any], cells: Sequence[str], path: Any, fmt: str | None):
    # A crowded cell (many labelled edges between two layers) gets its layers spread until every label is free.
    for attempt in range(_MAX_SPREADS + 1):
        layer_gap = _LAYER_GAP * _SPREAD_FACTOR**attempt
        plans = [_cell_plan(arch, cell, layer_gap) for cell in cells]
        # Figure size follows the drawings (data units at a fixed scale): labels keep their size against the nodes.
        widths = [(x1 - x0) * _INCHES_PER_UNIT for (x0, x1), _ in (plan["limits"] for plan in plans)]
        height = max((y1 - y0) * _INCHES_PER_UNIT for _, (y0, y1) in (plan["limits"] for plan in plans))
        fig = _new_figure((sum(widths), height + _TITLE_HEIGHT))
        axes = fig.subplots(1, len(plans), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
        overlap = sum(_draw_cell_matplotlib(ax, plan) for ax, plan in zip(axes, plans, strict=True))
        if overlap == 0:
            break
    else:
        _logger.warning("some edge labels of the cell drawing overlap (%.0f px^2 after spreading the layers)", overlap)
    if fmt is None:
        return fig
    return _save_figure(fig, path, fmt)


def _plot(arch: Any, cells: Sequence[str], path: Any, what: str):
    fmt = _output_format(path)
    arch = _coerce_arch(arch)
    dot = shutil.which("dot")
    if dot:
        try:
            graph = _graphviz_graph(arch, cells)
        except ImportError as exc:  # the program without the Python package: the drawing is not worth failing a run
            _logger.warning("graphviz 'dot' is at %s but the graphviz Python package cannot be imported (%s); "
                            "drawing %s with matplotlib", dot, exc, what)
        else:
            _logger.info("drawing %s with graphviz ('dot' at %s)", what, dot)
            return _render_graphviz(graph, path, fmt)
    else:
        _logger.info("graphviz 'dot' program not found on PATH; drawing %s with matplotlib", what)
    return _render_matplotlib(arch, cells, path, fmt)


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def plot_cell(arch: Any, cell: str = "normal", path: str | os.PathLike[str] | None = None):
    """Draw one cell (``'normal'`` or ``'reduce'``) of an arch dict (either format) or Genotype.

    Writes ``path`` (.png, .svg or .pdf, atomically) and returns it as a :class:`~pathlib.Path`; with
    ``path=None`` returns a matplotlib Figure. Uses graphviz when ``dot`` is on PATH, else matplotlib.

    Raises:
        ArchError: invalid arch. ValueError: unknown cell or path suffix.

    Example::

        plot_cell(DARTS_V2, "reduce", "reduce.svg")
    """
    cell = _check_cell(cell)
    return _plot(arch, [cell], path, f"the {cell} cell")


def plot_cells(arch: Any, path: str | os.PathLike[str] | None = None):
    """Draw the normal and the reduction cell side by side (two clusters with graphviz).

    Same formats, backends and return values as :func:`plot_cell`.

    Example::

        fig = plot_cells(load_arch("arch.json"))
    """
    return _plot(arch, list(CELL_TYPES), path, "both cells")


def _edge_sort_key(label: str) -> tuple:
    match = _EDGE_LABEL_RE.fullmatch(label)
    if not match:
        return (len(CELL_TYPES) + 1, label, 0, 0)
    cell = match["cell"]
    rank = CELL_TYPES.index(cell) if cell in CELL_TYPES else len(CELL_TYPES)
    return (rank, cell, int(match["node"]), int(match["input"]))


def _check_history(history: Any) -> list[dict[str, dict[str, float]]]:
    if not isinstance(history, (list, tuple)):
        raise TypeError(f"history must be a list (one dict per epoch), got {type(history).__name__}")
    if not history:
        raise ValueError("history is empty: nothing to plot")
    for epoch, probs in enumerate(history):
        if not isinstance(probs, dict):
            raise TypeError(
                f"history[{epoch}] must be a dict {{edge_label: {{op: probability}}}}, got {type(probs).__name__}"
            )
        for label, ops in probs.items():
            if not isinstance(label, str) or not isinstance(ops, dict):
                raise TypeError(f"history[{epoch}][{label!r}] must map a str edge label to a dict {{op: probability}}")
            for op, p in ops.items():
                if not isinstance(op, str) or not isinstance(p, numbers.Real) or isinstance(p, bool):
                    raise TypeError(f"history[{epoch}][{label!r}][{op!r}] must be a float probability, got {p!r}")
    return list(history)


def plot_alpha_history(history: Any, path: str | os.PathLike[str] | None = None):
    """Plot the op probabilities of every edge over the epochs of a search, ``skip_connect`` highlighted.

    ``history`` has one entry per epoch, each the dict NNI's ``export_probs()`` returns:
    ``{edge_label: {op_name: probability}}`` with labels such as ``'normal/2_0'`` (node 2, input 0). Edges
    with such labels are laid out one row per (cell, node) and one column per input; other labels in a
    square grid. Writes ``path`` (.png/.svg/.pdf, atomically) and returns it, or returns the Figure.

    Example::

        plot_alpha_history([strategy_probs_epoch0, strategy_probs_epoch1], "runs/search/alphas.png")
    """
    fmt = _output_format(path)
    history = _check_history(history)
    labels = sorted({label for probs in history for label in probs}, key=_edge_sort_key)
    if not labels:
        raise ValueError("history holds no edges: nothing to plot")
    seen_ops = {op for probs in history for ops in probs.values() for op in ops}
    ops = [op for op in PRIMITIVES if op in seen_ops] + sorted(seen_ops - set(PRIMITIVES))

    matches = [_EDGE_LABEL_RE.fullmatch(label) for label in labels]
    if all(matches):
        rows = sorted({(m["cell"], int(m["node"])) for m in matches}, key=lambda r: _edge_sort_key(f"{r[0]}/{r[1]}_0"))
        nrows, ncols = len(rows), 1 + max(int(m["input"]) for m in matches)
        cells = {
            label: (rows.index((m["cell"], int(m["node"]))), int(m["input"]))
            for label, m in zip(labels, matches, strict=True)
        }
    else:
        ncols = math.ceil(math.sqrt(len(labels)))
        nrows = math.ceil(len(labels) / ncols)
        cells = {label: divmod(index, ncols) for index, label in enumerate(labels)}

    from matplotlib import colormaps
    from matplotlib.ticker import FixedLocator, MaxNLocator

    palette = colormaps["tab10"]
    # tab10 without its red (index 3), which marks the highlighted op.
    shades = [palette(i) for i in range(palette.N) if i != 3]
    colors = {op: shades[index % len(shades)] for index, op in enumerate(o for o in ops if o != _HIGHLIGHT_OP)}
    colors[_HIGHLIGHT_OP] = palette(3)
    # Fixed margins (inches) instead of constrained layout or a tight bounding box: with 28 subplots each
    # of those costs extra full draws (seconds per plot on a small CPU).
    width, height = _ALPHA_SUBPLOT_SIZE[0] * ncols + 0.6, _ALPHA_SUBPLOT_SIZE[1] * nrows + _ALPHA_LEGEND_HEIGHT
    fig = _new_figure((width, height))
    fig.subplots_adjust(
        left=0.5 / width, right=1 - 0.1 / width, bottom=0.45 / height, top=1 - _ALPHA_LEGEND_HEIGHT / height,
        wspace=0.15, hspace=0.45,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    epochs = list(range(len(history)))
    used = set(cells.values())
    for (row, col), ax in ((rc, axes[rc]) for rc in ((r, c) for r in range(nrows) for c in range(ncols))):
        if (row, col) not in used:
            ax.set_visible(False)
    handles = {}
    for label, (row, col) in cells.items():
        ax = axes[row, col]
        for op in ops:
            values = [float(probs.get(label, {}).get(op, math.nan)) for probs in history]
            if all(math.isnan(v) for v in values):
                continue
            highlight = op == _HIGHLIGHT_OP
            (line,) = ax.plot(
                epochs, values, color=colors[op], lw=2.4 if highlight else 1.0, alpha=1.0 if highlight else 0.75,
                marker="o" if len(epochs) == 1 else None, markersize=3, zorder=3 if highlight else 2, label=op,
            )
            handles.setdefault(op, line)
        # An explicit title y skips matplotlib's search for overlapping top ticks (one per axes at each draw).
        ax.set_title(label, fontsize=8, y=1.0)
        ax.tick_params(labelsize=7)
    # Shared by every axes, so set once (each set_ylim updates all the others); few ticks, whole epochs only.
    axes[0, 0].set_ylim(0.0, 1.0)
    axes[0, 0].yaxis.set_major_locator(FixedLocator([0.0, 0.5, 1.0]))
    axes[0, 0].xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    fig.legend(
        [handles[op] for op in ops if op in handles], [op for op in ops if op in handles],
        loc="upper center", ncol=min(len(handles), 7), fontsize=8, frameon=False,
        title="op probability per edge (softmax of the architecture weights)", title_fontsize=9,
    )
    if fmt is None:
        return fig
    return _save_figure(fig, path, fmt, tight=False)


def plot_comparison(candidates: Sequence[dict[str, Any]], path: str | os.PathLike[str] | None = None, *,
                    title: str | None = None, ylabel: str = "test accuracy"):
    """Every retrain of every candidate as a point, one column per candidate, its mean as a bar.

    ``candidates``: dicts with ``name``, ``kind`` (``"arch"`` for a given cell, ``"random"`` for a random one) and
    ``values`` (one accuracy per retrain seed). The given cells come first in red, the random ones in blue with
    their pool's mean as a dashed line. Writes ``path`` (.png/.svg/.pdf, atomically) and returns it, or returns the
    Figure.

    Example::

        plot_comparison([{"name": "arch-0", "kind": "arch", "values": [0.98, 0.97]},
                         {"name": "random-0", "kind": "random", "values": [0.96, 0.97]}], "runs/c/compare.png")
    """
    fmt = _output_format(path)
    if not candidates:
        raise ValueError("candidates is empty: nothing to plot")
    for index, candidate in enumerate(candidates):
        if candidate.get("kind") not in _COMPARISON_COLORS or not candidate.get("values"):
            raise ValueError(f"candidates[{index}] needs kind 'arch' or 'random' and at least one value")
    fig = _new_figure((max(4.0, _COMPARISON_COLUMN_WIDTH * len(candidates) + 1.5), _COMPARISON_HEIGHT),
                      layout="constrained")
    ax = fig.subplots()
    for column, candidate in enumerate(candidates):
        values = [float(v) for v in candidate["values"]]
        n = len(values)
        offsets = [0.0] if n == 1 else [_COMPARISON_SPREAD * (2 * i / (n - 1) - 1) for i in range(n)]
        color = _COMPARISON_COLORS[candidate["kind"]]
        ax.scatter([column + o for o in offsets], values, s=22, color=color, alpha=0.8, zorder=3)
        mean = sum(values) / n
        ax.hlines(mean, column - _COMPARISON_SPREAD * 1.4, column + _COMPARISON_SPREAD * 1.4, color=color, lw=2)
    random_means = [sum(c["values"]) / len(c["values"]) for c in candidates if c["kind"] == "random"]
    if random_means:
        ax.axhline(sum(random_means) / len(random_means), color=_COMPARISON_COLORS["random"], ls="--", lw=1,
                   label="mean of the random cells")
        fig.legend(fontsize=8, loc="outside lower right")  # beside the axes: it never hides a point
    ax.set_xticks(range(len(candidates)))
    ax.set_xticklabels([c["name"] for c in candidates], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    if fmt is None:
        return fig
    return _save_figure(fig, path, fmt)


# Above this many classes the matrix is drawn without per-cell numbers and tick labels get small.
_CONFUSION_ANNOTATED_CLASSES = 20


def plot_confusion(matrix: Any, classes: Sequence[str], path: str | os.PathLike[str] | None = None):
    """A confusion matrix (rows: true class, columns: predicted) with the class names, by scikit-learn's
    ``ConfusionMatrixDisplay``; the counts are written in the cells for up to 20 classes.

    Example::

        plot_confusion([[9, 1], [2, 8]], ["cat", "dog"], "runs/e/confusion.png")
    """
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    fmt = _output_format(path)
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(classes):
        raise ValueError(f"matrix must be {len(classes)}x{len(classes)} (one row and column per class), "
                         f"got shape {matrix.shape}")
    n = len(classes)
    side = min(4 + 0.4 * n, 40)
    fig = _new_figure((side, side), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(matrix, display_labels=list(classes))
    display.plot(ax=ax, include_values=n <= _CONFUSION_ANNOTATED_CLASSES, xticks_rotation="vertical",
                 colorbar=False, values_format="d")
    ax.set_title("confusion matrix (rows: true class)")
    if fmt is None:
        return fig
    return _save_figure(fig, path, fmt)
