"""What the step benchmarks share (``search_step.py``, ``retrain_step.py``): the timing arguments, the process set-up,
the steady-state rule, the step timer (a Lightning callback), the reference matmul rate and the JSON output.

**Steady state.** The first steps of a process are slower (allocator, oneDNN/cuDNN kernel choice, lazy imports), and
by different amounts from run to run. A run therefore warms up until two consecutive steps differ by less than
``--tolerance`` (5%) of the earlier one, after at least ``--warmup`` steps and at most ``--max-warmup`` (8); then it
times ``--steps`` (at least 3) steady steps and reports their median. Every step's time is kept in the JSON
(``step_times_s``, warm-up included), with ``warmup_steps`` (how many of them were warm-up) and ``steady``
(``False`` when the cap ended the warm-up before two steps agreed).

Example::

    parser = argparse.ArgumentParser()
    add_timing_arguments(parser)
    args = parser.parse_args()
    check_timing_arguments(parser, args)
    timer = step_timer(cuda=False, args=args)       # Lightning callback; stops the fit when it is done
    ...
    result = timing_result(timer, images_per_step=64)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

# Lightning 2.x Trainer(precision=...) values (lightning/fabric/connector.py _PRECISION_INPUT).
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "transformer-engine", "transformer-engine-float16")
FP32 = "32-true"
# Square matmul size for the reference FLOP rate (4096x4096 fp32 / bf16 products).
MATMUL_SIZE = 4096
MATMUL_REPEATS = 3
NUM_CLASSES = 10  # NNI's DARTS space with dataset='cifar'
IMAGE_CHANNELS = 3
MB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]
# Steady state: consecutive steps within 5% of each other, after at least 1 and at most 8 warm-up steps; then at
# least 3 steady steps (their median is reported).
STEADY_TOLERANCE = 0.05
MIN_WARMUP_STEPS = 1
MAX_WARMUP_STEPS = 8
MIN_STEADY_STEPS = 3


# ---------------------------------------------------------------------------------------------------- arguments
def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every step benchmark takes: steps, warm-up rule, device, threads, precision, matmul, seed."""
    parser.add_argument("--steps", type=int, default=MIN_STEADY_STEPS,
                        help=f"steady steps timed after the warm-up (at least {MIN_STEADY_STEPS}); the median is "
                             "reported")
    parser.add_argument("--warmup", type=int, default=MIN_WARMUP_STEPS, help="warm-up steps at least")
    parser.add_argument("--max-warmup", type=int, default=MAX_WARMUP_STEPS,
                        help="warm-up steps at most, when no two consecutive steps agree within --tolerance")
    parser.add_argument("--tolerance", type=float, default=STEADY_TOLERANCE,
                        help="warm-up ends when two consecutive steps differ by less than this fraction")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--precision", default=FP32, choices=PRECISIONS, help="Lightning Trainer precision")
    parser.add_argument("--matmul-size", type=int, default=MATMUL_SIZE,
                        help="size of the square matmul giving the reference FLOP rate")
    parser.add_argument("--seed", type=int, default=0)


