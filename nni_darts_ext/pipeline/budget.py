"""The recipe's budget: ``search.cost`` as a search cost, ``export.max_*`` as limits on the exported cell, and the
cost figures (``macs``, ``params``, ``latency_ms``) of a run's net.

Every cost is that of the recipe's *retrain* network (``retrain.width``, ``retrain.cells``, the dataset's image
size, no auxiliary head). A ``search.cost`` target also limits the export in its metric unless the matching
``export.max_*`` is given (the caller wins), so the exported cell fits the target (a target below the cheapest cell
of the space exports the cheapest cells, with a warning). Export limits no cell of the space meets are refused
before anything is trained (:class:`~nni_darts_ext.errors.BudgetError`, exit 2, naming the
cheapest value).

Example::

    budget = Budget.from_recipe(recipe, device="cpu", batch_size=64, out=Path("runs/s"))
    strategy = darts_strategy(..., cost=budget.cost)
    arch = budget.fit(arch, oneshot.mixed_cells())
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import NUM_CLASSES
from ..errors import BudgetError
from ..io import atomic_write_json
from ..recipes import Recipe
from ..search.cells import MixedCell
from ..search.cost import CostTable, ExpectedCost, build_cost_table, cell_weights, fit_to_limit, measure_net

__all__ = ["COST_NOTE", "LATENCY_TABLE_FILE", "SUMMARY_LATENCY_REPEATS", "Budget", "net_costs", "timing_device"]

_logger = logging.getLogger(__name__)

#: The run folder's cached per-op latency table (read back on resume).
LATENCY_TABLE_FILE = "latency_table.json"
#: Timed repeats of the whole net for ``latency_ms`` in summary.json (median).
SUMMARY_LATENCY_REPEATS = 3

#: What summary.json's ``macs``, ``params`` and ``latency_ms`` are (``{batch}``: the batch timed).
COST_NOTE = ("the exported cell's retrain net without auxiliary head: macs = multiply-adds of one image (ptflops), "
             "params = parameters, latency_ms = median eval forward of {batch} images on the run's device")

_LIMIT_KEYS = {"macs": "export.max_macs", "params": "export.max_params", "latency": "export.max_latency_ms"}


def _table_args(recipe: Recipe, info: Any, stem: str | None) -> dict[str, Any]:
    """The retrain net's shape: the recipe's width and cells for the data ``info`` describes (``None``: the recipe's
    image size, 10 classes of 3 channels)."""
    args = {"width": recipe.retrain.width, "num_cells": recipe.retrain.cells, "image_size": recipe.image_size,
            "num_classes": NUM_CLASSES, "in_channels": 3, "stem": stem}
    if info is not None:
        args |= {"image_size": info.image_size, "num_classes": info.num_classes, "in_channels": info.in_channels}
    return args


def _latency_table(args: dict[str, Any], *, device: str, batch_size: int, out: Path | None) -> CostTable:
    """The per-op latency table: the run folder's when it was measured for this net, batch and device."""
    args = {**args, "batch_size": batch_size, "device": str(torch.device(device))}
    path = None if out is None else out / LATENCY_TABLE_FILE
    if path is not None and path.is_file():
        try:
            table = CostTable.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            table = None
        if table is not None and table.metric == "latency" and table.key == args:
            return table
    return build_cost_table("latency", **args)


