"""Health of a DARTS search: per-epoch records, the Hessian's dominant eigenvalue, DARTS-ES, warnings, a plot.

A search can look fine by its loss while its architecture degenerates: skip connections take over the normal cell,
or the exported architecture stops changing. RobustDARTS (Zela et al., ICLR 2020, https://github.com/automl/RobustDARTS)
showed that the dominant eigenvalue of the validation loss's Hessian w.r.t. the architecture parameters rises
before such a collapse and stopped the search early on it (DARTS-ES). This module holds the pure parts:

- :func:`dominant_hessian_eigenvalue` / :func:`hessian_power_iteration`: power iteration on Hessian-vector products
  (double backward); one forward pass, one backward with ``create_graph=True``, then one extra backward per
  iteration (at most :data:`~nni_darts_ext.constants.HESSIAN_POWER_ITERATIONS`).
- :func:`chunked_hessian_power_iteration`: the same on a batch split in chunks, one chunk's graph in memory at a
  time (``search.hessian_batch_size``).
- :func:`health_record`: one epoch's record (genotype text, changed edges, skip counts, entropy of the mixing weights).
- :class:`DartsEarlyStopping`: the DARTS-ES rule, fed one eigenvalue per evaluation.
- :func:`health_warnings`, :func:`plot_health`, :func:`read_health_records`, :func:`write_health_records`.

The Lightning side is :class:`nni_darts_ext.callbacks.search_health.SearchHealthMonitor`.

Example::

    record = health_record(3, arch, previous_arch, module.export_probs(), hessian_eigenvalue=0.42)
    rule = DartsEarlyStopping()
    if rule.update(epoch, eigenvalue):
        logging.getLogger(__name__).warning("collapse ahead: go back to epoch %d", rule.go_back_epoch)
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nni_darts_ext.arch import ArchError, format_genotype, normalize_arch, to_genotype
from nni_darts_ext.constants import (
    ARCH_STALL_EPOCHS,
    DARTS_ES_DELTA,
    DARTS_ES_FACTOR,
    DARTS_ES_START_EPOCH,
    DARTS_ES_WINDOW,
    HESSIAN_POWER_ITERATIONS,
    HESSIAN_POWER_TOL,
    MAX_NORMAL_SKIP_CONNECTS,
)
from nni_darts_ext.io import atomic_open, atomic_write_json

from .checks import check_int

if TYPE_CHECKING:  # torch is imported where it is used: reading records (nni-darts inspect) does not need it
    import torch

__all__ = [
    "HEALTH_FILE",
    "HEALTH_PLOT",
    "RECORD_KEYS",
    "DartsEarlyStopping",
    "EigenEstimate",
    "append_health_record",
    "chunked_hessian_power_iteration",
    "dominant_hessian_eigenvalue",
    "health_record",
    "health_warnings",
    "hessian_power_iteration",
    "plot_health",
    "read_health_records",
    "write_health_records",
]

_logger = logging.getLogger(__name__)

#: File names inside a search's output folder.
HEALTH_FILE = "search_health.json"
HEALTH_PLOT = "health.png"
#: The keys every record has (a record may hold more: ``arch``, ``metrics``, ``hessian_iterations``, ...).
RECORD_KEYS = (
    "epoch",
    "genotype",
    "changed_edges",
    "skip_connects_normal",
    "skip_connects_reduce",
    "mean_entropy",
    "max_weight",
    "hessian_eigenvalue",
    "expected_cost",
)
_SKIP_OP = "skip_connect"
_HEALTH_FIGSIZE = (7.0, 7.5)
_HEALTH_DPI = 100


# ----------------------------------------------------------------------------------------------------------------
# Dominant Hessian eigenvalue
# ----------------------------------------------------------------------------------------------------------------


class EigenEstimate(NamedTuple):
    """Result of :func:`hessian_power_iteration`: the eigenvalue, the Hessian-vector products used, converged."""

    value: float
    iterations: int
    converged: bool


def _check_iterations(iterations: Any, tol: Any) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


def _dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys, strict=False))


def hessian_power_iteration(
    loss_fn: Callable[[], torch.Tensor],
    params: Iterable[torch.Tensor],
    *,
    iterations: int = HESSIAN_POWER_ITERATIONS,
    tol: float = HESSIAN_POWER_TOL,
    seed: int = 0,
) -> EigenEstimate:
    """Estimate the dominant eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params`` by power iteration.

    ``loss_fn`` is called once; its gradient is taken with ``create_graph=True`` and each iteration is one
    Hessian-vector product ``H v`` (a second backward through that graph). The estimate is the Rayleigh quotient
    ``v . H v`` of the unit vector ``v``; iteration stops once it changes by at most ``tol`` relative to its size,
    or after ``iterations`` products. The start vector comes from a private generator seeded with ``seed``: the
    global random state is left alone. ``.grad`` of the parameters is not touched.

    The result is the eigenvalue of largest magnitude, with its sign (the Hessian of a validation loss near a
    minimum is dominated by its largest positive eigenvalue, the one RobustDARTS tracks).

    Raises:
        TypeError: ``params`` empty or not tensors, or ``loss_fn()`` not a scalar tensor.
        ValueError: bad ``iterations`` or ``tol``.

    Example::

        estimate = hessian_power_iteration(lambda: criterion(net(x), y), net.arch_parameters())
        estimate.value, estimate.iterations
    """
    import torch

    _check_iterations(iterations, tol)
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError("params must be a non-empty iterable of tensors")
    with torch.enable_grad():
        loss = loss_fn()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
        if not loss.requires_grad:
            return EigenEstimate(0.0, 0, True)
        grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
        # Gradients that do not depend on the parameters (unused or linear) contribute zero rows to H.
        linked = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not linked:
            return EigenEstimate(0.0, 0, True)

        def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
            products = torch.autograd.grad(
                [g for _, g in linked], params, grad_outputs=[v[i] for i, _ in linked],
                retain_graph=True, allow_unused=True,
            )
            return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, products, strict=False)]

        return _power_iteration(hvp, params, iterations=iterations, tol=tol, seed=seed)


def _power_iteration(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]], params: list[torch.Tensor], *,
                     iterations: int, tol: float, seed: int) -> EigenEstimate:
    """Power iteration on ``hvp`` (``v -> H v``) from a seeded random unit vector (see
    :func:`hessian_power_iteration`)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype) for p in params]
    norm = torch.sqrt(_dot(v, v))
    v = [x / norm for x in v]
    previous: float | None = None
    value = 0.0
    for step in range(1, iterations + 1):
        hv = hvp(v)
        value = float(_dot(v, hv))
        norm = torch.sqrt(_dot(hv, hv))
        if float(norm) == 0.0:
            return EigenEstimate(0.0, step, True)
        v = [h / norm for h in hv]
        if previous is not None and abs(value - previous) <= tol * abs(value):
            return EigenEstimate(value, step, True)
        previous = value
    return EigenEstimate(value, iterations, False)


