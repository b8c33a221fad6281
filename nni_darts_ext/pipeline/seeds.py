"""``nni-darts search --seeds 0,1,2,3``: one search per seed, then one cell chosen, never by the test split.

DARTS finds a different cell in every run; the paper (Liu et al., ICLR 2019, Sec. 3.2) searched four times with
different seeds and kept the cell with the best validation accuracy after a short retrain from scratch. This
module does the same with any recipe (``search.seeds``), and records how much the seeds agree.

``DIR`` holds:

* ``config.yaml``: the resolved recipe (``search.seeds`` set), which ``--resume`` reads;
* ``seed-S/``: one complete search run per seed, a folder like any ``nni-darts search --out`` (seed ``S``,
  ``search.seeds`` null), so ``nni-darts search --resume --out DIR/seed-S`` works on it alone;
* ``select/seed-S/`` (``search.select: val``): the short retrain that scored seed S's cell: the recipe's retrain
  net and optimiser for ``select.epochs`` epochs under the recipe's ``seed``, trained on the training split without
  a held-out ``select.held_out_fraction`` and scored on that part; the test split is never built;
* ``logs/seed-S.log`` (``--parallel``): each search's output;
* ``seeds.json``: per seed its genotype, score and folders, how many of the 16 edges each pair of seeds agrees on,
  the chosen seed; ``arch.json``, ``genotype.txt`` and ``cells.png`` of the chosen cell.

The cell with the highest score wins (the first seed of the list among equal scores). With ``search.select:
last-val`` the score is each search's own final validation accuracy (the supernet's, ``final_val_accuracy`` in
its ``summary.json``), which costs nothing more but scores the supernet rather than the cell.

Example::

    summary = run_seed_searches(load_recipe("demo", ["search.seeds=[0, 1, 2]"]), RunOptions(out="runs/seeds"))
    summary["chosen_seed"], summary["runs"][0]["score"]
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..arch import NUM_EDGES, edge_difference, format_genotype, load_arch, save_arch, to_genotype
from ..checks import check_int
from ..errors import ArgumentError, UsageError
from ..io import atomic_write_json, atomic_write_text
from ..plotting import plot_cells
from ..recipe_data import RecipeData
from ..recipes import Recipe, apply_overrides
from .assemble import check_device, check_search, data_errors
from .options import RunOptions
from .parallel import Job, child_threads, common_argv, run_in_processes
from .retrain import run_retrain
from .run_folder import ARCH_FILE, CELLS_PLOT, CONFIG_FILE, GENOTYPE_FILE, write_config
from .run_set import DONE, RESUME, check_run_set, check_same_recipe, prepare_run, read_summary
from .runtime import holding_run_lock, run_facts
from .search import FINAL_VAL_NOTE, run_search

__all__ = ["LOGS_DIR", "SEEDS_FILE", "SELECT_DIR", "run_seed_searches", "seed_folder"]

#: The multi-seed search's record (``DIR/seeds.json``).
SEEDS_FILE = "seeds.json"
#: Where the selection retrains go (``DIR/select/seed-S``).
SELECT_DIR = "select"
#: Where the output of runs started as processes goes (``DIR/logs/seed-S.log``).
LOGS_DIR = "logs"


def seed_folder(seed: int) -> str:
    """The folder name of seed ``seed``'s run: ``seed-S``.

    Example::

        >>> seed_folder(3)
        'seed-3'
    """
    return f"seed-{seed}"


def _parallel(parallel: Any) -> int:
    try:
        return check_int("--parallel", parallel, minimum=1)
    except ArgumentError as exc:
        raise UsageError(str(exc)) from None


def run_seed_searches(recipe: Recipe, options: RunOptions, *, parallel: int = 1, threads: int | None = None,
                      report: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Search once per seed of ``recipe.search.seeds`` into ``DIR/seed-S``, then choose one cell by
    ``recipe.search.select``; write ``DIR/seeds.json`` and the chosen ``DIR/arch.json`` (see the module docstring).

    ``parallel``: searches run side by side as processes (:mod:`.parallel`; each with ``threads`` torch threads,
    one on a CPU by default); 1 runs them one after the other in this process. The selection retrains run in this
    process. With ``options.resume`` finished searches and selection retrains are kept and interrupted ones
    continue; the recipe must be the one the searches were started with, but for ``search.seeds`` (add seeds) and
    ``search.select`` (choose again by the other rule). ``report(line)`` is called as each step ends.

    Raises:
        UsageError, RecipeError: bad options, data or recipe, a folder in use; nothing written.
        RunsFailed: searches started as processes failed (the others finished; ``--resume`` retries them).

    Example::

        summary = run_seed_searches(recipe, RunOptions(out="runs/seeds", accelerator="cpu"), parallel=2)
    """
    seeds = recipe.search.seeds
    if not seeds:
        raise UsageError("search.seeds: give the seeds of the searches (--seeds 0,1,2,3)")
    parallel = _parallel(parallel)
    say = report or (lambda line: None)
    out = check_run_set(options.out, resume=options.resume, what="multi-seed search",
                        markers=(SEEDS_FILE, SELECT_DIR, *(seed_folder(s) for s in seeds)))
    if options.resume:
        # more seeds may be added, and the cell chosen again by the other rule; the rest is the runs' protocol
        check_same_recipe(out, recipe, may_differ=("search.seeds", "search.select"))
    check_device(options.accelerator, options.devices, search=True)
    check_search(recipe)
    per_seed = {seed: apply_overrides(recipe, {"seed": seed, "search.seeds": None}) for seed in seeds}
    data_errors(lambda: RecipeData(per_seed[seeds[0]]).split(train=True))
    say(f"{len(seeds)} searches ({recipe.name}, seeds {', '.join(map(str, seeds))}), then the cell chosen by "
        f"{recipe.search.select}; output in {out}")
    start = time.perf_counter()
    with holding_run_lock(out, options):
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, recipe, "multi-seed search")
        _search_all(recipe, per_seed, out, options, parallel=parallel, threads=threads, say=say)
        searched = {seed: read_summary(out / seed_folder(seed)) for seed in seeds}
        scores, select_folders = _scores(recipe, searched, out, options, say=say)
        summary = _choose(recipe, searched, scores, select_folders, out)
        summary["total_seconds"] = round(time.perf_counter() - start, 2)
        atomic_write_json(out / SEEDS_FILE, summary)
    say(f"chosen: seed {summary['chosen_seed']} (score {summary['chosen_score']:.4f}); wrote {out / ARCH_FILE}")
    return summary