def check_timing_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace,
                           sizes: tuple[str, ...] = ()) -> None:
    """``parser.error`` (exit 2) for timing arguments out of range, and for ``sizes`` (attribute names) below 1."""
    for name in (*sizes, "matmul_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps < MIN_STEADY_STEPS:
        parser.error(f"--steps must be >= {MIN_STEADY_STEPS} (the median of at least {MIN_STEADY_STEPS} steady steps)")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.max_warmup < args.warmup:
        parser.error(f"--max-warmup must be >= --warmup ({args.warmup})")
    if not 0 < args.tolerance < 1:
        parser.error("--tolerance must be in (0, 1)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")


def timing_argv(args: argparse.Namespace) -> list[str]:
    """The timing arguments as a command line, for a child process of the same benchmark."""
    argv = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--max-warmup", str(args.max_warmup),
            "--tolerance", repr(args.tolerance), "--device", args.device, "--precision", args.precision,
            "--matmul-size", str(args.matmul_size), "--seed", str(args.seed)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    return argv


def max_batches(args: argparse.Namespace) -> int:
    """Batches a run may need: the warm-up cap, the steady steps and one untimed step under the FLOP counter."""
    return max(args.max_warmup, 2) + args.steps + 1


# ---------------------------------------------------------------------------------------------------- steady state
def warmup_length(durations: list[float], *, minimum: int, maximum: int, tolerance: float) -> tuple[int, bool] | None:
    """``(warm-up steps, steady)`` once ``durations`` (seconds of the steps so far) decide it, else ``None``.

    The warm-up ends with the first step ``k >= max(minimum, 2)`` whose time differs from the step before by less
    than ``tolerance`` times that step's (``steady``: ``True``), or at ``maximum`` steps (``steady``: ``False``).

    Example::

        >>> warmup_length([3.0, 2.1, 2.0], minimum=1, maximum=8, tolerance=0.05)
        (3, True)
        >>> warmup_length([3.0, 2.1], minimum=1, maximum=8, tolerance=0.05) is None
        True
        >>> warmup_length([3.0, 2.0, 1.0], minimum=1, maximum=3, tolerance=0.05)
        (3, False)
    """
    for k in range(max(minimum, 2), min(len(durations), maximum) + 1):
        before, now = durations[k - 2], durations[k - 1]
        if abs(now - before) < tolerance * before:
            return k, True
    if len(durations) >= maximum:
        return maximum, False
    return None


# ---------------------------------------------------------------------------------------------------- process
def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux: ``ru_maxrss`` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the system has none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


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


def write_json(path: str | os.PathLike[str], report: Any) -> None:
    """``report`` as indented JSON at ``path`` (folders made; written to a temporary file, then renamed)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------------- FLOPs
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


class GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP is counted under ``"Global"`` only."""

    parents = frozenset({"Global"})

    def __enter__(self) -> GlobalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------------- the timer
def _timer_class() -> type:
    import pytorch_lightning as pl
    import torch

    class StepTimer(pl.Callback):
        """Times every batch (first batch start to each batch end; synchronised on CUDA) until the warm-up rule and
        the steady steps are done, runs one more batch eagerly under ``FlopCounterMode`` (peak memory read just
        before it), then stops the fit."""

        def __init__(self, cuda: bool, args: argparse.Namespace):
            self.cuda = cuda
            self.steps = args.steps
            self.rule = {"minimum": args.warmup, "maximum": args.max_warmup, "tolerance": args.tolerance}
            self.warmup: tuple[int, bool] | None = None
            self.flops = 0
            self.peak_memory_mb = 0.0
            self._counter: Any = None
            self._stance: Any = None
            self.first_start = 0.0
            self.first_start_wall = 0.0
            self.first_start_cpu = 0.0
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []

        def _now(self) -> float:
            if self.cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def durations(self, ends: list[float] | None = None, first: float | None = None) -> list[float]:
            bounds = [self.first_start if first is None else first] + (self.ends if ends is None else ends)
            return [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]

        def flop_step(self) -> int | None:
            """Index of the untimed FLOP batch, once the warm-up is decided."""
            return None if self.warmup is None else self.warmup[0] + self.steps

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if not self.ends and not self.first_start:
                self.first_start = self._now()
                self.first_start_wall = time.time()
                self.first_start_cpu = time.process_time()
            if batch_idx == self.flop_step():
                from torch.utils.flop_counter import FlopCounterMode

                self.peak_memory_mb = torch.cuda.max_memory_allocated() / MB if self.cuda else peak_rss_mb()
                self._stance = torch.compiler.set_stance("force_eager")
                self._stance.__enter__()
                self._counter = FlopCounterMode(display=False)
                # Totals only: FlopCounterMode's ModuleTracker hooks every module's outputs and kept the graphs of
                # SDARTS-ADV's attack passes alive (2.4x the step's peak memory; out of memory at width 16).
                self._counter.mod_tracker = GlobalOnly()
                self._counter.__enter__()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self._counter is not None:
                self._counter.__exit__(None, None, None)
                self._stance.__exit__(None, None, None)
                self.flops = int(self._counter.get_total_flops())
                self._counter = self._stance = None
                trainer.should_stop = True  # warm-up, steady steps and the FLOP step are done
                return
            self.ends.append(self._now())
            self.cpu_ends.append(time.process_time())
            if self.warmup is None:
                self.warmup = warmup_length(self.durations(), **self.rule)

    return StepTimer


def step_timer(cuda: bool, args: argparse.Namespace) -> Any:
    """The step timer callback of a run with ``args``' timing arguments (built lazily: a parent process that only
    launches children never imports Lightning)."""
    return _timer_class()(cuda, args)


def timing_result(timer: Any, *, images_per_step: int, matmul_size: int, precision: str, device: str) -> dict[str, Any]:
    """The timing keys of a result: the steady median, every step's time, the warm-up, FLOPs and memory.

    Raises:
        RuntimeError: the fit ended before the warm-up, the steady steps and the FLOP step ran (too few batches).
    """
    durations = timer.durations()
    if timer.warmup is None or len(durations) < timer.warmup[0] + timer.steps or not timer.flops:
        raise RuntimeError(f"the fit ended after {len(durations)} timed steps, before the warm-up rule, "
                           f"{timer.steps} steady steps and the FLOP step were done")
    warmup, steady = timer.warmup
    timed = durations[warmup:warmup + timer.steps]
    step = statistics.median(timed)
    cpu = timer.durations(timer.cpu_ends, timer.first_start_cpu)[warmup:warmup + timer.steps]
    matmul_rate = matmul_flops_per_second(matmul_size, precision_dtype(precision), device)
    return {
        "step_seconds": step,
        "images_per_second": images_per_step / step,
        "step_times_s": durations,
        "warmup_steps": warmup,
        "steady": steady,
        "steady_steps": len(timed),
        # CPU time of the process per step (all threads): steadier than wall time on a shared machine.
        "step_cpu_seconds": statistics.median(cpu),
        "peak_memory_mb": timer.peak_memory_mb,
        "flops": timer.flops,
        "flops_per_second": timer.flops / step,
        "matmul_flops_per_second": matmul_rate,
        "matmul_fraction": timer.flops / step / matmul_rate,
        "peak_rss_mb": peak_rss_mb(),
        "load_average_at_end": load_average(),
    }
