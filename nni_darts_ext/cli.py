"""``nni-darts``: the DARTS pipeline from the command line (search, retrain, evaluate, plot, convert, demo, recipes).

The work is done by :mod:`nni_darts_ext.pipeline`; this module parses arguments, sets up logging (Lightning's
progress bars on a terminal, one line per epoch otherwise, NNI's console noise off), prints reports and turns
known bad input into one line on stderr and exit code 2 (no traceback, nothing written).

Example::

    nni-darts recipes show paper
    nni-darts search --recipe paper --data-dir data --out runs/search
    nni-darts retrain --recipe paper --arch runs/search/arch.json --out runs/retrain
    nni-darts demo --baseline random
    nni-darts search --recipe demo --seeds 0,1,2 --out runs/seeds
    nni-darts compare --recipe demo --arch runs/seeds/arch.json --random 6 --seeds 2 --out runs/compare
    nni-darts export runs/demo && nni-darts predict runs/demo/export/model.onnx seven.png --top-k 3
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .constants import COMPARE_RANDOM_CELLS, COMPARE_RETRAIN_SEEDS

__all__ = ["main", "build_parser"]

_logger = logging.getLogger("nni_darts_ext")

PROG = "nni-darts"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention (SIGTERM: 143)
# An exported file whose logits differ from PyTorch's: not bad input (the run is fine), nothing exported.
EXIT_PARITY = 1
# A non-finite loss: the run failed, but not on bad input (exit 2 means nothing was written; a diverged run has
# written checkpoints and config.yaml), so a script can tell "fix the command" from "resume with other settings".
EXIT_DIVERGED = 1
EXIT_OUT_OF_MEMORY = 75  # EX_TEMPFAIL (sysexits.h): try again, with the settings the message names
DEFAULT_DEMO_OUT = "runs/demo"
_SEED_LIST = re.compile(r"\d+(,\d+)*")
# The demo's nets (width 4-16 at 8x8) are too small for intra-op parallelism to pay, and several torch threads make
# each step slower as soon as other work shares the cores (OpenMP threads wait on busy cores; measured figures in
# the README, "Performance"). One thread, unless --threads says otherwise.
DEMO_THREADS = 1
_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
# Warnings that say nothing to a user of this CLI (the settings are deliberate): message regexes.
_QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*`training_service` will be ignored.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*is found to be not a nn\.Module.*",
    r".*Trying to infer the `batch_size`.*",
    r".*that has `shuffle=True`.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)
# Our own modules whose INFO lines are detail, not progress.
_DETAIL_LOGGERS = ("nni_darts_ext.plotting",)


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------------


def _add_recipe(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--recipe", metavar="R", help=f"recipe name or YAML file ({default_help})")
    parser.add_argument(
        "--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
        help="override recipe values, dotted keys, YAML values, type-checked (e.g. --set retrain.epochs=10 seed=1)",
    )


def _add_common(parser: argparse.ArgumentParser, *, resume: bool = True) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--data-dir", metavar="DIR", help="dataset folder (sets dataset.data_dir)")
    group.add_argument("--accelerator", default="auto", choices=_ACCELERATORS, help="Lightning accelerator (auto)")
    group.add_argument("--devices", type=int, metavar="N", help="number of devices (1)")
    group.add_argument("--strategy", metavar="S",
                       help="Lightning strategy, e.g. ddp (several devices: one process per device; the search "
                            "averages architecture gradients across ranks, only rank 0 writes files)")
    group.add_argument("--num-nodes", type=int, default=1, metavar="N",
                       help="machines (Lightning num_nodes; start one command per machine with torchrun or SLURM)")
    group.add_argument("--sync-batchnorm", action="store_true",
                       help="retrain: BatchNorm statistics synchronised across DDP processes")
    group.add_argument("--precision", metavar="P", help="Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the net (search: each supernet cell; retrain: the whole net); falls back "
                            "to eager with one warning where it cannot compile")
    group.add_argument("--memory-limit", metavar="SIZE",
                       help="batch_size: auto finds the largest batch whose step fits SIZE (e.g. 4GiB, 800MB; CPU: "
                            "resident memory; default 90%% of the GPU's memory, or of the memory available)")
    group.add_argument("--scale-lr", action="store_true",
                       help="with batch_size: auto, scale the learning rate linearly: lr x batch / 64 (search) or "
                            "/ 96 (retrain), the DARTS paper's batches")
    group.add_argument("--seed", type=int, metavar="N", help="random seed (sets the recipe's seed)")
    group.add_argument("--threads", type=int, metavar="N",
                       help="torch CPU threads (default: torch's, one per core; demo: 1); 1 is far faster on a busy "
                            "machine")
    if resume:
        group.add_argument("--resume", action="store_true",
                           help="continue an interrupted run from DIR/checkpoints/last.ckpt")
        group.add_argument("--checkpoint-every", metavar="DURATION",
                           help="also save last.ckpt mid-epoch every DURATION of wall time (e.g. 10m, 90s, 1h30m): "
                                "a kill then loses at most that long")
    group.add_argument("--quiet", action="store_true", help="only errors and the final result")


def build_parser() -> argparse.ArgumentParser:
    """The ``nni-darts`` argument parser (sub-commands and options)."""
    parser = _OneLineParser(prog=PROG, description="DARTS architecture search with NNI 3.0: search, retrain, "
                            "evaluate, plot and convert cells, from named recipes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True

    recipes = sub.add_parser("recipes", help="list the shipped recipes; `recipes show NAME` prints one")
    recipes.add_argument("action", nargs="?", choices=("list", "show"), default="list")
    recipes.add_argument("name", nargs="?", help="recipe to show (a shipped name or a YAML file)")
    recipes.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                         help="with show: print the resolved recipe with these overrides")

    search = sub.add_parser("search", help="search a cell with NNI's DARTS (writes arch.json, plots, checkpoints)")
    _add_recipe(search, "default: demo, or DIR/config.yaml with --resume")
    search.add_argument("--out", required=True, metavar="DIR", help="run folder")
    search.add_argument("--seeds", metavar="S,S,...",
                        help="one search per seed into DIR/seed-S/, then the cell chosen by search.select into "
                             "DIR/arch.json, the record in DIR/seeds.json (sets search.seeds), e.g. 0,1,2,3")
    search.add_argument("--parallel", type=int, metavar="K",
                        help="with --seeds: K searches side by side as processes (one torch thread each on a CPU)")
    _add_common(search)

    retrain = sub.add_parser("retrain", help="train a fixed cell from scratch, then test it")
    _add_recipe(retrain, "default: demo, or DIR/config.yaml with --resume")
    retrain.add_argument("--arch", required=True, metavar="ARCH",
                         help="arch file (JSON either format, or genotype text), a search folder, or darts-v1/darts-v2")
    retrain.add_argument("--out", required=True, metavar="DIR", help="run folder")
    retrain.add_argument("--nni", action="store_true",
                         help="run as an NNI trial: hyperparameters from NNI's tuner, validation accuracy reported "
                         "each "
                         "epoch (held-out 10%% of the training split), test accuracy as the final result")
    _add_common(retrain)

    evaluate = sub.add_parser("evaluate", help="test accuracy of trained weights or of NNI's pretrained darts-v2")
    _add_recipe(evaluate, "gives the dataset; default: config.yaml beside the weights, else demo; paper with "
                "--pretrained")
    evaluate.add_argument("--arch", metavar="ARCH", help="arch file, search/retrain folder or named arch")
    evaluate.add_argument("--weights", metavar="FILE", help="state dict or Lightning checkpoint (weights_only load)")
    evaluate.add_argument("--pretrained", metavar="NAME", choices=("darts-v2",),
                          help="NNI's pretrained net (darts-v2, CIFAR-10)")
    evaluate.add_argument("--model", metavar="FILE",
                          help="test accuracy of an exported file (model.onnx, model.ts) by its own runtime, on its "
                               "run's test set")
    evaluate.add_argument("--out", metavar="DIR", help="also write DIR/summary.json")
    _add_common(evaluate, resume=False)

    plot = sub.add_parser("plot", help="draw both cells of an arch (PNG, SVG or PDF by suffix)")
    plot.add_argument("arch", metavar="ARCH", help="arch file (JSON either format, or genotype text)")
    plot.add_argument("-o", "--output", required=True, metavar="FILE", help="image file (.png, .svg, .pdf)")

    convert = sub.add_parser("convert", help="convert an arch between NNI's dict and the DARTS genotype")
    convert.add_argument("arch", metavar="ARCH", help="arch file (JSON either format, or genotype text)")
    convert.add_argument("--to", required=True, choices=("genotype", "arch"), help="output format")
    convert.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    inspect = sub.add_parser("inspect", help="report on a search folder, finished or still running (reads files only)")
    inspect.add_argument("dir", metavar="DIR", help="an `nni-darts search` (or demo) output folder")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")

    compare = sub.add_parser("compare", help="is the searched cell better than random cells? retrain each under "
                             "several seeds, test the difference (compare.json, compare.png)")
    _add_recipe(compare, "gives the retrain protocol; default: demo, or DIR/config.yaml with --resume")
    compare.add_argument("--arch", dest="archs", metavar="ARCH", nargs="+", action="extend", default=[],
                         help="searched cell(s): arch file, search folder or named arch; each is compared with the "
                              "random cells, the first gives the verdict (with --resume: the comparison's own)")
    compare.add_argument("--random", type=int, metavar="N",
                         help=f"random cells of the same space to retrain ({COMPARE_RANDOM_CELLS}; with --resume: "
                              "the comparison's own)")
    compare.add_argument("--seeds", type=int, metavar="K",
                         help=f"retrain seeds per cell: the recipe's seed, seed + 1, ... ({COMPARE_RETRAIN_SEEDS}; "
                              "with --resume: the comparison's own)")
    compare.add_argument("--match-params", type=float, metavar="TOL",
                         help="only random cells whose parameter count is within this relative tolerance of the "
                              "first --arch's (e.g. 0.1: within 10%%; with --resume: the comparison's own)")
    compare.add_argument("--out", required=True, metavar="DIR", help="comparison folder")
    compare.add_argument("--parallel", type=int, default=1, metavar="K",
                         help="K retrains side by side as processes (one torch thread each on a CPU)")
    _add_common(compare)

    select = sub.add_parser("select", help="read the cell off a finished search's last checkpoint again, without "
                            "searching again (arch.json, genotype.txt, cells.png, selection.json)")
    select.add_argument("search_dir", metavar="SEARCH_DIR", help="a finished search's --out")
    select.add_argument("--selection", choices=("perturbation", "magnitude"),
                        help="perturbation (DARTS-PT: keep what the supernet needs most) or magnitude (largest "
                             "weights); default: the search recipe's export.selection")
    select.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the selected cell; rerun with the same DIR to continue an interrupted "
                             "selection")
    select.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override the search's recipe, e.g. --set export.tune_epochs=1")
    _add_common(select, resume=False)

    export = sub.add_parser("export", help="the retrained net as standalone ONNX / TorchScript files, checked against "
                            "PyTorch, with a model card (params, multiply-adds, latency)")
    export.add_argument("run", metavar="RUN_DIR", help="a retrain (or demo) folder: config.yaml, arch.json, model.pt")
    export.add_argument("--format", default="onnx,torchscript", metavar="F,F",
                        help="onnx, torchscript or both, comma-separated (onnx,torchscript)")
    export.add_argument("--out", metavar="DIR", help="export folder (RUN_DIR/export)")
    export.add_argument("--include-preprocessing", action="store_true",
                        help="scaling and normalisation inside the graph: it takes pixel values 0..255 (resizing "
                             "stays the caller's)")
    export.add_argument("--latency-repeats", type=int, default=None, metavar="N",
                        help="timed runs per latency figure in the model card (30)")
    export.add_argument("--threads", type=int, metavar="N", help="torch / ONNX Runtime CPU threads (torch's default)")
    export.add_argument("--quiet", action="store_true", help="only errors and the final result")

    predict = sub.add_parser("predict", help="class names and probabilities of images, from an exported file or a "
                             "run folder")
    predict.add_argument("model", metavar="MODEL", help="a run folder, an export folder, an .onnx or a TorchScript "
                         "file (with model_card.json beside it)")
    predict.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders of images")
    predict.add_argument("--top-k", type=int, default=1, metavar="K", help="classes per image (1)")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    predict.add_argument("--threads", type=int, metavar="N", help="CPU threads (torch's default)")
    predict.add_argument("--quiet", action="store_true", help="only errors and the result")

    demo = sub.add_parser("demo", help="search, plot and retrain on digits (a few minutes on a CPU)")
    _add_recipe(demo, "default: demo")
    demo.add_argument("--out", default=DEFAULT_DEMO_OUT, metavar="DIR", help=f"run folder ({DEFAULT_DEMO_OUT})")
    demo.add_argument("--baseline", choices=("random",), help="also retrain a random cell of the same size")
    _add_common(demo)
    return parser


# ----------------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------------


def _setup_logging(quiet: bool, *, training: bool) -> None:
    """Our log lines on stderr (INFO, or WARNING with --quiet); Lightning and NNI kept to warnings and files.

    Lightning sets its loggers to INFO when imported, so for training commands it is imported first.
    """
    if training:
        import pytorch_lightning  # noqa: F401

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[nni-darts] %(message)s"))
    _logger.handlers[:] = [handler]
    _logger.setLevel(logging.WARNING if quiet else logging.INFO)
    _logger.propagate = False
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if quiet else logging.WARNING)
    for name in _DETAIL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def _silence_nni() -> None:
    """NNI prints its log on stdout; keep it in the experiment's log file only."""
    from ._compat import import_nni_quietly

    with import_nni_quietly():
        from nni.runtime.log import silence_stdout
    silence_stdout()
    # With its console handler gone, NNI's warnings before an experiment starts would reach logging's
    # last-resort handler (stderr); the experiment's log file handler still receives everything.
    nni_logger = logging.getLogger("nni")
    if not any(isinstance(h, logging.NullHandler) for h in nni_logger.handlers):
        nni_logger.addHandler(logging.NullHandler())


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


