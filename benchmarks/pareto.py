"""Benchmark: accuracy against multiply-adds of searches under a budget, the unconstrained search and random cells.

On a recipe's task (``demo`` by default: the offline digits task), runs

1. the unconstrained search and its retrain; ``M`` = multiply-adds of its exported cell's retrain net;
2. one search per ``--targets`` fraction ``f`` with ``search.cost={metric: macs, target: f*M, weight: --weight}``
   (kept just above the cheapest cell of the space when ``f*M`` is below it), each retrained;
3. for every searched cell, ``--random`` random cells of the same size (``random_arch(seed)`` whose multiply-adds
   are closest to it, drawn from ``--pool`` seeds), each retrained;

and writes ``OUT/pareto.json`` (one row per retrained cell: name, kind, target, macs, params, latency_ms,
test_accuracy, run folder) and ``OUT/pareto.png`` (test accuracy against multiply-adds, one marker per kind).
Every run goes through the ``nni-darts`` command line, in this process, one after the other.

Usage::

    python benchmarks/pareto.py --out runs/pareto [--recipe demo] [--targets 0.5,0.65,0.8] [--random 1]
                                [--weight 1.0] [--pool 200] [--threads N] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from nni_darts_ext.arch import random_arch, save_arch
from nni_darts_ext.cli import main as nni_darts
from nni_darts_ext.io import atomic_open, atomic_write_json
from nni_darts_ext.recipes import load_recipe
from nni_darts_ext.search.cost import build_cost_table

DEFAULT_TARGETS = (0.5, 0.65, 0.8)
DEFAULT_RANDOM = 1
DEFAULT_POOL = 200
_KIND_STYLE = {"unconstrained": ("tab:blue", "s"), "cost": ("tab:orange", "o"), "random": ("tab:grey", "x")}

_logger = logging.getLogger("pareto")


def _fractions(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not 0 < v for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive fractions, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--targets", type=_fractions, default=list(DEFAULT_TARGETS),
                        help="fractions of the unconstrained cell's multiply-adds (default 0.5,0.65,0.8)")
    parser.add_argument("--weight", type=float, default=1.0, help="search.cost weight")
    parser.add_argument("--random", type=int, default=DEFAULT_RANDOM, help="random cells per searched size")
    parser.add_argument("--pool", type=int, default=DEFAULT_POOL, help="random_arch seeds to choose them from")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="recipe overrides (KEY=VALUE)")
    return parser.parse_args(argv)


def _run(argv: list[str]) -> None:
    code = nni_darts([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"pareto: `nni-darts {' '.join(map(str, argv))}` exited with {code}")


def _row(name: str, kind: str, target: float | None, folder: Path) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    return {"name": name, "kind": kind, "target": target, "macs": summary["macs"], "params": summary["params"],
            "latency_ms": summary["latency_ms"], "test_accuracy": summary.get("test_accuracy"), "run": str(folder)}


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy against multiply-adds, one marker style per kind of cell (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for kind, (color, marker) in _KIND_STYLE.items():
        points = [(r["macs"], r["test_accuracy"]) for r in rows if r["kind"] == kind and r["test_accuracy"] is not None]
        if points:
            ax.scatter(*zip(*points, strict=True), color=color, marker=marker, label=kind)
    targets: dict[tuple[float, float], list[str]] = {}  # searches that exported the same cell share one label
    for r in rows:
        if r["kind"] == "cost" and r["test_accuracy"] is not None:
            targets.setdefault((r["macs"], r["test_accuracy"]), []).append(f"{r['target']:.3g}")
    for point, values in targets.items():
        ax.annotate("T=" + ", ".join(values), point, fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("multiply-adds of the retrain net (one image)")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the axes: it hides no point
    ax.set_title("search under a budget: accuracy vs multiply-adds")
    with atomic_open(path) as handle:
        fig.savefig(handle, format="png")
    return path


def run_pareto(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = ["--recipe", args.recipe, "--quiet", *(["--threads", args.threads] if args.threads else [])]
    overrides = list(args.overrides)
    recipe = load_recipe(args.recipe, overrides)
    r = recipe.retrain
    table = build_cost_table("macs", width=r.width, num_cells=r.cells, image_size=recipe.image_size)
    cheapest = table.cheapest()[0]

    def sets(extra: list[str] = []) -> list[str]:  # noqa: B006 (never mutated)
        return ["--set", *overrides, *extra] if overrides or extra else []

    def search_and_retrain(name: str, extra: list[str]) -> Path:
        _run(["search", "--out", out / name / "search", *common, *sets(extra)])
        _run(["retrain", "--arch", out / name / "search" / "arch.json", "--out", out / name / "retrain", *common,
              *sets()])
        return out / name / "retrain"

    rows = [_row("unconstrained", "unconstrained", None, search_and_retrain("unconstrained", []))]
    free_macs = rows[0]["macs"]
    for fraction in args.targets:
        target = max(fraction * free_macs, 1.01 * cheapest)
        name = f"cost-{fraction:g}"
        folder = search_and_retrain(name, [f"search.cost={{metric: macs, target: {target}, weight: {args.weight}}}"])
        rows.append(_row(name, "cost", target, folder))
    pool = [(table.cost_of(arch), seed, arch) for seed in range(args.pool) for arch in [random_arch(seed)]]
    used: set[int] = set()
    for searched in list(rows):
        closest = sorted((abs(m - searched["macs"]), seed, arch) for m, seed, arch in pool if seed not in used)
        for _, seed, arch in closest[:args.random]:
            used.add(seed)
            name = f"random-{seed}"
            save_arch(arch, out / f"{name}.json")
            _run(["retrain", "--arch", out / f"{name}.json", "--out", out / name / "retrain", *common, *sets()])
            rows.append(_row(name, "random", None, out / name / "retrain"))
    result = {"recipe": args.recipe, "overrides": overrides, "targets": args.targets, "weight": args.weight,
              "cheapest_macs": cheapest, "torch_threads": torch.get_num_threads(), "rows": rows}
    atomic_write_json(out / "pareto.json", result)
    plot_pareto(rows, out / "pareto.png")
    for row in rows:
        print(f"{row['name']:<16} {row['kind']:<13} macs {row['macs']:>12}  params {row['params']:>9}  "
              f"test acc {row['test_accuracy']}")
    return result


def main(argv: list[str] | None = None) -> int:
    run_pareto(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
