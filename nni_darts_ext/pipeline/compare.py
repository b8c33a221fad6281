"""``nni-darts compare``: is the searched cell better than random cells of the same space, beyond seed noise?

Many NAS results do not beat random cells of the same space once seeds are counted (Li & Talwalkar, "Random
Search and Reproducibility for Neural Architecture Search", UAI 2019; Yang et al., "NAS evaluation is
frustratingly hard", ICLR 2020). This command answers it on the user's data: it retrains each given cell
(``--arch``) and ``N`` uniformly random cells of the DARTS space (:func:`~nni_darts_ext.arch.random_arch`,
optionally only those whose parameter count is within a relative tolerance of the first given cell's), each under
``K`` retrain seeds (the recipe's ``seed``, ``seed + 1``, ...), all with the recipe's retrain protocol, and
compares the test accuracies (:mod:`nni_darts_ext.stats`).

How the groups are formed: each given cell's ``K`` test accuracies against the ``N`` random cells' mean test
accuracies (one value per random cell, the mean over its ``K`` seeds). Welch's t-test then estimates the
variance of each side separately, as it must: the given cell varies by seed noise only, a random cell's mean by
how good the cell is plus a ``K``-th of the seed noise; taking all ``N x K`` random runs as independent values
would count each cell ``K`` times. Both tests are one-sided (searched > random). With several ``--arch`` each is
compared with the random pool on its own (``comparisons``); the top-level ``difference``, ``welch_p``,
``mannwhitney_p``, ``verdict`` and ``rank`` are the first one's, and ``pooled`` compares the given cells' means
with the random cells' means.

``DIR`` holds ``config.yaml`` (the resolved recipe), ``compare_settings.json`` (the cells and counts it was started
with: ``--resume`` alone continues the same comparison), ``runs/<candidate>/arch.json`` and one retrain run folder
per seed, ``runs/<candidate>/seed-S/`` (finished ones are kept by ``--resume``, interrupted ones continue),
``logs/`` with ``--parallel``, ``compare.json`` and ``compare.png``.

Example::

    summary = run_compare(load_recipe("demo"), RunOptions(out="runs/c"), archs=["runs/s/arch.json"], random=6,
                          seeds=2)
    summary["verdict"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..arch import build_model, count_parameters, format_genotype, load_arch, random_arch, save_arch, to_genotype
from ..checks import check_float, check_int
from ..constants import COMPARE_RANDOM_CELLS, COMPARE_RETRAIN_SEEDS, SIGNIFICANCE_LEVEL
from ..errors import ArgumentError, UsageError
from ..io import atomic_write_json
from ..plotting import plot_comparison
from ..recipe_data import RecipeData
from ..recipes import Recipe, apply_overrides
from .assemble import check_device, data_errors, resolve_arch
from .options import RunOptions
from .parallel import Job, child_threads, common_argv, run_in_processes
from .retrain import run_retrain
from .run_folder import ARCH_FILE, CONFIG_FILE, write_config
from .run_set import DONE, RESUME, check_run_set, check_same_recipe, prepare_run, read_summary
from .runtime import holding_run_lock, run_facts
from .seeds import LOGS_DIR, seed_folder

if TYPE_CHECKING:
    from ..datasets import DataInfo

__all__ = ["COMPARE_FILE", "COMPARE_PLOT", "MAX_RANDOM_DRAWS", "RUNS_DIR", "SETTINGS_FILE", "Candidate",
           "run_compare"]

_logger = logging.getLogger("nni_darts_ext.pipeline")

#: The comparison's record and plot.
COMPARE_FILE = "compare.json"
COMPARE_PLOT = "compare.png"
#: Where the candidates' retrains go (``DIR/runs/<candidate>/seed-S``).
RUNS_DIR = "runs"
#: What the comparison was started with (the given cells' sources, ``--random``, ``--seeds``, ``--match-params``):
#: ``--resume`` continues with these unless the command gives others.
SETTINGS_FILE = "compare_settings.json"
#: Random cells drawn at most while looking for ones within ``--match-params`` of the given cell; more means the
#: tolerance is too tight for this space. Each draw builds the retrain net to count its parameters: 0.3 s for the
#: demo's, 1.4 s for the paper's 20-cell net on a 2-core CPU, so at most 12 minutes there.
MAX_RANDOM_DRAWS = 500
#: Says how the groups are tested, in compare.json.
METHOD = ("each --arch against the random pool: its K retrain test accuracies vs the N random cells' mean test "
          "accuracies (one per cell); Welch's t-test and Mann-Whitney U (scipy.stats), one-sided for searched > "
          "random; rank: the cell's mean among the random cells' means, 1 = best (ties share the better rank). The "
          "top-level difference, welch_p, mannwhitney_p, verdict and rank are the first --arch's")


@dataclass(frozen=True)
class Candidate:
    """One cell to retrain: its name (``arch-I`` for the I-th given cell, ``random-J`` for ``random_arch(J)``), kind
    (``"arch"`` or ``"random"``), arch dict, where it came from, and parameter count in the retrain net (no
    auxiliary head)."""

    name: str
    kind: str
    arch: dict[str, Any]
    source: str
    params: int


def _usage(check: Callable[..., Any], flag: str, value: Any, **kwargs: Any) -> Any:
    try:
        return check(flag, value, **kwargs)
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None


def _params(recipe: Recipe, arch: dict[str, Any], info: DataInfo | None) -> int:
    """Parameters of ``arch``'s retrain net (no auxiliary head) for the data ``info`` describes (``None``: the
    recipe's size, 10 classes of 3 channels)."""
    r = recipe.retrain
    if info is None:
        return count_parameters(build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=False,
                                            image_size=recipe.image_size, stem=r.stem))
    return count_parameters(build_model(arch, width=r.width, num_cells=r.cells, auxiliary_loss=False,
                                        image_size=info.image_size, num_classes=info.num_classes,
                                        in_channels=info.in_channels, stem=r.stem))