def chunked_hessian_power_iteration(
    loss_fns: Sequence[Callable[[], torch.Tensor]],
    weights: Sequence[float],
    params: Iterable[torch.Tensor],
    *,
    iterations: int = HESSIAN_POWER_ITERATIONS,
    tol: float = HESSIAN_POWER_TOL,
    seed: int = 0,
) -> EigenEstimate:
    """:func:`hessian_power_iteration` of ``sum_c weights[c] * loss_fns[c]()``, one chunk's graph at a time.

    Each Hessian-vector product runs every chunk again (forward, gradient with ``create_graph=True``, product) and
    frees its graph before the next: memory is one chunk's double-backward graph instead of the whole batch's, for
    ``iterations x chunks`` forward passes instead of one. For a mean loss over a batch split in chunks, ``weights``
    are the chunks' shares of the batch, and the products equal the whole batch's (up to float rounding) when the
    net treats samples independently (BatchNorm in eval mode; in training mode each chunk is normalised by its own
    statistics, as a smaller batch would be). Every chunk starts from the same torch random state, so sampled
    architectures (DrNAS, GDAS) are the same in every chunk and iteration.

    Example::

        chunks = [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(x), 16)]
        chunked_hessian_power_iteration([lambda c=c: loss(*c) for c in chunks], [len(c[0]) / len(x) for c in chunks],
                                        arch_params)
    """
    import torch

    _check_iterations(iterations, tol)
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError("params must be a non-empty iterable of tensors")
    if len(loss_fns) != len(weights) or not loss_fns:
        raise ValueError(f"need one weight per chunk, got {len(loss_fns)} chunks and {len(weights)} weights")
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        total = [torch.zeros_like(p) for p in params]
        for loss_fn, weight in zip(loss_fns, weights, strict=True):
            torch.set_rng_state(cpu_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
            with torch.enable_grad():
                loss = loss_fn()
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
                if not loss.requires_grad:
                    continue
                grads = torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)
                linked = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
                if not linked:
                    continue
                products = torch.autograd.grad([g for _, g in linked], params,
                                               grad_outputs=[v[i] for i, _ in linked], allow_unused=True)
            for t, h in zip(total, products, strict=True):
                if h is not None:
                    t.add_(h.detach(), alpha=weight)
        return total

    return _power_iteration(hvp, params, iterations=iterations, tol=tol, seed=seed)


