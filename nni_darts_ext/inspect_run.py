"""Report on an ``nni-darts search`` output folder, finished or still going: what ``nni-darts inspect DIR`` prints.

:func:`inspect_run` only reads what is on disk (``config.yaml``, ``summary.json``, ``search_health.json``,
``checkpoints/``, the plots); it takes no lock and never waits, so it is safe beside a running search. A search
still going (or killed) has no ``summary.json`` yet; files are written atomically, so each one is either whole or
absent, and anything unreadable is reported as a note rather than an error. A folder that is not a search's raises
:class:`InspectError` with a one-line message.

Example::

    report = inspect_run("runs/search")
    text = format_report(report)        # or json.dumps(report)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nni_darts_ext.errors import InspectError
from nni_darts_ext.health import (
    HEALTH_FILE,
    HEALTH_PLOT,
    health_warnings,
    read_health_records,
)

__all__ = ["format_report", "inspect_run"]

# The output layout of ``nni-darts search`` (pipeline.run_search).
_CONFIG = "config.yaml"
_SUMMARY = "summary.json"
_CHECKPOINTS = "checkpoints"
_LAST_CHECKPOINT = "last.ckpt"
_PLOTS = ("alphas.png", "cells.png", HEALTH_PLOT)
_TENSORBOARD = "tensorboard"
_ACCURACY_KEYS = ("val_acc", "train_acc")


def _read(path: Path, parse: Any, errors: tuple[type[BaseException], ...], notes: list[str]) -> tuple[bool, Any]:
    """``(True, parse(text))`` of the file at ``path``; ``(False, None)`` when it is missing, or unreadable (a note
    says so)."""
    if not path.is_file():
        return False, None
    try:
        return True, parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *errors) as exc:
        notes.append(f"{path.name} unreadable ({type(exc).__name__})")
        return False, None


def _read_config(path: Path, notes: list[str]) -> dict[str, Any] | None:
    import yaml

    read, data = _read(path, yaml.safe_load, (yaml.YAMLError,), notes)
    if read and (not isinstance(data, dict) or not isinstance(data.get("search"), dict)):
        raise InspectError(f"{path.parent}: {_CONFIG} is not an nni-darts recipe (no 'search' section)")
    return data


def _read_summary(path: Path, notes: list[str]) -> dict[str, Any] | None:
    read, data = _read(path, json.loads, (json.JSONDecodeError,), notes)
    if not read:
        return None
    if not isinstance(data, dict):
        raise InspectError(f"{path.parent}: {_SUMMARY} is not an nni-darts summary")
    if data.get("command") not in (None, "search"):
        raise InspectError(f"{path.parent}: holds an nni-darts {data.get('command')} run, not a search")
    return data


def _row(record: dict[str, Any]) -> dict[str, Any]:
    metrics = record.get("metrics") or {}
    accuracy = next(((key, metrics[key]) for key in _ACCURACY_KEYS if key in metrics), (None, None))
    return {
        "epoch": record.get("epoch"),
        "accuracy": accuracy[1],
        "accuracy_metric": accuracy[0],
        "changed_edges": record.get("changed_edges"),
        "skip_connects_normal": record.get("skip_connects_normal"),
        "skip_connects_reduce": record.get("skip_connects_reduce"),
        "mean_entropy": record.get("mean_entropy"),
        "hessian_eigenvalue": record.get("hessian_eigenvalue"),
        "expected_cost": (record.get("expected_cost") or {}).get("expected"),
    }


def inspect_run(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a search's output folder and return its report as a JSON-ready dict.

    Keys: ``dir``, ``status`` (``'finished'`` with a summary, else ``'incomplete'``: still running or stopped),
    ``recipe``, ``preset`` (the strategy preset), ``dataset``, ``epochs_done``, ``epochs_planned``, ``epochs``
    (one row per health record: ``accuracy`` and the metric it is, ``changed_edges``, skip counts,
    ``mean_entropy``, ``hessian_eigenvalue``, ``expected_cost``), ``cost`` (``None``, or the search cost's ``metric``
    and ``target``, the exported net's ``macs``/``params``/``latency_ms`` and each limit's value),
    ``early_stop`` (``None`` or the summary's/record's note),
    ``warnings``, ``plots`` (file name -> path or ``None``), ``checkpoint`` (last checkpoint or ``None``),
    ``tensorboard`` (the TensorBoard log folder or ``None``), ``hessian_every`` (from the recipe),
    ``genotype`` (final, else the latest record's) and ``notes`` (unreadable files).

    Raises:
        InspectError: missing folder, not a folder, or no search output in it (one-line message).

    Example::

        inspect_run("runs/search")["epochs_done"]
    """
    path = Path(directory)
    if not path.exists():
        raise InspectError(f"{path}: no such folder")
    if not path.is_dir():
        raise InspectError(f"{path}: not a folder")
    notes: list[str] = []
    config = _read_config(path / _CONFIG, notes)
    summary = _read_summary(path / _SUMMARY, notes)
    try:
        records = read_health_records(path / HEALTH_FILE)
    except ValueError as exc:
        notes.append(f"{HEALTH_FILE} unreadable ({str(exc).split(': ', 1)[-1]})")
        records = []
    checkpoint = path / _CHECKPOINTS / _LAST_CHECKPOINT
    known = [path / _CONFIG, path / _SUMMARY, path / HEALTH_FILE, path / _CHECKPOINTS]
    if not any(p.exists() for p in known):
        raise InspectError(f"{path}: not an nni-darts search folder (no {_CONFIG}, {_SUMMARY} or {HEALTH_FILE})")

    search = (config or {}).get("search") or {}
    early_stop = (summary or {}).get("early_stop")
    if early_stop is None:
        early_stop = next((r["early_stop"] for r in records if isinstance(r.get("early_stop"), dict)), None)
    genotype = (summary or {}).get("genotype") or (records[-1].get("genotype") if records else None)
    return {
        "dir": str(path),
        "status": "finished" if summary is not None else "incomplete",
        "recipe": (config or {}).get("name", (summary or {}).get("recipe")),
        "preset": search.get("strategy", (summary or {}).get("strategy")),
        "dataset": ((config or {}).get("dataset") or {}).get("name", (summary or {}).get("dataset")),
        "epochs_done": (summary or {}).get("epochs", len(records)),
        "epochs_planned": search.get("epochs"),
        "hessian_every": search.get("hessian_every"),
        "epochs": [_row(r) for r in records],
        "early_stop": early_stop,
        "warnings": health_warnings(records),
        "plots": {name: str(path / name) if (path / name).is_file() else None for name in _PLOTS},
        "checkpoint": str(checkpoint) if checkpoint.is_file() else None,
        "tensorboard": str(path / _TENSORBOARD) if (path / _TENSORBOARD).is_dir() else None,
        "genotype": genotype,
        "cost": _cost(records, summary),
        "notes": notes,
    }


