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

Reported per preset: median steady-state step time (after ``--warmup`` steps), images per second (both halves
of the step: ``2 * batch`` images), peak memory (CPU: peak RSS of the process; CUDA: ``max_memory_allocated``),
start-up time (process launch to the start of the first step: interpreter, imports, supernet, trainer), the
FLOPs of one step (``flops``: ``torch.utils.flop_counter.FlopCounterMode`` over one extra, untimed, eager step)
and ``matmul_fraction``: the step's achieved FLOP/s over the same process's large square matmul rate in the
step's precision (``matmul_flops_per_second``, best of a few ``--matmul-size`` products).

Example::

    python benchmarks/search_step.py --width 16 --cells 8 --batch 64 --steps 3 --warmup 1 --json runs/bench.json
    python benchmarks/search_step.py --device cuda --batch 256 --steps 20 --warmup 5
    python benchmarks/search_step.py --presets nni-stock,first-order,pc-darts --precision bf16-mixed --compile
    python benchmarks/search_step.py --presets nni-stock,first-order,pc-darts --checkpointing cells
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STOCK = "nni-stock"
# Step time counts the whole Lightning loop between consecutive batch ends (data fetch, hooks, logging included).
RESULT_KEYS = ("name", "step_seconds", "images_per_second", "peak_memory_mb", "startup_seconds", "flops",
               "matmul_fraction")
# Lightning 2.x Trainer(precision=...) values (lightning/fabric/connector.py _PRECISION_INPUT).
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "transformer-engine", "transformer-engine-float16")
FP32 = "32-true"
# Square matmul size for the reference FLOP rate (the 4096x4096 fp32 / bf16 products).
MATMUL_SIZE = 4096
MATMUL_REPEATS = 3
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
def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16, help="initial channels of the DARTS space (tutorial: 16)")
    parser.add_argument("--cells", type=int, default=8, help="number of cells (tutorial: 8)")
    parser.add_argument("--batch", type=int, default=64, help="images per half-batch (tutorial: 64)")
    parser.add_argument("--image-size", type=int, default=32, help="square input size (CIFAR: 32)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--presets", default=None,
                        help=f"comma-separated names, each optionally with ':key=value' overrides (Python literals), "
                             f"e.g. 'pc-darts:order=2'; default: {STOCK} and every registered preset")
    parser.add_argument("--precision", default=FP32, choices=PRECISIONS,
                        help="Lightning Trainer precision of our presets (nni-stock stays fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="compile each supernet cell of our presets with torch.compile (nni-stock stays eager)")
    parser.add_argument("--matmul-size", type=int, default=MATMUL_SIZE,
                        help="size of the square matmul giving the reference FLOP rate")
    parser.add_argument("--checkpointing", default="none", choices=("none", "cells", "edges"),
                        help="activation checkpointing of our presets' supernet (nni-stock never checkpoints)")
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
    for name in ("width", "cells", "batch", "image_size", "steps", "matmul_size"):
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
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "width": args.width, "cells": args.cells, "batch": args.batch, "image_size": args.image_size,
        "steps": args.steps, "warmup": args.warmup, "device": args.device, "threads": args.threads,
        "seed": args.seed, "images_per_step": 2 * args.batch, "cpu_count": os.cpu_count(),
        "strategy_kwargs": json.loads(args.strategy_kwargs) if args.strategy_kwargs else {},
        "precision": args.precision, "compile": args.compile, "matmul_size": args.matmul_size,
        "checkpointing": args.checkpointing,
        "load_average_at_start": list(load) if load else None, "python": sys.version.split()[0],
    }