def _search_all(recipe: Recipe, per_seed: dict[int, Recipe], out: Path, options: RunOptions, *, parallel: int,
                threads: int | None, say: Callable[[str], None]) -> None:
    """Run every seed's search that is not finished: in this process, or as ``parallel`` processes."""
    states = {seed: prepare_run(out / seed_folder(seed)) for seed in per_seed}
    todo = [seed for seed, state in states.items() if state != DONE]
    for seed in per_seed:
        if states[seed] == DONE:
            say(f"seed {seed}: search finished earlier ({seed_folder(seed)}/)")

    def done(seed: int) -> None:
        summary = read_summary(out / seed_folder(seed))
        say(f"seed {seed}: search {summary['search_seconds']:.1f} s, genotype {summary['genotype']}")

    if parallel == 1:
        for seed in todo:
            folder = out / seed_folder(seed)
            run_search(per_seed[seed], dataclasses.replace(options, out=folder, resume=states[seed] == RESUME))
            done(seed)
        return
    common = common_argv(options, child_threads(options, threads))
    jobs = [Job(seed_folder(seed), out / seed_folder(seed),
                ("search", "--recipe", str(out / CONFIG_FILE), "--set", f"seed={seed}", "search.seeds=null",
                 "--out", str(out / seed_folder(seed)), *(("--resume",) if states[seed] == RESUME else ()), *common))
            for seed in todo]
    by_name = {job.name: seed for job, seed in zip(jobs, todo, strict=True)}
    run_in_processes(jobs, parallel=parallel, log_dir=out / LOGS_DIR, threads=child_threads(options, threads),
                     on_done=lambda job: done(by_name[job.name]))