def _recipe(args: argparse.Namespace, default: str, *, resume_dir: Path | None = None) -> Any:
    from .pipeline.run_folder import CONFIG_FILE
    from .recipes import load_recipe

    name = args.recipe
    if name is None and resume_dir is not None and (resume_dir / CONFIG_FILE).is_file():
        name = str(resume_dir / CONFIG_FILE)
        _logger.debug("recipe: %s", name)
    overrides = list(args.overrides)
    if getattr(args, "seed", None) is not None:
        overrides.append(f"seed={args.seed}")
    if getattr(args, "data_dir", None) is not None:
        overrides.append(f"dataset.data_dir={json.dumps(args.data_dir)}")
    return load_recipe(name or default, overrides)


def _positive(flag: str, value: int) -> int:
    from .errors import UsageError

    if value < 1:
        raise UsageError(f"{flag}: expected a positive int, got {value}")
    return value


def _options(args: argparse.Namespace, out: str | None) -> Any:
    from .pipeline.options import RunOptions

    return RunOptions(
        out=out,
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        strategy=getattr(args, "strategy", None),
        num_nodes=_positive("--num-nodes", getattr(args, "num_nodes", 1)),
        sync_batchnorm=getattr(args, "sync_batchnorm", False),
        resume=getattr(args, "resume", False),
        progress_bar=not args.quiet and sys.stderr.isatty(),
        checkpoint_every=_duration("--checkpoint-every", getattr(args, "checkpoint_every", None)),
        compile=getattr(args, "compile", False),
        memory_limit=_memory_limit(getattr(args, "memory_limit", None)),
        scale_lr=getattr(args, "scale_lr", False),
    )


