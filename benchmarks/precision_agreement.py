"""Does a lower precision change what a search finds? The same search in several precisions and seeds, compared.

Runs ``nni-darts search --recipe RECIPE --seed S --precision P`` for every seed and precision (one torch thread per
run, ``--jobs`` runs side by side), then compares the exported cells: for each seed, how many of the 16 chosen
edges (8 per cell, as ``(input, op)`` pairs per node) differ between the reference precision and each other one,
against the seed noise, the same count between two seeds of the reference precision. It also reports each run's
last-epoch search accuracy and mean mixing entropy (from ``search_health.json``) and its search time.

Example::

    python benchmarks/precision_agreement.py --recipe demo --seeds 0 1 2 --precisions 32-true bf16-mixed \\
        --jobs 2 --out runs/precision --json runs/precision.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from nni_darts_ext.arch import edge_difference, load_arch  # noqa: E402
from nni_darts_ext.health import read_health_records  # noqa: E402

_logger = logging.getLogger("precision_agreement")


def run_search(recipe: str, seed: int, precision: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    folder = out / f"{precision}-seed{seed}"
    cmd = [sys.executable, "-m", "nni_darts_ext", "search", "--recipe", recipe, "--seed", str(seed),
           "--precision", precision, "--threads", "1", "--quiet", "--out", str(folder)]
    if overrides:
        cmd += ["--set", *overrides]
    if (folder / "summary.json").is_file():
        _logger.info("reusing %s", folder)
    else:
        path = os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": path}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {' | '.join(tail)}")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    last = read_health_records(folder / "search_health.json")[-1]
    metrics = last.get("metrics") or {}
    return {"seed": seed, "precision": precision, "folder": str(folder), "arch": load_arch(folder / "arch.json"),
            "genotype": summary["genotype"], "search_seconds": summary["search_seconds"],
            "train_acc": metrics.get("train_acc"), "mean_entropy": last.get("mean_entropy"),
            "skip_connects_normal": last.get("skip_connects_normal")}


def compare(runs: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    """Edge differences across precisions (same seed) and across seeds (reference precision)."""
    by = {(r["precision"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    others = sorted({r["precision"] for r in runs} - {reference})
    across_precision = {p: {s: edge_difference(by[reference, s]["arch"], by[p, s]["arch"]) for s in seeds}
                        for p in others}
    across_seeds = {f"{a}-{b}": edge_difference(by[reference, a]["arch"], by[reference, b]["arch"])
                    for a, b in itertools.combinations(seeds, 2)}
    return {"reference": reference, "edges_per_arch": 16, "across_precision": across_precision,
            "across_seeds": across_seeds}


def format_report(runs: list[dict[str, Any]], comparison: dict[str, Any]) -> str:
    lines = ["| precision | seed | search s | train acc | mean entropy | normal skips | edges differing from "
             f"{comparison['reference']} |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: (r["precision"], r["seed"])):
        diff = comparison["across_precision"].get(r["precision"], {}).get(r["seed"], 0)
        lines.append(f"| {r['precision']} | {r['seed']} | {r['search_seconds']:.1f} | {r['train_acc']:.4f} | "
                     f"{r['mean_entropy']:.4f} | {r['skip_connects_normal']} | {diff} of 16 |")
    seeds = comparison["across_seeds"]
    if seeds:
        lines.append(f"\nseed noise ({comparison['reference']}, edges differing between two seeds): "
                     + ", ".join(f"{k}: {v}" for k, v in seeds.items())
                     + f" (mean {statistics.mean(seeds.values()):.1f} of 16)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"],
                        help="Lightning precisions; the first is the reference")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every run")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (one torch thread each)")
    parser.add_argument("--out", required=True, help="folder of the runs (existing finished runs are reused)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    plan = [(seed, precision) for seed in args.seeds for precision in args.precisions]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda sp: run_search(args.recipe, sp[0], sp[1], out, args.overrides), plan))
    comparison = compare(runs, args.precisions[0])
    print(format_report(runs, comparison))
    load = os.getloadavg()
    if args.json_path:
        report = {"recipe": args.recipe, "overrides": args.overrides, "jobs": args.jobs, "load_average_at_end": load,
                  "comparison": comparison,
                  "runs": [{k: v for k, v in r.items() if k != "arch"} for r in runs]}
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
