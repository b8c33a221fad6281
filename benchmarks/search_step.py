"""Time one DARTS search step of NNI's stock strategy and of our presets, on the same supernet and batches.

Each preset runs in a fresh subprocess (this script re-invoked with ``--single NAME``), so peak memory does not
mix and start-up cost is measured from a cold interpreter. What runs is the real strategy code, wired the way
``OneShotStrategy.mutate_evaluator`` does it: ``strategy.mutate_model(space)``,
``strategy.configure_oneshot_module(module)``, ``strategy.train_dataloader(...)`` and a Lightning ``Trainer`` for one
epoch of ``warmup + steps`` batches; one step is the one-shot module's ``training_step`` (architecture step on the
``val`` half, weight
step on the ``train`` half, real optimizers).

``nni-stock`` is the NNI 3.0 DARTS tutorial's setup: ``DARTS(width, cells, 'cifar')`` space,
``nni.nas.strategy.DARTS(gradient_clip_val=5.)`` and NNI's ``ClassificationModule`` (Adam, lr 1e-3, weight decay
1e-4, the tutorial's ``Classification`` evaluator). Every preset gets the same training module, seed and random
CIFAR-shaped batches, so the ratios compare strategies only.

A preset may carry overrides for ``darts_strategy(name, **overrides)`` after colons, values read as Python
literals: ``--presets nni-stock,first-order,pc-darts:order=2:partial_channels=8``.

``--precision`` (Lightning's ``Trainer(precision=...)`` values) and ``--compile`` (each supernet cell compiled by
:func:`nni_darts_ext.compile.compile_cells`) apply to our presets only; ``nni-stock`` always runs as NNI's tutorial
does (fp32, eager).

Steady state (``_common.py``): each process warms up until two consecutive steps differ by less than 5%
(``--tolerance``; at least ``--warmup``, at most ``--max-warmup`` 8 steps), then times ``--steps`` (at least 3)
steady steps. Reported per preset: their median step time (``step_seconds``; every step's time in
``step_times_s``, with ``warmup_steps`` and ``steady``), images per second (both halves of the step: ``2 * batch``
images), peak memory (CPU: peak RSS of the process; CUDA: ``max_memory_allocated``),
start-up time (process launch to the start of the first step: interpreter, imports, supernet, trainer), the
FLOPs of one step (``flops``: ``torch.utils.flop_counter.FlopCounterMode`` over one extra, untimed, eager step)
and ``matmul_fraction``: the step's achieved FLOP/s over the same process's large square matmul rate in the
step's precision (``matmul_flops_per_second``, best of a few ``--matmul-size`` products).

Example::

    python benchmarks/search_step.py --width 16 --cells 8 --batch 64 --steps 3 --json runs/bench.json
    python benchmarks/search_step.py --device cuda --batch 256 --steps 20 --max-warmup 10
    python benchmarks/search_step.py --presets nni-stock,first-order,pc-darts --precision bf16-mixed --compile
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when this file is loaded as a module

from _common import (  # noqa: E402 - the benchmarks' shared module
    FP32,
    IMAGE_CHANNELS,
    NUM_CLASSES,
    REPO_ROOT,
    add_timing_arguments,
    check_timing_arguments,
    load_average,
    max_batches,
    prepare_child,
    step_timer,
    timing_argv,
    timing_result,
    write_json,
)

STOCK = "nni-stock"
# Step time counts the whole Lightning loop between consecutive batch ends (data fetch, hooks, logging included).
RESULT_KEYS = ("name", "step_seconds", "images_per_second", "peak_memory_mb", "startup_seconds", "flops",
               "matmul_fraction")
# NNI 3.0 DARTS tutorial (examples/tutorials/darts.py): Classification(learning_rate=1e-3, weight_decay=1e-4),
# DartsStrategy(gradient_clip_val=5.), DartsSpace(16, 8, 'cifar'), batch 64.
TUTORIAL_LEARNING_RATE = 1e-3
TUTORIAL_WEIGHT_DECAY = 1e-4
TUTORIAL_GRADIENT_CLIP = 5.0


# --------------------------------------------------------------------------------------------------- parent side
def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16, help="initial channels of the DARTS space (tutorial: 16)")
    parser.add_argument("--cells", type=int, default=8, help="number of cells (tutorial: 8)")
    parser.add_argument("--batch", type=int, default=64, help="images per half-batch (tutorial: 64)")
    parser.add_argument("--image-size", type=int, default=32, help="square input size (CIFAR: 32)")
    add_timing_arguments(parser)
    parser.add_argument("--presets", default=None,
                        help=f"comma-separated names, each optionally with ':key=value' overrides (Python literals), "
                             f"e.g. 'pc-darts:order=2'; default: {STOCK} and every registered preset")
    parser.add_argument("--compile", action="store_true",
                        help="compile each supernet cell of our presets with torch.compile (nni-stock stays eager)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per preset process")
    parser.add_argument("--json", dest="json_path", default=None, help="write results as JSON to this file")
    parser.add_argument("--strategy-kwargs", default=None,
                        help="JSON dict of keyword arguments for every preset except nni-stock, e.g. "
                             "'{\"channels_last\": false}'")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--launch-time", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_timing_arguments(parser, args, sizes=("width", "cells", "batch", "image_size"))
    if args.strategy_kwargs is not None:
        try:
            if not isinstance(json.loads(args.strategy_kwargs), dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            parser.error(f"--strategy-kwargs must be a JSON object: {exc}")
    if args.presets is not None:
        try:
            args.preset_specs = [parse_preset(p) for p in args.presets.split(",") if p.strip()]
        except ValueError as exc:
            parser.error(f"--presets: {exc}")
        if not args.preset_specs:
            parser.error("--presets is empty")
    return args


def parse_preset(spec: str) -> tuple:
    """``'pc-darts:order=2:partial_channels=8'`` -> ``('pc-darts', {'order': 2, 'partial_channels': 8})``.

    Values are Python literals (``ast.literal_eval``); a value that is not one is kept as a string.

    Raises:
        ValueError: empty name, an item without ``=``, an empty or non-identifier key, or a key given twice.

    Example::

        >>> parse_preset("first-order:order=2")
        ('first-order', {'order': 2})
    """
    name, *items = [part.strip() for part in spec.strip().split(":")]
    if not name:
        raise ValueError(f"preset name missing in {spec.strip()!r}")
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"override {item!r} of {name!r} is not key=value")
        if key in overrides:
            raise ValueError(f"override {key!r} of {name!r} given twice")
        try:
            overrides[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            overrides[key] = text.strip()
    return name, overrides


def _default_presets() -> list[str]:
    from nni_darts_ext import list_strategies

    return [STOCK] + list(list_strategies())


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "width": args.width, "cells": args.cells, "batch": args.batch, "image_size": args.image_size,
        "steps": args.steps, "warmup": args.warmup, "max_warmup": args.max_warmup, "tolerance": args.tolerance,
        "device": args.device, "threads": args.threads,
        "seed": args.seed, "images_per_step": 2 * args.batch, "cpu_count": os.cpu_count(),
        "strategy_kwargs": json.loads(args.strategy_kwargs) if args.strategy_kwargs else {},
        "precision": args.precision, "compile": args.compile, "matmul_size": args.matmul_size,
        "load_average_at_start": load_average(), "python": sys.version.split()[0],
    }


def _child_command(args: argparse.Namespace, name: str, result_file: str) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--single", name, "--result-file", result_file,
           "--width", str(args.width), "--cells", str(args.cells), "--batch", str(args.batch),
           "--image-size", str(args.image_size), *timing_argv(args)]
    if args.compile:
        cmd.append("--compile")
    if args.strategy_kwargs:
        cmd += ["--strategy-kwargs", args.strategy_kwargs]
    return cmd


def _run_child(args: argparse.Namespace, name: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="search_step_") as tmp:
        result_file = os.path.join(tmp, "result.json")
        cmd = _child_command(args, name, result_file)
        launch = time.time()
        cmd += ["--launch-time", repr(launch)]
        env = dict(os.environ)  # the child must import nni_darts_ext even when it is not installed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=tmp, env=env)
        except subprocess.TimeoutExpired:
            return {**dict.fromkeys(RESULT_KEYS), "name": name, "error": f"timed out after {args.timeout:.0f} s"}
        if proc.returncode != 0 or not os.path.exists(result_file):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:]
            return {**dict.fromkeys(RESULT_KEYS), "name": name,
                    "error": f"exit code {proc.returncode}: " + " | ".join(tail)}
        with open(result_file, encoding="utf-8") as f:
            return json.load(f)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of the results, with ratios against ``nni-stock`` when it is present.

    Example::

        print(format_table([{"name": "nni-stock", "step_seconds": 1.0, ...}]))
    """
    base = next((r for r in results if r["name"] == STOCK and r.get("step_seconds")), None)
    rows = ["| preset | step (s) | images/s | vs stock | peak memory (MB) | vs stock | startup (s) | CPU s/step "
            "| GFLOP/step | matmul fraction |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("error"):
            rows.append(f"| {r['name']} | failed: {r['error'][:80]} | | | | | | | | |")
            continue
        flops = r.get("flops")
        fraction = r.get("matmul_fraction")
        rows.append(
            f"| {r['name']} | {r['step_seconds']:.3f} | {r['images_per_second']:.1f} | "
            f"{_ratio(r['images_per_second'], base and base['images_per_second'])} | "
            f"{r['peak_memory_mb']:.0f} | {_ratio(r['peak_memory_mb'], base and base['peak_memory_mb'])} | "
            f"{r['startup_seconds']:.1f} | {r.get('step_cpu_seconds', float('nan')):.3f} | "
            f"{'-' if flops is None else f'{flops / 1e9:.2f}'} | "
            f"{'-' if fraction is None else f'{fraction:.1%}'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.single is not None:
        return _single(args)
    if args.presets:
        presets = [p.strip() for p in args.presets.split(",") if p.strip()]
        known = set(_default_presets())
        unknown = [name for name, _ in args.preset_specs if name not in known]
        if unknown:
            print(f"search_step.py: error: unknown preset(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                  file=sys.stderr)
            return 2
    else:
        presets = _default_presets()
    config = _config(args)
    results = []
    for name in presets:
        result = _run_child(args, name)
        results.append(result)
        status = result.get("error") or f"{result['step_seconds']:.3f} s/step"
        print(f"{name}: {status}", file=sys.stderr, flush=True)
    config["load_average_at_end"] = load_average()
    report = {"config": config, "results": results}
    print(format_table(results))
    print(f"\n{args.device}, threads={results[0].get('threads', args.threads) if results else args.threads}, "
          f"width {args.width}, {args.cells} cells, batch {args.batch}x2, {args.image_size}px, "
          f"median of {args.steps} steady steps (warm-up until two steps agree within {args.tolerance:.0%}, "
          f"{args.warmup} to {args.max_warmup} steps); precision {args.precision}"
          f"{', compiled cells' if args.compile else ''} (our presets); load average "
          f"{config['load_average_at_start']} -> {config['load_average_at_end']}")
    if args.json_path:
        write_json(args.json_path, report)
    return 0 if all(not r.get("error") for r in results) else 1


# ---------------------------------------------------------------------------------------------------- child side
def _process_start_time() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except ImportError:  # pragma: no cover - psutil ships with NNI
        return time.time()


def _single(args: argparse.Namespace) -> int:
    launch = args.launch_time if args.launch_time is not None else _process_start_time()
    cuda = prepare_child(args.threads, args.device)
    import torch

    from nni_darts_ext._compat import cpu_has_native_bf16, import_nni_quietly

    with import_nni_quietly():
        import pytorch_lightning as pl
        from nni.nas.evaluator.pytorch import ClassificationModule
        from nni.nas.hub.pytorch import DARTS as DartsSpace
        from nni.nas.strategy import DARTS

    ours = args.single != STOCK
    if not ours:
        strategy = DARTS(gradient_clip_val=TUTORIAL_GRADIENT_CLIP)
    else:
        from nni_darts_ext import darts_strategy

        name, overrides = parse_preset(args.single)
        strategy = darts_strategy(name, **{**json.loads(args.strategy_kwargs or "{}"), **overrides})
    precision = args.precision if ours else FP32
    compiled = bool(args.compile and ours)

    torch.manual_seed(args.seed)
    space = DartsSpace(width=args.width, num_cells=args.cells, dataset="cifar")
    supernet = strategy.mutate_model(space)
    compiled_cells = 0
    if compiled:
        from nni_darts_ext.compile import compile_cells

        compiled_cells = compile_cells(supernet, device=args.device)
    module = ClassificationModule(learning_rate=TUTORIAL_LEARNING_RATE, weight_decay=TUTORIAL_WEIGHT_DECAY,
                                  num_classes=NUM_CLASSES, export_onnx=False)
    module.set_model(supernet)
    oneshot = strategy.configure_oneshot_module(module)

    # Enough batches for the longest warm-up, the steady steps and one eager step under the FLOP counter; the timer
    # stops the fit once it has them.
    total = max_batches(args)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (total * args.batch, IMAGE_CHANNELS, args.image_size, args.image_size)
    data = {half: torch.utils.data.TensorDataset(torch.randn(shape, generator=gen),
                                                 torch.randint(0, NUM_CLASSES, (shape[0],), generator=gen))
            for half in ("train", "val")}
    loaders = {half: torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=False) for half, ds in data.items()}
    train_loader = strategy.train_dataloader(lambda: loaders["train"], lambda: loaders["val"])

    timer = step_timer(cuda, args)
    trainer = pl.Trainer(precision=precision,
        accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(oneshot, train_dataloaders=train_loader)
    result = {
        "name": args.single,
        **timing_result(timer, images_per_step=2 * args.batch, matmul_size=args.matmul_size, precision=precision,
                        device=args.device),
        "startup_seconds": timer.first_start_wall - launch,
        "precision": precision,
        "compiled": compiled,
        "compiled_cells": compiled_cells,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        # False: no native bf16 on this CPU (oneDNN emulates it, far slower than fp32).
        "cpu_native_bf16": cpu_has_native_bf16(),
        "strategy": type(strategy).__name__,
        "torch": torch.__version__,
    }
    text = json.dumps(result)
    if args.result_file:
        with open(args.result_file, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