def dominant_hessian_eigenvalue(
    loss_fn: Callable[[], torch.Tensor],
    params: Iterable[torch.Tensor],
    *,
    iterations: int = HESSIAN_POWER_ITERATIONS,
    tol: float = HESSIAN_POWER_TOL,
    seed: int = 0,
) -> float:
    """The dominant eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params`` (see :func:`hessian_power_iteration`).

    Example::

        >>> import torch
        >>> a = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> round(dominant_hessian_eigenvalue(lambda: (3 * a[0] ** 2 + a[1] ** 2), [a]), 3)
        6.0
    """
    return hessian_power_iteration(loss_fn, params, iterations=iterations, tol=tol, seed=seed).value


# ----------------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------------


def _darts_arch(arch: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        return normalize_arch(dict(arch))
    except (ArchError, TypeError):
        return None


def _genotype_text(arch: Mapping[str, Any], darts: dict[str, Any] | None) -> str:
    if darts is not None:
        return format_genotype(to_genotype(darts))
    return json.dumps(dict(arch), sort_keys=True, default=str)


def _edges(darts: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{'normal/2_0': (op, input), ...}`` of a normalized DARTS arch."""
    return {key.replace("/op_", "/"): (op, darts[key.replace("/op_", "/input_")][0])
            for key, op in darts.items() if "/op_" in key}


def _changed_edges(arch: Mapping[str, Any], darts: dict | None, previous: Mapping[str, Any] | None) -> int | None:
    if previous is None:
        return None
    previous_darts = _darts_arch(previous)
    if darts is not None and previous_darts is not None:
        now, before = _edges(darts), _edges(previous_darts)
        return sum(now[edge] != before[edge] for edge in now)
    keys = set(arch) | set(previous)
    return sum(arch.get(key) != previous.get(key) for key in keys)


def _skip_count(darts: dict[str, Any] | None, cell: str) -> int:
    if darts is None:
        return 0
    return sum(op == _SKIP_OP for key, op in darts.items() if key.startswith(f"{cell}/op_"))


def _probabilities(weights: Any) -> list[float]:
    if isinstance(weights, Mapping):
        weights = list(weights.values())
    if hasattr(weights, "detach"):  # a tensor
        return [float(w) for w in weights.detach().reshape(-1).cpu().tolist()]
    return [float(w) for w in weights]


def _entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def health_record(
    epoch: int,
    arch: Mapping[str, Any],
    previous_arch: Mapping[str, Any] | None,
    probs: Mapping[str, Any],
    *,
    hessian_eigenvalue: float | None = None,
    expected_cost: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The health record of one epoch (keys :data:`RECORD_KEYS`, plus ``arch``).

    Args:
        epoch: 0-based epoch index.
        arch: the exported arch dict of this epoch (a DARTS arch in either input form, or any NNI sample).
        previous_arch: the previous epoch's arch dict, or ``None`` (first epoch: ``changed_edges`` is ``None``).
        probs: the mixing weights per choice, ``{label: probabilities}`` as NNI's ``export_probs()`` gives them
            (``{op: p}`` dicts), or 1-D tensors / sequences.
        hessian_eigenvalue: this epoch's dominant eigenvalue, or ``None`` when not computed.
        expected_cost: the search cost's ``{"metric", "expected", "target"}`` (the supernet's expected cost of the
            retrain net at the epoch's end), or ``None`` for a search without ``search.cost``.

    For a DARTS arch, ``genotype`` is its Genotype text, ``changed_edges`` counts the edges (of 16) whose op or
    input differs from ``previous_arch`` and the skip counts count ``skip_connect`` ops per cell. For any other
    arch dict, ``genotype`` is its sorted JSON text, ``changed_edges`` counts differing keys and the skip counts
    are 0. ``mean_entropy`` is the mean over choices of the entropy (nats) of its weights; ``max_weight`` the
    largest weight of any choice (both ``None`` without choices).

    Raises:
        TypeError: ``arch`` or ``probs`` not a mapping. ValueError: negative ``epoch``.

    Example::

        >>> health_record(0, DARTS_V2, None, {"normal/op_2_0": [0.5, 0.5]})["mean_entropy"]  # doctest: +SKIP
        0.6931471805599453
    """
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    if not isinstance(arch, Mapping):
        raise TypeError(f"arch must be a dict, got {type(arch).__name__}")
    if previous_arch is not None and not isinstance(previous_arch, Mapping):
        raise TypeError(f"previous_arch must be a dict or None, got {type(previous_arch).__name__}")
    if not isinstance(probs, Mapping):
        raise TypeError(f"probs must be a dict of label -> weights, got {type(probs).__name__}")
    darts = _darts_arch(arch)
    distributions = [_probabilities(w) for w in probs.values()]
    distributions = [d for d in distributions if d]
    return {
        "epoch": int(epoch),
        "genotype": _genotype_text(arch, darts),
        "changed_edges": _changed_edges(arch, darts, previous_arch),
        "skip_connects_normal": _skip_count(darts, "normal"),
        "skip_connects_reduce": _skip_count(darts, "reduce"),
        "mean_entropy": sum(map(_entropy, distributions)) / len(distributions) if distributions else None,
        "max_weight": max(max(d) for d in distributions) if distributions else None,
        "hessian_eigenvalue": None if hessian_eigenvalue is None else float(hessian_eigenvalue),
        "expected_cost": None if expected_cost is None else dict(expected_cost),
        "arch": darts if darts is not None else json.loads(json.dumps(dict(arch), default=str)),
    }


# ----------------------------------------------------------------------------------------------------------------
# DARTS-ES
# ----------------------------------------------------------------------------------------------------------------


class DartsEarlyStopping:
    """The DARTS-ES rule of RobustDARTS (Zela et al., ICLR 2020, Sec. 4.3), fed one eigenvalue per evaluation.

    The eigenvalues are smoothed by a centred local average over ``window`` evaluations (truncated at the start,
    as ``EVLocalAvg`` in automl/RobustDARTS src/utils.py does); the average of the latest full window is dated at
    its centre epoch. The rule fires when the latest local average exceeds the one ``delta`` evaluations before
    it by more than ``factor`` (``current > factor * previous``), provided that earlier average's epoch is at least
    ``start_epoch``. The search then goes back to that earlier epoch: :attr:`go_back_epoch`. Defaults are the
    official code's (:mod:`nni_darts_ext.constants`, ``DARTS_ES_*``). Epochs are 0-based.

    Example::

        rule = DartsEarlyStopping()
        for epoch, ev in enumerate(eigenvalues):
            if rule.update(epoch, ev):
                arch = archs[rule.go_back_epoch]
                break
    """

    def __init__(
        self,
        *,
        window: int = DARTS_ES_WINDOW,
        delta: int = DARTS_ES_DELTA,
        factor: float = DARTS_ES_FACTOR,
        start_epoch: int = DARTS_ES_START_EPOCH,
    ) -> None:
        self.window = check_int("window", window, minimum=1)
        self.delta = check_int("delta", delta, minimum=1)
        self.start_epoch = check_int("start_epoch", start_epoch, minimum=0)
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not (0 < factor < math.inf):
            raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
        self.factor = float(factor)
        self.epochs: list[int] = []
        self.eigenvalues: list[float] = []
        #: ``(centre epoch, local average)`` per evaluation once ``ceil(window / 2)`` eigenvalues are in.
        self.local_averages: list[tuple[int, float]] = []
        self.stopped = False
        self.stop_epoch: int | None = None
        self.go_back_epoch: int | None = None

    def update(self, epoch: int, eigenvalue: float, *, final: bool = False) -> bool:
        """Add the eigenvalue of ``epoch``; True when the rule fires now (never on the ``final`` epoch).

        Raises:
            ValueError: ``epoch`` not after the previous one, or a non-finite eigenvalue.
        """
        epoch = check_int("epoch", epoch, minimum=0)
        if self.epochs and epoch <= self.epochs[-1]:
            raise ValueError(f"epoch must increase: got {epoch} after {self.epochs[-1]}")
        if isinstance(eigenvalue, bool) or not isinstance(eigenvalue, numbers.Real) or not math.isfinite(eigenvalue):
            raise ValueError(f"eigenvalue must be a finite number, got {eigenvalue!r}")
        self.epochs.append(epoch)
        self.eigenvalues.append(float(eigenvalue))
        count, half = len(self.eigenvalues), self.window // 2
        if count >= math.ceil(self.window / 2):
            values = self.eigenvalues[max(0, count - self.window):]
            self.local_averages.append((self.epochs[count - 1 - half], sum(values) / len(values)))
        if self.stopped or final or len(self.local_averages) <= self.delta:
            return False
        previous_epoch, previous = self.local_averages[-1 - self.delta]
        current = self.local_averages[-1][1]
        if previous_epoch >= self.start_epoch and previous > 0 and current > self.factor * previous:
            self.stopped, self.stop_epoch, self.go_back_epoch = True, epoch, previous_epoch
            return True
        return False


# ----------------------------------------------------------------------------------------------------------------
# Warnings, files, plot
# ----------------------------------------------------------------------------------------------------------------


def health_warnings(
    records: Sequence[Mapping[str, Any]],
    *,
    max_normal_skips: int = MAX_NORMAL_SKIP_CONNECTS,
    stall_epochs: int = ARCH_STALL_EPOCHS,
) -> list[str]:
    """Warnings about the latest record: too many skips in the normal cell, or an architecture that stopped changing.

    The architecture counts as unchanged for ``n`` epochs when the last ``n`` records have ``changed_edges == 0``.

    Example::

        for line in health_warnings(records):
            logging.getLogger(__name__).warning(line)
    """
    check_int("max_normal_skips", max_normal_skips, minimum=0)
    check_int("stall_epochs", stall_epochs, minimum=1)
    if not records:
        return []
    last = records[-1]
    warnings: list[str] = []
    skips = last.get("skip_connects_normal") or 0
    if skips > max_normal_skips:
        warnings.append(
            f"epoch {last.get('epoch')}: the normal cell holds {skips} skip connections (more than "
            f"{max_normal_skips}): the search may be collapsing onto skip_connect"
        )
    unchanged = 0
    for record in reversed(records):
        if record.get("changed_edges") != 0:
            break
        unchanged += 1
    if unchanged >= stall_epochs:
        warnings.append(f"epoch {last.get('epoch')}: the architecture has not changed for {unchanged} epochs")
    return warnings


def read_health_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records in ``path`` (a JSON list); ``[]`` when the file is missing.

    Raises:
        ValueError: not a JSON list of objects.

    Example::

        records = read_health_records("runs/search/search_health.json")
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON list of records")
    return data


def write_health_records(path: str | os.PathLike[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` as a JSON list to ``path`` atomically (a kill mid-write keeps the previous file)."""
    atomic_write_json(path, [dict(r) for r in records])


def append_health_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append ``record`` to the list in ``path`` (atomically), replacing records of the same or later epochs.

    Returns the list written. Records of later epochs are dropped so that a resumed search rewrites them.

    Example::

        append_health_record("runs/search/search_health.json", record)
    """
    records = [r for r in read_health_records(path) if r.get("epoch", -1) < record["epoch"]]
    records.append(dict(record))
    write_health_records(path, records)
    return records


def plot_health(records: Sequence[Mapping[str, Any]], path: str | os.PathLike[str] | None = None):
    """Draw eigenvalue, mean entropy, skip counts and, under a search cost, the expected cost against its target
    over the epochs (three or four panels, matplotlib Agg).

    Writes ``path`` (PNG, atomically) and returns it; without a path returns the Figure.

    Example::

        plot_health(read_health_records("runs/search/search_health.json"), "runs/search/health.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    costs = [(r["epoch"], r["expected_cost"]) for r in records if r.get("expected_cost")]
    fig = Figure(figsize=(_HEALTH_FIGSIZE[0], _HEALTH_FIGSIZE[1] * (4 / 3 if costs else 1)), dpi=_HEALTH_DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(4 if costs else 3, 1, sharex=True)
    epochs = [r["epoch"] for r in records]
    computed = [(r["epoch"], r["hessian_eigenvalue"]) for r in records if r.get("hessian_eigenvalue") is not None]
    if computed:
        axes[0].plot(*zip(*computed, strict=False), marker="o")
    else:
        axes[0].text(0.5, 0.5, "not computed (search.hessian_every = 0)", ha="center", va="center",
                     transform=axes[0].transAxes)
    axes[0].set_ylabel("dominant eigenvalue")
    entropy = [(r["epoch"], r["mean_entropy"]) for r in records if r.get("mean_entropy") is not None]
    if entropy:
        axes[1].plot(*zip(*entropy, strict=False), marker="o", color="tab:green")
    axes[1].set_ylabel("mean entropy (nats)")
    for cell, color in (("normal", "tab:red"), ("reduce", "tab:purple")):
        axes[2].plot(epochs, [r.get(f"skip_connects_{cell}", 0) for r in records], marker="o", color=color,
                     label=f"{cell} cell")
    axes[2].axhline(MAX_NORMAL_SKIP_CONNECTS, color="grey", linestyle="--", linewidth=0.8)
    axes[2].set_ylabel("skip connections")
    if costs:  # search under a budget: the supernet's expected cost against the target
        metric = costs[-1][1]["metric"]
        axes[3].plot([e for e, _ in costs], [c["expected"] for _, c in costs], marker="o", color="tab:orange",
                     label="expected")
        axes[3].axhline(costs[-1][1]["target"], color="grey", linestyle="--", linewidth=0.8, label="target")
        axes[3].set_ylabel(f"expected {metric}")
        axes[3].legend(loc="upper right")
    axes[-1].set_xlabel("epoch")
    axes[2].legend(loc="upper left")
    axes[0].set_title("search health")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    if path is None:
        return fig
    path = Path(path)
    with atomic_open(path) as handle:
        fig.savefig(handle, format="png")
    return path