def _memory_limit(text: str | None) -> int | None:
    from .batch_size import parse_memory_size

    return None if text is None else parse_memory_size(text)


def _duration(flag: str, text: str | None) -> float | None:
    from .durations import parse_duration
    from .errors import ArgumentError, UsageError

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ArgumentError as exc:
        raise UsageError(f"{flag} {text}: {exc}") from None


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import RecipeError, list_recipes, load_recipe, recipe_text

    if args.action == "list":
        if args.name is not None:
            raise RecipeError(f"recipes: unexpected {args.name!r} (did you mean `recipes show {args.name}`?)")
        import yaml

        for name in list_recipes():  # descriptions straight from the YAML: listing needs no NNI import
            description = (yaml.safe_load(recipe_text(name)) or {}).get("description", "")
            print(f"{name:10s} {description}")
        return 0
    if args.name is None:
        raise RecipeError("recipes show: which recipe? (one of: " + ", ".join(list_recipes()) + ")")
    if args.name in list_recipes() and not args.overrides:
        print(recipe_text(args.name), end="")
        return 0
    recipe = load_recipe(args.name, args.overrides)
    print(recipe.to_yaml(header=f"{args.name} resolved" + (" with --set " + " ".join(args.overrides)
                                                           if args.overrides else "")), end="")
    return 0