def _child_command(args: argparse.Namespace, name: str, result_file: str) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--single", name, "--result-file", result_file,
           "--width", str(args.width), "--cells", str(args.cells), "--batch", str(args.batch),
           "--image-size", str(args.image_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device, "--seed", str(args.seed), "--precision", args.precision,
           "--matmul-size", str(args.matmul_size), "--checkpointing", args.checkpointing]
    if args.compile:
        cmd.append("--compile")
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
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
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    config["load_average_at_end"] = list(load) if load else None
    report = {"config": config, "results": results}
    print(format_table(results))
    print(f"\n{args.device}, threads={results[0].get('threads', args.threads) if results else args.threads}, "
          f"width {args.width}, {args.cells} cells, batch {args.batch}x2, {args.image_size}px, "
          f"median of {args.steps} steps after {args.warmup} warm-up; precision {args.precision}"
          f"{', compiled cells' if args.compile else ''} (our presets); load average "
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


def prepare_child(threads: int | None, device: str) -> bool:
    """Set up a benchmark process: quiet warnings and logs, torch's thread count, the CUDA check; True on CUDA.

    Example::

        cuda = prepare_child(args.threads, args.device)
    """
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "nni"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    if device != "cuda":
        return False
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    # Same for every configuration (the DARTS and PC-DARTS reference scripts both set it).
    torch.backends.cudnn.benchmark = True
    return True


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
        strategy = darts_strategy(name, **{"checkpointing": args.checkpointing,
                                           **json.loads(args.strategy_kwargs or "{}"), **overrides})
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

    # One more step than timed: the last one runs eagerly under the FLOP counter (after peak memory is read).
    total = args.warmup + args.steps + 1
    gen = torch.Generator().manual_seed(args.seed)
    shape = (total * args.batch, IMAGE_CHANNELS, args.image_size, args.image_size)
    data = {half: torch.utils.data.TensorDataset(torch.randn(shape, generator=gen),
                                                 torch.randint(0, NUM_CLASSES, (shape[0],), generator=gen))
            for half in ("train", "val")}
    loaders = {half: torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=False) for half, ds in data.items()}
    train_loader = strategy.train_dataloader(lambda: loaders["train"], lambda: loaders["val"])

    timer = _StepTimer(cuda, flop_step=total - 1)
    trainer = pl.Trainer(precision=precision,
        # One epoch over exactly `total` batches (max_steps counts optimizer steps: two per batch here).
        accelerator="gpu" if cuda else "cpu", devices=1, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(oneshot, train_dataloaders=train_loader)
    if len(timer.ends) != total:
        raise RuntimeError(f"expected {total} steps, the trainer ran {len(timer.ends)}")

    timed = total - 1
    bounds = [timer.first_start] + timer.ends[:timed]
    durations = [bounds[i + 1] - bounds[i] for i in range(timed)]
    step = statistics.median(durations[args.warmup:])
    cpu_bounds = [timer.first_start_cpu] + timer.cpu_ends[:timed]
    cpu = [cpu_bounds[i + 1] - cpu_bounds[i] for i in range(timed)]
    peak = timer.peak_memory_mb
    matmul_rate = matmul_flops_per_second(args.matmul_size, precision_dtype(precision), args.device)
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
        "flops": timer.flops,
        "flops_per_second": timer.flops / step,
        "matmul_flops_per_second": matmul_rate,
        "matmul_fraction": timer.flops / step / matmul_rate,
        "precision": precision,
        "checkpointing": args.checkpointing if ours else "none",
        "compiled": compiled,
        "compiled_cells": compiled_cells,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        # False: no native bf16 on this CPU (oneDNN emulates it, far slower than fp32).
        "cpu_native_bf16": cpu_has_native_bf16(),
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


def precision_dtype(precision: str) -> Any:
    """The compute dtype of a Lightning precision value (``'bf16-mixed'`` -> ``torch.bfloat16``).

    Example::

        >>> str(precision_dtype("bf16-mixed"))
        'torch.bfloat16'
    """
    import torch

    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16") or precision.endswith("float16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return torch.float32


def matmul_flops_per_second(size: int, dtype: Any, device: str, repeats: int = MATMUL_REPEATS) -> float:
    """Best FLOP/s of ``repeats`` ``size x size`` matmuls in ``dtype`` on ``device`` (``2 * size**3`` FLOPs each).

    Example::

        rate = matmul_flops_per_second(1024, torch.float32, "cpu")
    """
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    cuda = device == "cuda"
    torch.matmul(a, b)  # warm-up (library initialisation, CUDA context)
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP is counted under ``"Global"`` only."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _make_timer_class() -> type:
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        """Wall-clock stamps of the first batch start and of every batch end (synchronised on CUDA).

        Batch ``flop_step`` (the last, untimed) runs eagerly (``torch.compiler.set_stance("force_eager")``) under
        ``FlopCounterMode``; peak memory is read just before it.
        """

        def __init__(self, cuda: bool, flop_step: int):
            self.cuda = cuda
            self.flop_step = flop_step
            self.flops = 0
            self.peak_memory_mb = 0.0
            self._counter: Any = None
            self._stance: Any = None
            self.first_start: float = 0.0
            self.first_start_wall: float = 0.0
            self.first_start_cpu: float = 0.0
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []

        def _now(self) -> float:
            if self.cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if not self.ends and not self.first_start:
                self.first_start = self._now()
                self.first_start_wall = time.time()
                self.first_start_cpu = time.process_time()
            if batch_idx == self.flop_step:
                from torch.utils.flop_counter import FlopCounterMode

                self.peak_memory_mb = torch.cuda.max_memory_allocated() / MB if self.cuda else _peak_rss_mb()
                self._stance = torch.compiler.set_stance("force_eager")
                self._stance.__enter__()
                self._counter = FlopCounterMode(display=False)
                # Totals only: FlopCounterMode's ModuleTracker hooks every module's outputs and kept the graphs of
                # SDARTS-ADV's attack passes alive (2.4x the step's peak memory; out of memory at width 16).
                self._counter.mod_tracker = _GlobalOnly()
                self._counter.__enter__()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.ends.append(self._now())
            self.cpu_ends.append(time.process_time())
            if self._counter is not None:
                self._counter.__exit__(None, None, None)
                self._stance.__exit__(None, None, None)
                self.flops = int(self._counter.get_total_flops())
                self._counter = self._stance = None

    return StepTimer


def _StepTimer(cuda: bool, flop_step: int) -> Any:  # noqa: N802 - built lazily: the parent never imports Lightning
    return _make_timer_class()(cuda, flop_step)


if __name__ == "__main__":
    sys.exit(main())