def candidates_of(recipe: Recipe, archs: Sequence[Any], *, random: int,
                  match_params: float | None, info: DataInfo | None = None) -> tuple[list[Candidate], int]:
    """The given cells, then ``random`` random cells (``random_arch(0)``, ``random_arch(1)``, ... with
    ``match_params``: only those within that relative tolerance of the first given cell's parameter count);
    returns them and how many random cells were drawn. Parameters are counted for the data ``info`` describes.

    Raises:
        UsageError: fewer than ``random`` matching cells in :data:`MAX_RANDOM_DRAWS` draws.
        ArchError: a given cell cannot be read.

    Example::

        candidates, drawn = candidates_of(recipe, ["runs/s/arch.json"], random=6, match_params=0.1)
    """
    given = []
    for index, arch in enumerate(archs):
        arch_dict, source = resolve_arch(arch)
        given.append(Candidate(f"arch-{index}", "arch", arch_dict, source, _params(recipe, arch_dict, info)))
    pool: list[Candidate] = []
    drawn = 0
    while len(pool) < random:
        if drawn == MAX_RANDOM_DRAWS:
            raise UsageError(f"--match-params {match_params}: only {len(pool)} of {MAX_RANDOM_DRAWS} random cells have "
                             f"{given[0].params:,} parameters within {match_params:.0%}; widen the tolerance")
        arch = random_arch(drawn)
        params = _params(recipe, arch, info)
        if match_params is None or abs(params - given[0].params) <= match_params * given[0].params:
            pool.append(Candidate(f"random-{drawn}", "random", arch, f"random_arch({drawn})", params))
        drawn += 1
    return given + pool, drawn