def _not_rank_zero() -> bool:
    from .distributed import launched_rank

    return launched_rank() != 0


def _seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2,3`` as a list of distinct ints >= 0."""
    from .errors import UsageError

    if not _SEED_LIST.fullmatch(text.replace(" ", "")):
        raise UsageError(f"--seeds {text}: expected seeds >= 0 separated by commas, e.g. 0,1,2,3")
    seeds = [int(part) for part in text.replace(" ", "").split(",")]
    repeated = next((seed for i, seed in enumerate(seeds) if seed in seeds[:i]), None)
    if repeated is not None:
        raise UsageError(f"--seeds {text}: seed {repeated} is given twice; each seed runs one search")
    return seeds


def _single_process(args: argparse.Namespace, what: str) -> None:
    from .errors import UsageError

    if (args.devices or 1) * args.num_nodes > 1:
        raise UsageError(f"{what}: runs one process per run; several devices per run are not supported here (run "
                         "the runs one by one with --devices, or side by side with --parallel on one device each)")


def _cmd_search(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .pipeline.search import run_search

    if args.seeds is not None:
        args.overrides.append(f"search.seeds={json.dumps(_seed_list(args.seeds))}")
    recipe = _recipe(args, "demo", resume_dir=Path(args.out) if args.resume else None)
    if recipe.search.seeds is not None:
        return _search_seeds(args, recipe)
    if args.parallel is not None:
        raise UsageError("--parallel: runs several searches side by side; give --seeds (or search.seeds) too")
    summary = run_search(recipe, _options(args, args.out))
    if _not_rank_zero():  # DDP: the other ranks ran the same command; rank 0 reports
        return 0
    out = Path(args.out)
    print(summary["genotype"])
    print(f"search ({recipe.name}, {summary['strategy']}): {summary['epochs']} epochs in "
          f"{summary['search_seconds']:.1f} s "
          f"on {summary['device']}; wrote {out / 'arch.json'}, genotype.txt, cells.png, alphas.png, summary.json")
    return 0


def _search_seeds(args: argparse.Namespace, recipe: Any) -> int:
    from .pipeline.seeds import run_seed_searches

    _single_process(args, "--seeds")
    out = Path(args.out)
    parallel = 1 if args.parallel is None else args.parallel
    summary = run_seed_searches(recipe, _options(args, args.out), parallel=parallel, threads=args.threads,
                                report=lambda line: print(f"  {line}", flush=True))
    for run in summary["runs"]:
        mark = " (chosen)" if run["seed"] == summary["chosen_seed"] else ""
        print(f"seed {run['seed']}: score {run['score']:.4f}{mark}  {run['genotype']}")
    if summary["agreement"]:
        pairs = ", ".join(f"{a}-{b} {pair['edges_agreeing']}" for pair in summary["agreement"]
                          for a, b in [pair["seeds"]])
        print(f"edges agreeing between seeds (of {summary['edges']}): {pairs}")
    print(f"search ({recipe.name}, {summary['strategy']}): chose seed {summary['chosen_seed']} by "
          f"{summary['select']}; wrote {out / 'arch.json'}, genotype.txt, cells.png, seeds.json")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .pipeline.compare import run_compare

    _single_process(args, "compare")
    recipe = _recipe(args, "demo", resume_dir=Path(args.out) if args.resume else None)
    out = Path(args.out)
    summary = run_compare(recipe, _options(args, args.out), archs=args.archs, random=args.random, seeds=args.seeds,
                          match_params=args.match_params, parallel=args.parallel, threads=args.threads,
                          report=lambda line: print(f"  {line}", flush=True))
    print(f"{'candidate':12s} {'params':>9s} {'mean':>7s} {'std':>7s}  test accuracies")
    for row in summary["candidates"]:
        std = "" if row["std"] is None else f"{row['std']:.4f}"
        runs = " ".join(f"{run['test_accuracy']:.4f}" for run in row["runs"])
        print(f"{row['name']:12s} {row['params']:>9,d} {row['mean']:7.4f} {std:>7s}  {runs}")
    if summary["seed_noise"] is not None:
        spread = summary["random_spread"]
        print(f"seed noise (pooled standard deviation of one retrain): {summary['seed_noise']:.4f}"
              + ("" if spread is None else f"; spread of the random cells' means: {spread:.4f}"))
    for c in summary["comparisons"]:
        welch = "n/a" if c["welch_p"] is None else f"{c['welch_p']:.3g}"
        print(f"{c['arch']} - random: {c['difference']:+.4f}, Welch p = {welch}, Mann-Whitney p = "
              f"{c['mannwhitney_p']:.3g}, rank {c['rank']} of {c['rank_of']}")
    print(f"verdict: {summary['verdict']}")
    print(f"wrote {out / 'compare.json'}, {out / 'compare.png'}")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .pipeline.selection import run_select

    _single_process(args, "select")
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.data_dir is not None:
        overrides.append(f"dataset.data_dir={json.dumps(args.data_dir)}")
    summary = run_select(Path(args.search_dir), args.selection, _options(args, args.out), overrides=overrides)
    print(f"{summary['selection_kind']} selection: {summary['genotype']}")
    print(f"wrote {Path(args.out) / summary['arch']}, {Path(args.out) / summary['selection']}")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from .pipeline.retrain import run_retrain

    recipe = _recipe(args, "demo", resume_dir=Path(args.out) if args.resume else None)
    options = _options(args, args.out)
    from .nni_trial import is_nni_trial

    if args.nni or is_nni_trial():  # --nni, or started by an NNI training service (NNI_PLATFORM is set)
        from .nni_trial import apply_trial_overrides

        recipe = apply_trial_overrides(recipe)
        options.nni = True
    summary = run_retrain(recipe, args.arch, options)
    if _not_rank_zero():  # DDP: the other ranks ran the same command; rank 0 reports
        return 0
    print(f"retrain ({recipe.name}): test accuracy {summary['test_accuracy']:.4f} on {recipe.dataset.name}, "
          f"{summary['params']:,} parameters, {summary['epochs']} epochs in {summary['retrain_seconds']:.1f} s on "
          f"{summary['device']}; wrote {Path(args.out) / 'model.pt'}, summary.json")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .pipeline.evaluate import run_evaluate
    from .pipeline.run_folder import CONFIG_FILE

    if args.model is not None:
        return _evaluate_exported(args)
    if args.pretrained is None and (args.weights is None or args.arch is None):
        raise UsageError("evaluate: give --arch ARCH --weights FILE, or --pretrained darts-v2")
    default = "paper" if args.pretrained else "demo"
    if args.recipe is None and args.weights is not None:
        # a retrain folder's config.yaml, beside model.pt or above checkpoints/last.ckpt
        folder = Path(args.weights).expanduser().parent
        candidates = [folder / CONFIG_FILE] + ([folder.parent / CONFIG_FILE] if folder.name == "checkpoints" else [])
        for beside in candidates:
            if beside.is_file():
                default = str(beside)
                _logger.debug("recipe: %s", beside)
                break
    recipe = _recipe(args, default)
    summary = run_evaluate(recipe, _options(args, args.out), arch=args.arch, weights=args.weights,
                           pretrained=args.pretrained)
    print(f"test accuracy {summary['test_accuracy']:.4f} on {recipe.dataset.name} ({summary['params']:,} parameters, "
          f"{summary['cells']} cells, width {summary['width']}, {summary['device']})")
    return 0


def _evaluate_exported(args: argparse.Namespace) -> int:
    import torch

    from .deploy.predict import model_accuracy
    from .errors import UsageError

    given = [flag for flag, value in (("--arch", args.arch), ("--weights", args.weights),
                                      ("--pretrained", args.pretrained), ("--recipe", args.recipe),
                                      ("--out", args.out)) if value is not None]
    if given:
        raise UsageError(f"--model: not used with {', '.join(given)} (the export carries its net and recipe)")
    result = model_accuracy(args.model, threads=torch.get_num_threads())
    print(f"test accuracy {result['test_accuracy']:.4f} on {result['dataset']} ({result['images']} images, "
          f"{result['model']})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .deploy.export import run_export
    from .deploy.latency import LATENCY_REPEATS

    repeats = LATENCY_REPEATS if args.latency_repeats is None else _positive("--latency-repeats",
                                                                              args.latency_repeats)
    formats = [part.strip() for part in args.format.split(",") if part.strip()]
    card = run_export(args.run, formats=formats, out=args.out, include_preprocessing=args.include_preprocessing,
                      latency_repeats=repeats)
    out = Path(args.out) if args.out else Path(args.run) / "export"
    for name, parity in card["parity"].items():
        print(f"{card['files'][name]['file']}: parity on {parity['images']} test images: max |logit diff| "
              f"{parity['max_abs_diff']:.3g}, top-1 agreement {parity['top1_agreement']:.4f}")
    lat = card["latency"]
    for runtime, figures in lat["ms"].items():
        print(f"latency {runtime}: " + ", ".join(f"{k.replace('_', ' ')} {v:.3f} ms" for k, v in figures.items())
              + f" ({lat['threads']} thread(s), median of {lat['repeats']})")
    print(f"{card['params']:,} parameters, {card['macs']:,} multiply-adds per image {card['macs_input_shape']}; "
          f"wrote {out}/ ({', '.join(f['file'] for f in card['files'].values())}, parity.json, model_card.md, "
          "model_card.json)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .deploy.predict import predict_files

    rows = predict_files(args.model, args.inputs, top_k=_positive("--top-k", args.top_k),
                         threads=torch.get_num_threads())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(row["file"] + ": " + ", ".join(f"{t['class']} {t['probability']:.4f}" for t in row["top"]))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .arch import load_arch
    from .errors import UsageError
    from .plotting import plot_cells

    arch = load_arch(args.arch)
    if Path(args.output).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"-o {args.output}: expected a .png, .svg or .pdf file")
    path = plot_cells(arch, args.output)
    print(f"wrote {path}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .arch import format_genotype, load_arch, to_genotype
    from .io import atomic_write_text

    arch = load_arch(args.arch)
    text = format_genotype(to_genotype(arch)) if args.to == "genotype" else json.dumps(arch, indent=2)
    if args.output:
        atomic_write_text(args.output, text + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect_run import format_report, inspect_run

    report = inspect_run(args.dir)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .pipeline.demo import run_demo

    recipe = _recipe(args, "demo")
    out = Path(args.out)
    size = f" {recipe.image_size}x{recipe.image_size}" if recipe.image_size is not None else ""
    print(f"nni-darts demo: recipe {recipe.name}, {recipe.dataset.name}{size}, output in {out}", flush=True)
    summary = run_demo(recipe, _options(args, args.out), baseline=args.baseline,
                       report=lambda line: print(f"  {line}", flush=True))
    print(f"  test accuracy {summary['test_accuracy']:.4f} ({summary['params']:,} parameters, searched cell)"
          + (f" vs {summary['random_arch_test_accuracy']:.4f} (random cell)" if "random_arch_test_accuracy" in summary
             else ""))
    print(f"  plots: {out / summary['cells_plot']}, {out / summary['alphas_plot']}")
    print(f"  summary: {out / 'summary.json'} ({summary['total_seconds']:.1f} s, {summary['device']}, "
          f"{summary['torch_threads']} torch threads, seed {summary['seed']})")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "recipes": _cmd_recipes,
    "search": _cmd_search,
    "retrain": _cmd_retrain,
    "evaluate": _cmd_evaluate,
    "plot": _cmd_plot,
    "convert": _cmd_convert,
    "inspect": _cmd_inspect,
    "demo": _cmd_demo,
    "compare": _cmd_compare,
    "select": _cmd_select,
    "export": _cmd_export,
    "predict": _cmd_predict,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nni-darts`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Exit codes: 0 success; 1 the run diverged (non-finite loss: the last good checkpoint is kept, continue with
    ``--resume --set ...``), runs started side by side (``--parallel``) failed (each named with its log), or an
    exported file failed its parity check (``export``: nothing written);
    2 bad input or an output folder in use by another run (one line on stderr, nothing
    written); 74 an output could not be written (disk full, file-size limit, I/O error: the previous file is kept
    whole, ``--resume`` once space is back); 130 / 143 stopped by SIGINT / SIGTERM (``DIR/checkpoints/last.ckpt``
    holds the last finished step: ``--resume``).

    Example::

        main(["convert", "arch.json", "--to", "genotype"])
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    training = args.command in ("search", "retrain", "evaluate", "demo", "compare", "select")
    training = args.command in ("search", "retrain", "evaluate", "demo", "compare", "export")
    _setup_logging(getattr(args, "quiet", False), training=training)
    threads = getattr(args, "threads", None)
    if threads is None and args.command == "demo":
        threads = DEMO_THREADS
    if threads is not None:
        import torch

        if threads < 1:
            print(f"{PROG} {args.command}: error: --threads: expected a positive int, got {threads}", file=sys.stderr)
            return EXIT_USAGE
        torch.set_num_threads(threads)

    from .errors import (
        ArchError,
        ExportError,
        InspectError,
        OutputWriteError,
        ParityError,
        RecipeError,
        RunInterrupted,
        RunLockedError,
        UsageError,
    )
    from .io import EXIT_OUTPUT_WRITE_FAILED, ignore_file_size_signal

    # Training commands import Lightning anyway; the others (plot, convert, recipes, inspect) stay light.
    bad_input: tuple = (UsageError, RecipeError, ArchError, InspectError, RunLockedError, ExportError)
    diverged: tuple = ()
    signalled: tuple = ()
    out_of_memory: tuple = ()
    if training:
        from .errors import CheckpointError, NonFiniteLossError, OutOfMemoryInStage, RunsFailed, TrainingInterrupted

        out_of_memory = (OutOfMemoryInStage,)
        bad_input += (CheckpointError,)  # a resume checkpoint that is corrupt or of another net
        # a diverged run, or runs started side by side (--parallel) that failed: not bad input, exit 1
        diverged, signalled = (NonFiniteLossError, RunsFailed), (TrainingInterrupted,)
    try:
        if training:
            _silence_nni()
            ignore_file_size_signal()  # past a file-size limit a write fails with EFBIG (exit 74), not SIGXFSZ
        return _COMMANDS[args.command](args)
    except OutputWriteError as exc:  # disk full, file-size limit, I/O error: the previous file is kept whole
        print(f"{PROG} {args.command}: error: {_one_line(exc)}; free space and continue with --resume", file=sys.stderr)
        return EXIT_OUTPUT_WRITE_FAILED
    except bad_input as exc:
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except out_of_memory as exc:  # one line: the stage, the batch, what to try; the last checkpoint is whole
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except ParityError as exc:  # an exported file that does not compute the net's logits: nothing was exported
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_PARITY
    except diverged as exc:  # not bad input: checkpoints were written, the last good one is kept
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DIVERGED
    except signalled as exc:  # SIGINT/SIGTERM: last.ckpt saved after the step in flight
        print(f"{PROG} {args.command}: {_one_line(exc)}; continue it with --resume", file=sys.stderr)
        return exc.code
    except (RunInterrupted, KeyboardInterrupt) as exc:
        message = _one_line(exc) if isinstance(exc, RunInterrupted) else "interrupted"
        print(f"{PROG} {args.command}: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
