"""Cell drawings (graphviz and the matplotlib fallback) and the alpha-history plot."""

from __future__ import annotations

import logging
import math
import shutil
import sys

import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure

from nni_darts_ext.arch import DARTS_V1, DARTS_V2, ArchError, from_genotype, random_arch, to_genotype
from nni_darts_ext.constants import PRIMITIVES
from nni_darts_ext.plotting import _graphviz_graph, plot_alpha_history, plot_cell, plot_cells, plot_comparison

HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="graphviz 'dot' program not installed")
MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".svg": b"<svg", ".pdf": b"%PDF"}
LOGGER = "nni_darts_ext.plotting"


def as_ints(arch: dict) -> dict:
    return {key: (value[0] if isinstance(value, list) else value) for key, value in arch.items()}


@pytest.fixture
def no_dot(monkeypatch):
    """Pretend graphviz's ``dot`` program is not installed."""
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "dot" else real_which(name, *a, **k))


def assert_file(path, suffix):
    data = path.read_bytes()
    assert len(data) > 1000
    assert MAGIC[suffix] in data[:400]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically: no temporary left


def texts(fig: Figure) -> list[tuple[str, float, float]]:
    return [(t.get_text(), *map(lambda v: round(v, 6), t.get_position())) for ax in fig.axes for t in ax.texts]


# ---------------------------------------------------------------------------------------------------------------
# matplotlib fallback
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_fallback_writes_each_format(tmp_path, no_dot, caplog, suffix):
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / f"cells{suffix}"
    assert plot_cells(DARTS_V2, path) == path
    assert_file(path, suffix)
    assert "graphviz 'dot' program not found on PATH; drawing both cells with matplotlib" in caplog.text


def test_fallback_returns_a_figure_with_every_edge_labelled(no_dot, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    fig = plot_cell(DARTS_V2, "reduce")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    labels = [text for text, *_ in texts(fig)]
    edge_ops = [DARTS_V2[f"reduce/op_{i}_{k}"] for i in range(2, 6) for k in range(2)]
    assert sorted(label for label in labels if label in PRIMITIVES) == sorted(edge_ops)
    assert {"$c_{k-2}$", "$c_{k-1}$", "0", "1", "2", "3", "$c_{k}$"} <= set(labels)
    assert fig.axes[0].get_title() == "reduction cell"
    assert "matplotlib" in caplog.text

    both = plot_cells(DARTS_V2)
    assert [ax.get_title() for ax in both.axes] == ["normal cell", "reduction cell"]


def test_fallback_draws_the_same_from_every_arch_format(no_dot):
    reference = texts(plot_cells(DARTS_V1))
    assert texts(plot_cells(as_ints(DARTS_V1))) == reference
    assert texts(plot_cells(to_genotype(DARTS_V1))) == reference
    assert texts(plot_cells(DARTS_V2)) != reference


def test_fallback_handles_duplicate_inputs(no_dot, tmp_path):
    arch = dict(random_arch(3), **{"normal/input_5_0": [4], "normal/input_5_1": [4]})
    plot_cell(arch, "normal", tmp_path / "dup.png")
    assert_file(tmp_path / "dup.png", ".png")


# The cell found by `nni-darts demo` (recipe demo, seed 0): its reduction cell is a chain 0 -> 1 -> 2 -> 3 whose
# edge labels the first matplotlib layout drew on top of each other.
DEMO_SEARCH_GENOTYPE = (
    "Genotype(normal=[('max_pool_3x3', 0), ('skip_connect', 1), ('sep_conv_5x5', 0), ('max_pool_3x3', 2), "
    "('dil_conv_3x3', 3), ('max_pool_3x3', 2), ('dil_conv_3x3', 2), ('sep_conv_3x3', 3)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('sep_conv_5x5', 0), ('dil_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_5x5', 1), ('avg_pool_3x3', 3), "
    "('avg_pool_3x3', 2), ('avg_pool_3x3', 2), ('avg_pool_3x3', 4)], reduce_concat=[2, 3, 4, 5])"
)


def _overlapping_texts(fig: Figure) -> list[tuple[str, str, str]]:
    """(cell title, text, text) of every pair of node or op labels whose drawn boxes overlap."""
    from matplotlib.text import Annotation

    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts if not isinstance(t, Annotation)]
        for i, (name, box) in enumerate(boxes):
            for other_name, other in boxes[i + 1:]:
                if min(box.x1, other.x1) > max(box.x0, other.x0) and min(box.y1, other.y1) > max(box.y0, other.y0):
                    found.append((ax.get_title(), name, other_name))
    return found