def run_compare(recipe: Recipe, options: RunOptions, *, archs: Sequence[Any] = (), random: int | None = None,
                seeds: int | None = None, match_params: float | None = None, parallel: int = 1,
                threads: int | None = None, report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Retrain each cell of ``archs`` and ``random`` random cells under ``seeds`` retrain seeds each, then compare
    (see the module docstring); writes ``DIR/compare.json`` and ``DIR/compare.png`` and returns the record.

    ``random`` and ``seeds`` default to :data:`~nni_darts_ext.constants.COMPARE_RANDOM_CELLS` and
    :data:`~nni_darts_ext.constants.COMPARE_RETRAIN_SEEDS`. ``parallel``: retrains run side by side as processes
    (:mod:`.parallel`, ``threads`` torch threads each, one on a CPU by default); 1 runs them one after the other in
    this process. With ``options.resume`` finished retrains are kept, interrupted ones continue and missing ones
    start; ``archs``, ``random``, ``seeds`` and ``match_params`` not given (empty or ``None``) are the comparison's
    own (``compare_settings.json``), given ones win (a larger ``random`` or ``seeds`` adds retrains); the recipe
    must be the one the comparison was started with, and a candidate must be the same cell. ``report(line)`` is
    called as each retrain ends.

    Raises:
        UsageError, RecipeError, ArchError: bad options, recipe, cells or data, a folder in use; nothing written.
        RunsFailed: retrains started as processes failed (the others finished; ``--resume`` retries them).

    Example::

        run_compare(recipe, RunOptions(out="runs/c", accelerator="cpu"), archs=["darts-v2"], random=4, seeds=3)
    """
    out = check_run_set(options.out, resume=options.resume, what="comparison", markers=(RUNS_DIR,))
    recorded: dict[str, Any] = _read_settings(out) if options.resume else {}
    recorded_sources: dict[str, str] = recorded.get("archs", {}) if not archs else {}
    if recorded_sources:  # resumed without --arch: the cells the comparison was started with
        archs = [out / RUNS_DIR / name / ARCH_FILE for name in recorded_sources]
    random = _usage(check_int, "--random", random if random is not None else
                    recorded.get("random", COMPARE_RANDOM_CELLS), minimum=0)
    seeds = _usage(check_int, "--seeds", seeds if seeds is not None else
                   recorded.get("seeds", COMPARE_RETRAIN_SEEDS), minimum=1)
    parallel = _usage(check_int, "--parallel", parallel, minimum=1)
    if match_params is None:
        match_params = recorded.get("match_params")
    if match_params is not None:
        match_params = _usage(check_float, "--match-params", match_params, low=0.0, low_open=True)
        if not archs:
            raise UsageError("--match-params: needs --arch (the cell whose parameter count the random cells match)")
    if not archs and random == 0:
        raise UsageError("nothing to compare: give --arch ARCH and/or --random N with N >= 1")
    say = report or (lambda line: None)
    if options.resume:
        check_same_recipe(out, recipe)
    check_device(options.accelerator, options.devices)
    retrain_seeds = [recipe.seed + k for k in range(seeds)]
    per_seed = {seed: apply_overrides(recipe, {"seed": seed}) for seed in retrain_seeds}
    data = {seed: RecipeData(per_seed[seed]) for seed in retrain_seeds}
    first = data[retrain_seeds[0]]
    data_errors(lambda: (first.split(train=True, cutout=recipe.retrain.cutout), first.split(train=False)))
    candidates, drawn = candidates_of(recipe, archs, random=random, match_params=match_params,
                                      info=data_errors(first.info))
    candidates = [dataclasses.replace(c, source=recorded_sources.get(c.name, c.source)) for c in candidates]
    if options.resume:
        _check_same_cells(out, candidates)
    say(f"{len(archs)} given cell(s) and {random} random cells ({drawn} drawn), {seeds} retrain seed(s) each, "
        f"recipe {recipe.name} ({recipe.retrain.epochs} retrain epochs); output in {out}")
    start = time.perf_counter()
    with holding_run_lock(out, options):
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, recipe, "comparison")
        atomic_write_json(out / SETTINGS_FILE, {
            "archs": {c.name: c.source for c in candidates if c.kind == "arch"}, "random": random, "seeds": seeds,
            "match_params": match_params})
        for candidate in candidates:
            save_arch(candidate.arch, out / RUNS_DIR / candidate.name / ARCH_FILE)
        runs = [(candidate, seed) for seed in retrain_seeds for candidate in candidates]  # seed by seed
        _retrain_all(runs, per_seed, data, out, options, parallel=parallel, threads=threads, say=say)
        summary = _summarize(recipe, candidates, retrain_seeds, out, drawn=drawn, match_params=match_params)
        summary["total_seconds"] = round(time.perf_counter() - start, 2)
        atomic_write_json(out / COMPARE_FILE, summary)
        plot_comparison([{"name": c["name"], "kind": c["kind"], "values": [r["test_accuracy"] for r in c["runs"]]}
                         for c in summary["candidates"]], out / COMPARE_PLOT, title=summary["verdict"])
    say(summary["verdict"])
    return summary


def _read_settings(out: Path) -> dict[str, Any]:
    """--resume: what the comparison in ``out`` was started with ({} for one without a settings file)."""
    path = out / SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: {path}: cannot read the comparison's settings ({exc})") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("archs", {}), dict):
        raise UsageError(f"--resume: {path}: not the settings of a comparison")
    return settings


def _check_same_cells(out: Path, candidates: Sequence[Candidate]) -> None:
    """--resume: every candidate folder that exists must hold the same cell."""
    for candidate in candidates:
        path = out / RUNS_DIR / candidate.name / ARCH_FILE
        if path.is_file() and load_arch(path) != candidate.arch:
            raise UsageError(f"--resume: {path} holds another cell than {candidate.source} now; continue with the same "
                             "--arch files and --match-params the comparison was started with")


def _run_folder(out: Path, candidate: Candidate, seed: int) -> Path:
    return out / RUNS_DIR / candidate.name / seed_folder(seed)


def _retrain_all(runs: Sequence[tuple[Candidate, int]], per_seed: dict[int, Recipe], data: dict[int, RecipeData],
                 out: Path, options: RunOptions, *, parallel: int, threads: int | None,
                 say: Callable[[str], None]) -> None:
    """Retrain every (candidate, seed) that is not finished: in this process, or as ``parallel`` processes."""
    states = {(c.name, seed): prepare_run(_run_folder(out, c, seed)) for c, seed in runs}
    todo = [(c, seed) for c, seed in runs if states[c.name, seed] != DONE]
    if len(todo) < len(runs):
        say(f"{len(runs) - len(todo)} of {len(runs)} retrains finished earlier")

    def done(candidate: Candidate, seed: int) -> None:
        result = read_summary(_run_folder(out, candidate, seed))
        say(f"{candidate.name} seed {seed}: test accuracy {result['test_accuracy']:.4f} "
            f"({result['retrain_seconds']:.1f} s)")

    if parallel == 1:
        for candidate, seed in todo:
            folder = _run_folder(out, candidate, seed)
            run_retrain(per_seed[seed], out / RUNS_DIR / candidate.name / ARCH_FILE,
                        dataclasses.replace(options, out=folder, resume=states[candidate.name, seed] == RESUME),
                        data=data[seed])
            done(candidate, seed)
        return
    common = common_argv(options, child_threads(options, threads))
    jobs, by_name = [], {}
    for candidate, seed in todo:
        folder = _run_folder(out, candidate, seed)
        name = f"{candidate.name}-{seed_folder(seed)}"
        resume = ("--resume",) if states[candidate.name, seed] == RESUME else ()
        jobs.append(Job(name, folder, ("retrain", "--recipe", str(out / CONFIG_FILE), "--set", f"seed={seed}",
                                       "--arch", str(out / RUNS_DIR / candidate.name / ARCH_FILE),
                                       "--out", str(folder), *resume, *common)))
        by_name[name] = (candidate, seed)
    run_in_processes(jobs, parallel=parallel, log_dir=out / LOGS_DIR, threads=child_threads(options, threads),
                     on_done=lambda job: done(*by_name[job.name]))


def _rank(value: float, others: Sequence[float]) -> int:
    """1 + how many of ``others`` are strictly higher (1 = best; ties share the better rank)."""
    return 1 + sum(other > value for other in others)


def _summarize(recipe: Recipe, candidates: Sequence[Candidate], retrain_seeds: Sequence[int], out: Path, *,
               drawn: int, match_params: float | None) -> dict[str, Any]:
    """compare.json: per candidate and per run, seed noise, each given cell against the random pool, the verdict."""
    from ..stats import compare_groups, describe, pooled_std

    rows = []
    for candidate in candidates:
        runs = []
        for seed in retrain_seeds:
            folder = _run_folder(out, candidate, seed)
            result = read_summary(folder)
            runs.append({"candidate": candidate.name, "seed": seed, "test_accuracy": result["test_accuracy"],
                         "retrain_seconds": result["retrain_seconds"], "folder": str(folder.relative_to(out))})
        values = [run["test_accuracy"] for run in runs]
        rows.append({"name": candidate.name, "kind": candidate.kind, "source": candidate.source,
                     "genotype": format_genotype(to_genotype(candidate.arch)), "params": candidate.params,
                     **describe(values), "runs": runs})
    given = [row for row in rows if row["kind"] == "arch"]
    random_means = [row["mean"] for row in rows if row["kind"] == "random"]
    comparisons = []
    for row in given:
        if not random_means:
            break
        values = [run["test_accuracy"] for run in row["runs"]]
        comparisons.append({"arch": row["name"], "source": row["source"],
                            **compare_groups(values, random_means).to_dict(),
                            "rank": _rank(row["mean"], random_means), "rank_of": len(random_means) + 1})
    pooled = None
    if len(given) > 1 and random_means:
        pooled = compare_groups([row["mean"] for row in given], random_means).to_dict()
    top: dict[str, Any] = {"difference": None, "welch_p": None, "mannwhitney_p": None, "rank": None, "rank_of": None}
    if comparisons:
        top = {key: comparisons[0][key] for key in top}
        verdict = comparisons[0]["verdict"]
    elif not random_means:
        verdict = "no random cells to compare with (--random N): the table gives each cell's mean and seed noise"
    else:
        verdict = "no searched cell given (--arch): the table gives the random cells' spread and the seed noise"
    r = recipe.retrain
    return {
        "command": "compare",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        "protocol": {"retrain_epochs": r.epochs, "cells": r.cells, "width": r.width, "batch_size": r.batch_size,
                     "learning_rate": r.learning_rate, "image_size": recipe.image_size},
        "retrain_seeds": list(retrain_seeds),
        "random_cells": len(random_means),
        "random_cells_drawn": drawn,
        "match_params": match_params,
        "method": METHOD,
        "alpha": SIGNIFICANCE_LEVEL,
        **top,
        "verdict": verdict,
        "seed_noise": pooled_std([[run["test_accuracy"] for run in row["runs"]] for row in rows]),
        "random_spread": statistics.stdev(random_means) if len(random_means) > 1 else None,
        "comparisons": comparisons,
        "pooled": pooled,
        "candidates": rows,
        "runs": [run for row in rows for run in row["runs"]],
        **run_facts(recipe),
    }