def _scores(recipe: Recipe, searched: dict[int, dict[str, Any]], out: Path, options: RunOptions, *,
            say: Callable[[str], None]) -> tuple[dict[int, float], dict[int, str | None]]:
    """Each seed's selection score (higher is better) and the folder of its selection retrain (``None``)."""
    rule = recipe.search.select
    if rule == "last-val":
        scores = {}
        for seed, summary in searched.items():
            value = summary.get("final_val_accuracy")
            if value is None:
                raise UsageError(f"{out / seed_folder(seed)}: its summary.json has no final_val_accuracy (a search of "
                                 "an older version); choose with --set search.select=val")
            scores[seed] = float(value)
        return scores, dict.fromkeys(searched)
    select = recipe.select
    short = apply_overrides(recipe, {"retrain.epochs": select.epochs, "search.seeds": None})
    data = RecipeData(short)
    scores, folders = {}, {}
    for seed in searched:
        folder = out / SELECT_DIR / seed_folder(seed)
        folders[seed] = f"{SELECT_DIR}/{seed_folder(seed)}"
        state = prepare_run(folder)
        if state == DONE:
            result = read_summary(folder)
        else:
            result = run_retrain(short, out / seed_folder(seed) / ARCH_FILE,
                                 dataclasses.replace(options, out=folder, resume=state == RESUME, nni=False),
                                 data=data, held_out=select.held_out_fraction)
        scores[seed] = float(result["final_val_accuracy"])
        say(f"seed {seed}: selection retrain ({select.epochs} epochs) accuracy {scores[seed]:.4f} on the held-out "
            f"{select.held_out_fraction:.0%} of the training split")
    return scores, folders


def _choose(recipe: Recipe, searched: dict[int, dict[str, Any]], scores: dict[int, float],
            select_folders: dict[int, str | None], out: Path) -> dict[str, Any]:
    """Pick the best-scoring seed (first among equals), write its cell; the summary for ``seeds.json``."""
    seeds = list(searched)
    chosen = max(seeds, key=lambda seed: scores[seed])  # max keeps the first of equal scores
    archs = {seed: load_arch(out / seed_folder(seed) / ARCH_FILE) for seed in seeds}
    arch = archs[chosen]
    save_arch(arch, out / ARCH_FILE)
    genotype = format_genotype(to_genotype(arch))
    atomic_write_text(out / GENOTYPE_FILE, genotype + "\n")
    plot_cells(arch, out / CELLS_PLOT)
    rule = recipe.search.select
    if rule == "val":
        select = recipe.select
        how = (f"accuracy of a short retrain ({select.epochs} epochs, the recipe's retrain net, seed {recipe.seed}) "
               f"on a held-out {select.held_out_fraction:.0%} of the training split; the test split is never read")
    else:
        how = f"the search's final validation accuracy: {FINAL_VAL_NOTE}"
    return {
        "command": "search",
        "recipe": recipe.name,
        "dataset": recipe.dataset.name,
        "strategy": recipe.search.strategy,
        "seeds": seeds,
        "select": rule,
        "score": how,
        "runs": [{
            "seed": seed,
            "folder": seed_folder(seed),
            "genotype": searched[seed]["genotype"],
            "score": scores[seed],
            "search_final_val_accuracy": searched[seed].get("final_val_accuracy"),
            "search_seconds": searched[seed].get("search_seconds"),
            "params": searched[seed].get("params"),
            "select_folder": select_folders[seed],
        } for seed in seeds],
        "edges": NUM_EDGES,
        "agreement": [{"seeds": [a, b], "edges_agreeing": NUM_EDGES - edge_difference(archs[a], archs[b])}
                      for a, b in itertools.combinations(seeds, 2)],
        "chosen_seed": chosen,
        "chosen_score": scores[chosen],
        "arch": ARCH_FILE,
        "genotype": genotype,
        "cells_plot": CELLS_PLOT,
        **run_facts(recipe),
    }