@pytest.mark.parametrize("name", ["demo-search", "darts-v1", "darts-v2"] + [f"random-{seed}" for seed in range(6)])
def test_fallback_labels_never_overlap(no_dot, name):
    arch = {"demo-search": lambda: from_genotype(DEMO_SEARCH_GENOTYPE), "darts-v1": lambda: DARTS_V1,
            "darts-v2": lambda: DARTS_V2}.get(name, lambda: random_arch(int(name.split("-")[1])))()
    fig = plot_cells(arch)
    assert _overlapping_texts(fig) == []
    labels = [text for text, *_ in texts(fig)]
    assert sum(label in PRIMITIVES for label in labels) == 16  # every op label drawn, none dropped to make room


def test_pyplot_and_backend_are_left_alone(no_dot, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    plot_cells(DARTS_V2, tmp_path / "cells.png")
    plot_alpha_history([{"normal/2_0": {"skip_connect": 1.0}}], tmp_path / "alphas.png")
    assert matplotlib.get_backend() == backend
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


# ---------------------------------------------------------------------------------------------------------------
# graphviz
# ---------------------------------------------------------------------------------------------------------------


def test_graphviz_source_is_the_same_from_every_arch_format():
    """The graph is built by the graphviz Python package alone (no ``dot`` needed)."""
    reference = _graphviz_graph(DARTS_V2, ["normal", "reduce"]).source
    assert _graphviz_graph(as_ints(DARTS_V2), ["normal", "reduce"]).source == reference
    assert "subgraph cluster_normal" in reference and "subgraph cluster_reduce" in reference
    assert '"normal_c_{k-2}" -> normal_0 [label=sep_conv_3x3' in reference
    assert "normal_0 -> normal_3 [label=dil_conv_3x3" in reference  # node 5 reads node 2 (drawn as 0)
    assert reference.count("-> \"reduce_c_{k}\"") == 4
    single = _graphviz_graph(DARTS_V2, ["reduce"]).source
    assert "cluster" not in single and "normal_" not in single


@needs_dot
@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_graphviz_writes_each_format(tmp_path, caplog, suffix):
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / f"reduce{suffix}"
    assert plot_cell(DARTS_V2, "reduce", path) == path
    assert_file(path, suffix)
    assert "drawing the reduce cell with graphviz" in caplog.text


@needs_dot
def test_graphviz_returns_a_figure(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    fig = plot_cells(DARTS_V2)
    assert isinstance(fig, Figure)
    (image,) = fig.axes[0].get_images()
    height, width = image.get_array().shape[:2]
    assert width > 200 and height > 200
    assert "drawing both cells with graphviz" in caplog.text


@needs_dot
def test_graphviz_svg_is_the_same_from_every_arch_format(tmp_path):
    plot_cells(DARTS_V1, tmp_path / "a.svg")
    plot_cells(as_ints(DARTS_V1), tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------------


def test_unsupported_suffix_is_rejected_before_drawing(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported plot suffix '\.jpg'"):
        plot_cell(DARTS_V2, "normal", tmp_path / "cell.jpg")
    with pytest.raises(ValueError, match=r"unsupported plot suffix ''"):
        plot_cells(DARTS_V2, tmp_path / "cells")
    with pytest.raises(ValueError, match=r"unsupported plot suffix '\.gif'"):
        plot_alpha_history([{"normal/2_0": {"skip_connect": 1.0}}], tmp_path / "alphas.gif")
    assert list(tmp_path.iterdir()) == []


def test_bad_cell_and_arch_are_rejected():
    with pytest.raises(ValueError, match="cell must be one of 'normal', 'reduce'"):
        plot_cell(DARTS_V2, "reduction")
    with pytest.raises(ArchError, match="normal/input_3_1: input 5 points forward"):
        plot_cells(dict(DARTS_V2, **{"normal/input_3_1": 5}))


# ---------------------------------------------------------------------------------------------------------------
# Alpha history
# ---------------------------------------------------------------------------------------------------------------


def nni_like_history(epochs: int = 4) -> list[dict[str, dict[str, float]]]:
    """The shape of NNI's export_probs(): per edge 'cell/node_input', a softmax over the 7 ops; skip grows."""
    history = []
    for epoch in range(epochs):
        probs = {}
        for cell in ("normal", "reduce"):
            for node in range(2, 6):
                for source in range(node):
                    logits = {op: (epoch * 0.8 if op == "skip_connect" else 0.1 * index)
                              for index, op in enumerate(PRIMITIVES)}
                    total = sum(math.exp(v) for v in logits.values())
                    probs[f"{cell}/{node}_{source}"] = {op: math.exp(v) / total for op, v in logits.items()}
        history.append(probs)
    return history


def test_alpha_history_grid_and_highlight(tmp_path):
    history = nni_like_history()
    fig = plot_alpha_history(history)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 28  # 2 + 3 + 4 + 5 edges per cell
    assert sorted(ax.get_title() for ax in visible) == sorted(history[0])
    axes = {ax.get_title(): ax for ax in visible}
    lines = {line.get_label(): line for line in axes["normal/5_4"].get_lines()}
    assert set(lines) == set(PRIMITIVES)
    assert lines["skip_connect"].get_linewidth() > 2 * lines["sep_conv_3x3"].get_linewidth()
    assert list(lines["skip_connect"].get_xdata()) == [0, 1, 2, 3]
    # One row per (cell, node), one column per input: normal/2_1 is right of normal/2_0, above normal/3_1.
    box = {title: ax.get_subplotspec() for title, ax in axes.items()}
    assert (box["normal/2_1"].rowspan.start, box["normal/2_1"].colspan.start) == (0, 1)
    assert (box["reduce/5_4"].rowspan.start, box["reduce/5_4"].colspan.start) == (7, 4)

    # Writing: a few edges keep the test fast (a 28-subplot PNG takes seconds to draw on this CPU).
    few = [{label: probs[label] for label in ("normal/2_0", "normal/2_1", "reduce/3_2")} for probs in history]
    path = plot_alpha_history(few, tmp_path / "alphas.png")
    assert_file(path, ".png")


def test_alpha_history_accepts_other_labels_and_one_epoch():
    fig = plot_alpha_history([{"a": {"x": 0.3, "y": 0.7}, "b": {"x": 1.0}, "c": {"y": 0.5}}])
    assert sorted(ax.get_title() for ax in fig.axes if ax.get_visible()) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "history, error, match",
    [
        ([], ValueError, "history is empty"),
        ({"normal/2_0": {}}, TypeError, "history must be a list"),
        ([["normal/2_0"]], TypeError, r"history\[0\] must be a dict"),
        ([{"normal/2_0": 0.5}], TypeError, r"history\[0\]\['normal/2_0'\] must map"),
        ([{"normal/2_0": {"skip_connect": "high"}}], TypeError, "must be a float probability"),
        ([{}], ValueError, "holds no edges"),
    ],
)
def test_alpha_history_rejects_bad_input(history, error, match):
    with pytest.raises(error, match=match):
        plot_alpha_history(history)


def test_comparison_draws_every_retrain_as_a_point(tmp_path):
    candidates = [{"name": "arch-0", "kind": "arch", "values": [0.98, 0.97, 0.99]},
                  {"name": "random-0", "kind": "random", "values": [0.95, 0.96, 0.95]},
                  {"name": "random-4", "kind": "random", "values": [0.90, 0.93, 0.91]}]
    fig = plot_comparison(candidates, title="verdict")
    (ax,) = fig.axes
    points = [tuple(p) for collection in ax.collections if isinstance(collection, PathCollection)
              for p in collection.get_offsets()]
    assert sorted(y for _, y in points) == sorted(v for c in candidates for v in c["values"])  # every retrain
    assert all(abs(x - round(x)) < 0.5 for x, _ in points)  # each near its candidate's column
    assert [t.get_text() for t in ax.get_xticklabels()] == ["arch-0", "random-0", "random-4"]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx((0.9533 + 0.9133) / 2, abs=1e-3)
    assert ax.get_legend() is None and len(fig.legends) == 1  # the legend stands outside the axes, over no point
    assert_file(plot_comparison(candidates, tmp_path / "compare.png"), ".png")
    with pytest.raises(ValueError, match=r"candidates\[0\] needs kind"):
        plot_comparison([{"name": "x", "kind": "searched", "values": [0.5]}])


def test_dot_without_the_graphviz_package_falls_back_to_matplotlib(tmp_path, monkeypatch, caplog):
    """``dot`` on PATH but the graphviz Python package not importable: the cells are drawn with matplotlib."""
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: "/usr/bin/dot" if name == "dot" else None)
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz raises ImportError
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = plot_cells(DARTS_V2, tmp_path / "cells.png")
    assert_file(path, ".png")
    assert "cannot be imported" in caplog.text and "drawing both cells with matplotlib" in caplog.text