@dataclasses.dataclass
class Budget:
    """The search cost and export limits of a recipe, with their cost tables.

    Attributes:
        cost: the :class:`~nni_darts_ext.search.cost.ExpectedCost` of ``search.cost`` (``None``: none).
        limits: ``[(table, limit, recipe key)]`` the exported cell must meet.
        requested: ``{recipe key: value}`` as the recipe gives it (a ``search.cost`` target below the cheapest cell
            is kept here, its limit is the cheapest cell's cost).
    """

    cost: ExpectedCost | None
    limits: list[tuple[CostTable, float, str]]
    requested: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_recipe(cls, recipe: Recipe, *, info: Any = None, stem: str | None = None, device: str = "cpu",
                    batch_size: int = 1, out: Path | None = None) -> Budget:
        """Build the tables the recipe needs (latency only when asked for) and refuse what no cell meets.

        ``info`` (the run's :class:`~nni_darts_ext.datasets.DataInfo`) and ``stem`` give the retrain net's input and
        classes (``None``: the recipe's image size, 10 classes of 3 channels; the default stem for that size).

        Raises:
            BudgetError: a target or limit below the cheapest cell's cost (the message names it).
        """
        tables: dict[str, CostTable] = {}
        args = _table_args(recipe, info, stem)

        def table(metric: str) -> CostTable:
            if metric not in tables:
                tables[metric] = (_latency_table(args, device=device, batch_size=batch_size, out=out)
                                  if metric == "latency" else build_cost_table(metric, **args))
            return tables[metric]

        cost = None
        spec = recipe.search.cost
        if spec is not None:
            cost = ExpectedCost(table(spec.metric), target=spec.target, weight=spec.weight)
        export = recipe.export
        given = {"macs": export.max_macs, "params": export.max_params, "latency": export.max_latency_ms}
        limits: list[tuple[CostTable, float, str]] = []
        for metric, limit in given.items():
            if limit is not None:
                limits.append((table(metric), float(limit), _LIMIT_KEYS[metric]))
            elif spec is not None and spec.metric == metric:
                limits.append((table(metric), float(spec.target), "search.cost.target"))
        requested = {key: limit for _, limit, key in limits}
        for index, (limit_table, limit, key) in enumerate(limits):
            cheapest = limit_table.cheapest()[0]
            if cheapest > limit and key == "search.cost.target":
                # A target is something to aim for: the search pulls towards it and the export takes the cheapest
                # cells; only an explicit export limit is refused.
                _logger.warning("search.cost.target %g is below the cheapest possible cell (%s for the retrain net); "
                                "the export keeps the cheapest cells", limit, _format(limit_table, cheapest))
                limits[index] = (limit_table, cheapest, key)
            elif cheapest > limit:
                raise BudgetError(key, f"{limit:g} is below the cheapest possible cell "
                                       f"({_format(limit_table, cheapest)} for the retrain net)", cheapest)
        return cls(cost, limits, requested)

    @property
    def latency_table(self) -> CostTable | None:
        """The latency table in use (to cache in the run folder), or ``None``."""
        for table in [*(t for t, _, _ in self.limits), *([self.cost.table] if self.cost else [])]:
            if table.metric == "latency":
                return table
        return None

    def save(self, out: Path) -> None:
        """Cache the latency table in the run folder (a resumed run reads it back)."""
        table = self.latency_table
        if table is not None:
            atomic_write_json(out / LATENCY_TABLE_FILE, table.to_json())

    def fit(self, arch: dict[str, Any], cells: Sequence[MixedCell]) -> dict[str, Any]:
        """``arch`` made to meet every limit: the best cell by the supernet's weights that does
        (:func:`~nni_darts_ext.search.cost.fit_to_limit`, one limit after the other, repeated while a change for
        one metric pushed another above its limit).

        Raises:
            BudgetError: several limits this rule cannot meet together (the message names them).
        """
        if not self.limits:
            return arch
        weights = cell_weights(list(cells))
        for _ in range(len(self.limits) + 1):
            unmet = [(table, limit, key) for table, limit, key in self.limits if table.cost_of(arch) > limit]
            if not unmet:
                return arch
            for table, limit, key in unmet:
                before = table.cost_of(arch)
                arch = fit_to_limit(arch, weights, table, limit, key=key)
                _logger.info("%s: exported cell changed to fit %g (%s %g -> %g)", key, limit, table.metric,
                             before, table.cost_of(arch))
        unmet_keys = [key for table, limit, key in self.limits if table.cost_of(arch) > limit]
        if unmet_keys:
            others = ", ".join(k for _, _, k in self.limits if k != unmet_keys[0])
            raise BudgetError(unmet_keys[0], f"cannot be met together with {others} by the export rule; raise one")
        return arch

    def report(self, arch: dict[str, Any]) -> dict[str, Any]:
        """``{key: {"limit", "value", "within"}}`` of each limit for ``arch`` (table values), for summary.json."""
        report = {}
        for table, limit, key in self.limits:
            asked = self.requested.get(key, limit)
            value = table.cost_of(arch)
            report[key] = {"metric": table.metric, "limit": asked, "value": round(value, 6), "within": value <= asked,
                           **({"export_limit": limit} if limit != asked else {})}
        return report


def _format(table: CostTable, value: float) -> str:
    return f"{value:.3f} ms" if table.metric == "latency" else f"{int(round(value))} {table.metric}"


def timing_device(accelerator: str) -> str:
    """The torch device a run on Lightning's ``accelerator`` times its nets on (``auto``: CUDA when present).

    Example::

        >>> timing_device("cpu")
        'cpu'
    """
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "mps" if accelerator == "mps" else "cpu"


def net_costs(net: nn.Module, image_size: int, *, batch_size: int, device: str = "cpu",
              repeats: int = SUMMARY_LATENCY_REPEATS, in_channels: int = 3) -> dict[str, Any]:
    """``{"macs", "params", "latency_ms"}`` of ``net`` (taking ``in_channels``-channel ``image_size`` px images):
    multiply-adds of one image, parameters, median milliseconds of one eval forward of ``batch_size`` images on
    ``device``.

    Example::

        net_costs(build_model(arch, width=16, num_cells=8, image_size=32), 32, batch_size=64)
    """
    return {"macs": int(measure_net("macs", net, image_size, in_channels=in_channels)),
            "params": int(measure_net("params", net, image_size, in_channels=in_channels)),
            "latency_ms": round(measure_net("latency", net, image_size, batch_size=batch_size, device=device,
                                            repeats=repeats, in_channels=in_channels), 3)}
