"""Time one DARTS search step of NNI's stock strategy and of our presets, on the same supernet and batches.

Each preset runs in a fresh subprocess (this script re-invoked with ``--single NAME``), so peak memory does not
mix and start-up cost is measured from a cold interpreter. What runs is the real strategy code, wired the way
``OneShotStrategy.mutate_evaluator`` does it: ``strategy.mutate_model(space)``,
``strategy.configure_oneshot_module(module)``, ``strategy.train_dataloader(...)`` and a Lightning ``Trainer`` for one
epoch of ``warmup + steps`` batches; one step is the one-shot module's ``training_step`` (architecture step on the ``val`` half, weight
step on the ``train`` half, real optimizers).

``nni-stock`` is the NNI 3.0 DARTS tutorial's setup: ``DARTS(width, cells, 'cifar')`` space,
``nni.nas.strategy.DARTS(gradient_clip_val=5.)`` and NNI's ``ClassificationModule`` (Adam, lr 1e-3, weight decay
1e-4, the tutorial's ``Classification`` evaluator). Every preset gets the same training module, seed and random
CIFAR-shaped batches, so the ratios compare strategies only.

Reported per preset: median steady-state step time (after ``--warmup`` steps), images per second (both halves
of the step: ``2 * batch`` images), peak memory (CPU: peak RSS of the process; CUDA: ``max_memory_allocated``)
and start-up time (process launch to the start of the first step: interpreter, imports, supernet, trainer).

Example::

    python benchmarks/search_step.py --width 16 --cells 8 --batch 64 --steps 3 --warmup 1 --json runs/bench.json
    python benchmarks/search_step.py --device cuda --batch 256 --steps 20 --warmup 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

STOCK = "nni-stock"
# Step time counts the whole Lightning loop between consecutive batch ends (data fetch, hooks, logging included).
RESULT_KEYS = ("name", "step_seconds", "images_per_second", "peak_memory_mb", "startup_seconds")
# NNI 3.0 DARTS tutorial (examples/tutorials/darts.py): Classification(learning_rate=1e-3, weight_decay=1e-4),
# DartsStrategy(gradient_clip_val=5.), DartsSpace(16, 8, 'cifar'), batch 64.
TUTORIAL_LEARNING_RATE = 1e-3
TUTORIAL_WEIGHT_DECAY = 1e-4
TUTORIAL_GRADIENT_CLIP = 5.0
NUM_CLASSES = 10  # NNI's DARTS space with dataset='cifar'
IMAGE_CHANNELS = 3
MB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------- parent side
def _parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16, help="initial channels of the DARTS space (tutorial: 16)")
    parser.add_argument("--cells", type=int, default=8, help="number of cells (tutorial: 8)")
    parser.add_argument("--batch", type=int, default=64, help="images per half-batch (tutorial: 64)")
    parser.add_argument("--image-size", type=int, default=32, help="square input size (CIFAR: 32)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--presets", default=None,
                        help=f"comma-separated names; default: {STOCK} and every registered preset")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per preset process")
    parser.add_argument("--json", dest="json_path", default=None, help="write results as JSON to this file")
    parser.add_argument("--strategy-kwargs", default=None,
                        help="JSON dict of keyword arguments for every preset except nni-stock, e.g. "
                             "'{\"channels_last\": false}'")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--launch-time", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("width", "cells", "batch", "image_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.strategy_kwargs is not None:
        try:
            if not isinstance(json.loads(args.strategy_kwargs), dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            parser.error(f"--strategy-kwargs must be a JSON object: {exc}")
    return args


def _default_presets() -> List[str]:
    from nni_darts_ext.search import list_strategies

    return [STOCK] + list_strategies()


def _config(args: argparse.Namespace) -> Dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "width": args.width, "cells": args.cells, "batch": args.batch, "image_size": args.image_size,
        "steps": args.steps, "warmup": args.warmup, "device": args.device, "threads": args.threads,
        "seed": args.seed, "images_per_step": 2 * args.batch, "cpu_count": os.cpu_count(),
        "strategy_kwargs": json.loads(args.strategy_kwargs) if args.strategy_kwargs else {},
        "load_average_at_start": list(load) if load else None, "python": sys.version.split()[0],
    }


def _child_command(args: argparse.Namespace, name: str, result_file: str) -> List[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--single", name, "--result-file", result_file,
           "--width", str(args.width), "--cells", str(args.cells), "--batch", str(args.batch),
           "--image-size", str(args.image_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device, "--seed", str(args.seed)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.strategy_kwargs:
        cmd += ["--strategy-kwargs", args.strategy_kwargs]
    return cmd


def _run_child(args: argparse.Namespace, name: str) -> Dict[str, Any]:
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


def _ratio(value: Optional[float], base: Optional[float]) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def format_table(results: List[Dict[str, Any]]) -> str:
    """Markdown table of the results, with ratios against ``nni-stock`` when it is present.

    Example::

        print(format_table([{"name": "nni-stock", "step_seconds": 1.0, ...}]))
    """
    base = next((r for r in results if r["name"] == STOCK and r.get("step_seconds")), None)
    rows = ["| preset | step (s) | images/s | vs stock | peak memory (MB) | vs stock | startup (s) | CPU s/step |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("error"):
            rows.append(f"| {r['name']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        rows.append(
            f"| {r['name']} | {r['step_seconds']:.3f} | {r['images_per_second']:.1f} | "
            f"{_ratio(r['images_per_second'], base and base['images_per_second'])} | "
            f"{r['peak_memory_mb']:.0f} | {_ratio(r['peak_memory_mb'], base and base['peak_memory_mb'])} | "
            f"{r['startup_seconds']:.1f} | {r.get('step_cpu_seconds', float('nan')):.3f} |"
        )
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    if args.single is not None:
        return _single(args)
    if args.presets:
        presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    else:
        presets = _default_presets()
    config = _config(args)
    results = []
    for name in presets:
        result = _run_child(args, name)
        results.append(result)
        status = result.get("error") or f"{result['step_seconds']:.3f} s/step"
        print(f"{name}: {status}", file=sys.stderr, flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    config["load_average_at_end"] = list(load) if load else None
    report = {"config": config, "results": results}
    print(format_table(results))
    print(f"\n{args.device}, threads={results[0].get('threads', args.threads) if results else args.threads}, "
          f"width {args.width}, {args.cells} cells, batch {args.batch}x2, {args.image_size}px, "
          f"median of {args.steps} steps after {args.warmup} warm-up; load average "
          f"{config['load_average_at_start']} -> {config['load_average_at_end']}")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json_path).with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.json_path)
    return 0 if all(not r.get("error") for r in results) else 1


# ---------------------------------------------------------------------------------------------------- child side
def _process_start_time() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except ImportError:  # pragma: no cover - psutil ships with NNI
        return time.time()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _single(args: argparse.Namespace) -> int:
    launch = args.launch_time if args.launch_time is not None else _process_start_time()
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "nni"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from nni_darts_ext._compat import import_nni_quietly

    with import_nni_quietly():
        import pytorch_lightning as pl
        from nni.nas.evaluator.pytorch import ClassificationModule
        from nni.nas.hub.pytorch import DARTS as DartsSpace
        from nni.nas.strategy import DARTS

    cuda = args.device == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch.cuda.is_available() is False")
        # Same for every preset (the DARTS and PC-DARTS reference scripts both set it).
        torch.backends.cudnn.benchmark = True

    if args.single == STOCK:
        strategy = DARTS(gradient_clip_val=TUTORIAL_GRADIENT_CLIP)
    else:
        from nni_darts_ext.search import darts_strategy

        strategy = darts_strategy(args.single, **json.loads(args.strategy_kwargs or "{}"))

    torch.manual_seed(args.seed)
    space = DartsSpace(width=args.width, num_cells=args.cells, dataset="cifar")
    supernet = strategy.mutate_model(space)
    module = ClassificationModule(learning_rate=TUTORIAL_LEARNING_RATE, weight_decay=TUTORIAL_WEIGHT_DECAY,
                                  num_classes=NUM_CLASSES, export_onnx=False)
    module.set_model(supernet)
    oneshot = strategy.configure_oneshot_module(module)

    total = args.warmup + args.steps
    gen = torch.Generator().manual_seed(args.seed)
    shape = (total * args.batch, IMAGE_CHANNELS, args.image_size, args.image_size)
    data = {half: torch.utils.data.TensorDataset(torch.randn(shape, generator=gen),
                                                 torch.randint(0, NUM_CLASSES, (shape[0],), generator=gen))
            for half in ("train", "val")}
    loaders = {half: torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=False) for half, ds in data.items()}
    train_loader = strategy.train_dataloader(lambda: loaders["train"], lambda: loaders["val"])

    timer = _StepTimer(cuda)
    trainer = pl.Trainer(
        # One epoch over exactly `total` batches (max_steps counts optimizer steps: two per batch here).
        accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(oneshot, train_dataloaders=train_loader)
    if len(timer.ends) != total:
        raise RuntimeError(f"expected {total} steps, the trainer ran {len(timer.ends)}")

    bounds = [timer.first_start] + timer.ends
    durations = [bounds[i + 1] - bounds[i] for i in range(total)]
    step = statistics.median(durations[args.warmup:])
    cpu_bounds = [timer.first_start_cpu] + timer.cpu_ends
    cpu = [cpu_bounds[i + 1] - cpu_bounds[i] for i in range(total)]
    peak = torch.cuda.max_memory_allocated() / MB if cuda else _peak_rss_mb()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "name": args.single,
        "step_seconds": step,
        "images_per_second": 2 * args.batch / step,
        "peak_memory_mb": peak,
        "startup_seconds": timer.first_start_wall - launch,
        "step_seconds_all": durations,
        # CPU time of the process per step (all threads): steadier than wall time on a shared machine.
        "step_cpu_seconds": statistics.median(cpu[args.warmup:]),
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "strategy": type(strategy).__name__,
        "load_average_at_end": list(load) if load else None,
        "torch": torch.__version__,
    }
    text = json.dumps(result)
    if args.result_file:
        with open(args.result_file, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text)
    return 0


def _make_timer_class() -> type:
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        """Wall-clock stamps of the first batch start and of every batch end (synchronised on CUDA)."""

        def __init__(self, cuda: bool):
            self.cuda = cuda
            self.first_start: float = 0.0
            self.first_start_wall: float = 0.0
            self.first_start_cpu: float = 0.0
            self.ends: List[float] = []
            self.cpu_ends: List[float] = []

        def _now(self) -> float:
            if self.cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if not self.ends and not self.first_start:
                self.first_start = self._now()
                self.first_start_wall = time.time()
                self.first_start_cpu = time.process_time()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.ends.append(self._now())
            self.cpu_ends.append(time.process_time())

    return StepTimer


def _StepTimer(cuda: bool) -> Any:  # noqa: N802 - built lazily so the parent never imports Lightning
    return _make_timer_class()(cuda)


if __name__ == "__main__":
    sys.exit(main())