def _cost(records: list[dict[str, Any]], summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The search cost (metric, target) and the exported net's figures; ``None`` for a search without either."""
    spec = next((r["expected_cost"] for r in reversed(records) if isinstance(r.get("expected_cost"), dict)), None)
    figures = {key: (summary or {}).get(key) for key in ("macs", "params", "latency_ms")}
    if spec is None and not (summary or {}).get("budget"):
        return None
    return {"metric": None if spec is None else spec.get("metric"), "target": None if spec is None else
            spec.get("target"), "exported": figures, "limits": (summary or {}).get("budget") or {}}


def _number(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """The text form of :func:`inspect_run`'s report (what ``nni-darts inspect DIR`` prints).

    Example::

        text = format_report(inspect_run("runs/search"))
    """
    status = ("finished" if report["status"] == "finished"
              else "incomplete (no summary.json yet: still running, or stopped before the end)")
    planned = report.get("epochs_planned")
    lines = [
        f"search {report['dir']}: {status}",
        (f"recipe {report.get('recipe') or '?'}, preset {report.get('preset') or '?'}, "
         f"dataset {report.get('dataset') or '?'}"),
        f"epochs done: {report['epochs_done']}" + (f" of {planned}" if planned is not None else ""),
    ]
    if report.get("early_stop"):
        stop = report["early_stop"]
        lines.append(f"early stop ({stop.get('rule', '?')}): stopped at epoch {stop.get('stop_epoch', '?')}, "
                     f"architecture of epoch {stop.get('go_back_epoch', '?')}")
    rows = report["epochs"]
    if rows:
        metric = next((r["accuracy_metric"] for r in rows if r["accuracy_metric"]), "accuracy")
        lines.append("")
        cost = report.get("cost") or {}
        cost_head = f"  {'expected ' + cost['metric']:>16}" if cost.get("metric") else ""
        lines.append(f"{'epoch':>5}  {metric:>9}  {'changed':>7}  {'skips n/r':>9}  {'entropy':>7}  {'eigenvalue':>10}"
                     + cost_head)
        for r in rows:
            skips = f"{r['skip_connects_normal'] if r['skip_connects_normal'] is not None else '-'}/" \
                    f"{r['skip_connects_reduce'] if r['skip_connects_reduce'] is not None else '-'}"
            changed = "-" if r["changed_edges"] is None else str(r["changed_edges"])
            lines.append(f"{r['epoch']:>5}  {_number(r['accuracy'], 4):>9}  {changed:>7}  {skips:>9}  "
                         f"{_number(r['mean_entropy'], 4):>7}  {_number(r['hessian_eigenvalue'], 4):>10}"
                         + (f"  {_number(r['expected_cost'], 1):>16}" if cost_head else ""))
        lines.append("")
    else:
        lines.append("no search_health.json records yet")
    if report.get("genotype"):
        lines.append(f"genotype: {report['genotype']}")
    if report.get("cost"):
        cost = report["cost"]
        if cost.get("metric"):
            lines.append(f"search cost: {cost['metric']}, target {cost['target']:g}")
        figures = ", ".join(f"{k} {v}" for k, v in cost["exported"].items() if v is not None)
        if figures:
            lines.append(f"exported net (retrain size): {figures}")
        for key, limit in cost["limits"].items():
            lines.append(f"  {key}: {limit['value']:g} of {limit['limit']:g} "
                         f"({'within' if limit['within'] else 'ABOVE'})")
    lines.append("warnings: " + ("none" if not report["warnings"] else ""))
    lines.extend(f"  - {w}" for w in report["warnings"])
    present = [p for p in report["plots"].values() if p]
    missing = [name for name, p in report["plots"].items() if not p]
    lines.append("plots: " + (", ".join(present) if present else "none yet")
                 + (f" (not written yet: {', '.join(missing)})" if present and missing else ""))
    if report.get("tensorboard"):
        lines.append(f"tensorboard: {report['tensorboard']} (scalars under search/, cell drawings under Images)")
    lines.append(f"checkpoint: {report['checkpoint'] or 'none'}")
    lines.extend(f"note: {n}" for n in report.get("notes", []))
    return "\n".join(lines)
