"""Named, typed DARTS protocols: YAML recipes shipped with the package, loaded as OmegaConf structured configs.

A recipe records a whole search + retrain protocol (data, search, retrain, export, seed), every number commented
with its source in the YAML file. :func:`load_recipe` takes a shipped name (``paper``, ``tutorial``, ``pc-darts``,
``demo``) or a path, applies dotted ``--set`` style overrides and validates everything, raising
:class:`RecipeError` (a ``ValueError``) with one line that names the offending key.

OmegaConf does the configuration work: reading YAML, merging an ``extends:`` chain, dotted overrides,
``${...}`` interpolation, the schema (the dataclasses below: unknown keys, missing keys, defaults) and building
the typed objects. This module adds the checks that are ours:

* Every key without a default must be set; a user file can start from a shipped one with ``extends: paper``
  (a shipped name, or a path relative to the file) and list only what it changes. Unknown keys are errors.
* Types are strict, stricter than OmegaConf's conversions: ``bool`` is not an ``int``, a float is not an ``int``
  (``epochs: 50.0`` is an error), a string is never a number and a number never a string. An ``int`` is
  accepted where a float is expected (``eta_min: 0``).
* Ranges and consistency (:func:`validate`): known datasets and strategy presets, learning rates > 0, ...
* ``3e-4`` is a float (OmegaConf's YAML loader); quoted ``'3e-4'`` stays a string and is rejected as one.

Example::

    recipe = load_recipe("paper", overrides=["retrain.epochs=10", "dataset.data_dir=/data"])
    recipe.retrain.epochs            # 10
    text = recipe.to_yaml()
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from .constants import (
    CIFAR10_IMAGE_SIZE,
    DIGITS_IMAGE_SIZE,
    IMAGEFOLDER_TEST_FRACTION,
    MIN_NUM_CELLS,
    NATIVE_DATASET_SIZE,
    SELECTION_EPOCHS,
    SELECTION_HELD_OUT_FRACTION,
    STEM_REDUCTIONS,
)
from .errors import RecipeError

#: The values of ``export.selection``.
EXPORT_SELECTIONS = ("magnitude", "perturbation")

__all__ = [
    "RecipeError",
    "Recipe",
    "DatasetSection",
    "SearchSection",
    "RetrainSection",
    "EXPORT_SELECTIONS",
    "ExportSection",
    "SelectSection",
    "list_recipes",
    "recipe_text",
    "load_recipe",
    "apply_overrides",
    "parse_override",
    "validate",
    "ARCHITECTURE_ORDERS",
    "EARLY_STOP_RULES",
    "SELECT_RULES",
]

#: ``dataset.name`` values read by nni_darts_ext.datasets (listed here too: this module imports nothing heavy).
OWN_DATASETS = ("imagefolder", "npz", "cifar100", "mnist", "fashion-mnist", "svhn")
#: ``dataset.cache`` values (nni_darts_ext.datasets.CACHE_MODES).
CACHE_MODES = ("auto", "memory", "none")
#: ``search.stem`` / ``retrain.stem`` values (nni_darts_ext.space.STEMS).
STEMS = tuple(STEM_REDUCTIONS)
#: The recipe the CLI uses when none is named: the smallest, a few minutes on a CPU.
DEFAULT_RECIPE = "demo"
#: ``search.order``: first-order (1) or second-order, unrolled (2) architecture gradients (DARTS paper, Sec. 2.3).
ARCHITECTURE_ORDERS = (1, 2)
#: ``search.early_stop``: ``"hessian"`` stops when the dominant Hessian eigenvalue grows (RobustDARTS, DARTS-ES).
EARLY_STOP_RULES = ("hessian",)
#: ``search.select``: how a multi-seed search picks its cell: a short retrain of each scored on a held-out part of
#: the training split (``val``), or the search's own final validation accuracy (``last-val``).
SELECT_RULES = ("val", "last-val")
#: ``search.batch_size`` / ``retrain.batch_size``: find the largest batch that fits (nni_darts_ext.batch_size).
AUTO_BATCH_SIZE = "auto"
# Package data: nni_darts_ext/recipes/*.yaml (a folder beside this module, not a package).
_RECIPE_FOLDER = "recipes"
_SUFFIXES = (".yaml", ".yml")
# `extends:` chains longer than this are refused (they are almost certainly a cycle).
_MAX_EXTENDS_DEPTH = 8
_EXTENDS = "extends"
# Longest value text quoted in an error message.
_MAX_QUOTED_CHARS = 40


# ----------------------------------------------------------------------------------------------------------------
# Schema. The protocol's numbers have no defaults (MISSING): the shipped YAML files are the record, each number
# with its source. Options added later have defaults that keep the protocol unchanged, so older files stay valid.
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSection:
    """Which data, where. ``name``: ``cifar10``, ``digits``, or an own dataset (``imagefolder``, ``npz``,
    ``cifar100``, ``mnist``, ``fashion-mnist``, ``svhn``: nni_darts_ext.datasets)."""

    name: str = MISSING
    # Folder holding cifar-10-batches-py (ignored for digits), the image folder (train/CLASS/*, test/CLASS/*), the
    # .npz file, or the torchvision files. Relative paths are relative to the working folder.
    data_dir: str | None = MISSING
    # Input size in pixels; null: the default (32 for CIFAR-10, 16 for digits, the images' own size for an own
    # dataset). CIFAR-10 only takes 32.
    image_size: int | None = MISSING
    # DataLoader worker processes.
    num_workers: int = MISSING
    # Use at most this many images of each split (a seeded random subset): for smoke tests; null: all.
    max_samples: int | None = MISSING
    # The rest is read by own datasets only.
    # Input channels, 1 or 3; null: 1 when every image is grayscale, else 3.
    in_channels: int | None = None
    # imagefolder without a test/ folder: this fraction of each class is held out (seeded by `seed`) for testing.
    test_fraction: float = IMAGEFOLDER_TEST_FRACTION
    # Random horizontal flips in training (false for digits, text and anything that must not be mirrored).
    flip: bool = True
    # auto: decoded images kept in memory when they fit (constants.MEMORY_CACHE_BYTES); memory: always; none: never.
    cache: str = "auto"
    # Skip unreadable images (reported in the log and summary.json) instead of stopping.
    skip_bad_images: bool = False
    # Per-channel mean / std of the normalisation (pixel values 0..1); null: computed from the training split.
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass(frozen=True)
class CostSection:
    """Search under a budget (``search.cost``): ``weight * max(0, E / target - 1)`` added to the architecture loss,
    ``E`` the supernet's expected ``metric`` (``macs``, ``params`` or ``latency`` in ms) of the retrain network."""

    metric: str = MISSING
    target: float = MISSING
    weight: float = 1.0


@dataclass(frozen=True)
class SearchSection:
    """The one-shot search: supernet size, weight optimizer (SGD + cosine), architecture optimizer (Adam)."""

    strategy: str = MISSING
    cells: int = MISSING
    width: int = MISSING
    epochs: int = MISSING
    # Samples per step, or "auto": the largest batch that fits the memory limit (--memory-limit), found by trial steps.
    batch_size: int | str = MISSING
    train_fraction: float = MISSING
    learning_rate: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    eta_min: float = MISSING
    # The strategy's settings below: null means the strategy preset's own (nni_darts_ext.search.presets); a value
    # given wins over the preset's, also when it equals DARTS' default.
    gradient_clip: float | None = MISSING
    arc_learning_rate: float | None = MISSING
    arc_betas: tuple[float, float] | None = MISSING
    arc_weight_decay: float | None = MISSING
    warmup_epochs: int | None = MISSING
    # 1/K of each edge's channels go through the candidate ops (PC-DARTS; any preset takes it).
    partial_channels: int | None = MISSING
    # Architecture-gradient order, 1 or 2; null: the strategy preset's own.
    order: int | None = None
    # Extra keyword arguments for the strategy preset (nni_darts_ext.search.darts_strategy).
    strategy_options: dict[str, Any] = field(default_factory=dict)
    # Epochs between Hessian-eigenvalue health checks of the architecture; 0: off.
    hessian_every: int = 0
    # null: run every epoch; "hessian": stop early when the Hessian health check says the search degenerates.
    early_stop: str | None = None
    # One search per seed (into DIR/seed-S/), then one cell chosen by `select`; null: one search with `seed`.
    seeds: list[int] | None = None
    # How a multi-seed search picks its cell: one of SELECT_RULES.
    select: str = "val"
    # Activation checkpointing of the supernet: "none", "cells" (each cell) or "edges" (each mixed edge); same
    # gradients, less memory, each region's forward run twice.
    checkpointing: str = "none"
    # Samples per Hessian-vector-product chunk of the health check's validation batch; null: the whole batch at once.
    hessian_batch_size: int | None = None
    # The supernet's stem, cifar or imagenet (NNI's DARTS stems); null: imagenet for images of 64 px and more.
    stem: str | None = None
    # Search under a budget: {metric: macs | params | latency, target: T, weight: W}; null: accuracy alone.
    cost: CostSection | None = None


@dataclass(frozen=True)
class RetrainSection:
    """The fixed network trained from scratch on the whole training set, then tested."""

    cells: int = MISSING
    width: int = MISSING
    epochs: int = MISSING
    # Global samples per step, or "auto": the largest batch that fits the memory limit (--memory-limit).
    batch_size: int | str = MISSING
    learning_rate: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    eta_min: float = MISSING
    auxiliary_weight: float = MISSING
    drop_path_prob: float = MISSING
    # Cutout side in pixels; null: no cutout.
    cutout: int | None = MISSING
    # Gradient-norm clip; null: no clipping.
    gradient_clip: float | None = MISSING
    # Activation checkpointing of the fixed net: "none" or "cells" (each cell's activations recomputed in backward).
    checkpointing: str = "none"
    # The fixed net's stem, cifar or imagenet; null: imagenet for images of 64 px and more.
    stem: str | None = None


@dataclass(frozen=True)
class ExportSection:
    """How the searched architecture is read off the architecture weights."""

    # At most this many skip connections in the exported normal cell (P-DARTS); null: no limit.
    max_skip_connects: int | None = None
    # How the cell is read off the trained supernet: magnitude (the largest architecture weights, DARTS) or
    # perturbation (DARTS-PT, Wang et al. ICLR 2021: keep the op whose removal hurts the supernet's validation
    # accuracy most, then the same for node inputs; nni_darts_ext.search.perturbation_selection).
    selection: str = "magnitude"
    # Perturbation selection: epochs of fine-tuning between two decisions; null: the paper's (PT_TUNE_EPOCHS).
    tune_epochs: int | None = None
    # Limits on the exported cell's retrain network (multiply-adds of one image, parameters, milliseconds of one
    # batch of retrain.batch_size on the run's device); the best cell by architecture weight that fits; null: none.
    max_macs: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class SelectSection:
    """The short retrain that scores each seed's cell of a multi-seed search (``search.select: val``).

    The recipe's retrain net and optimiser for ``epochs`` epochs, trained on the training split without a held-out
    ``held_out_fraction`` of it and scored on that part; the test split is never read.
    """

    epochs: int = SELECTION_EPOCHS
    held_out_fraction: float = SELECTION_HELD_OUT_FRACTION


@dataclass(frozen=True)
class Recipe:
    """A complete protocol. Build with :func:`load_recipe`; change with :func:`apply_overrides`."""

    name: str = MISSING
    description: str = MISSING
    seed: int = MISSING
    dataset: DatasetSection = MISSING
    search: SearchSection = MISSING
    retrain: RetrainSection = MISSING
    export: ExportSection = field(default_factory=ExportSection)
    select: SelectSection = field(default_factory=SelectSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), in schema order; ``load_recipe`` reads it back."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self, header: str = "") -> str:
        """YAML text of :meth:`to_dict`, with ``header`` lines as comments on top."""
        lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        return lines + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @property
    def image_size(self) -> int | None:
        """The effective input size: ``dataset.image_size`` or the dataset's own (None for an image folder or an
        ``.npz`` file, whose size is known once read: ``RecipeData.info.image_size``)."""
        if self.dataset.image_size is not None:
            return self.dataset.image_size
        if self.dataset.name == "digits":
            return DIGITS_IMAGE_SIZE
        return NATIVE_DATASET_SIZE.get(self.dataset.name)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _sections() -> dict[str, type]:
    """Section name -> dataclass, from :class:`Recipe`'s fields."""
    hints = typing.get_type_hints(Recipe)
    return {name: hints[name] for name in _field_names(Recipe) if dataclasses.is_dataclass(hints[name])}


# ----------------------------------------------------------------------------------------------------------------
# Strict types (ours: OmegaConf would turn "3" into 3 and 3 into "3")
# ----------------------------------------------------------------------------------------------------------------


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        names = " or ".join(_type_name(a) for a in args)
        return f"{names} or null" if type(None) in typing.get_args(tp) else names
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    if origin is dict:
        return "mapping"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "int", float: "float", str: "string", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def _value_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "mapping"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", tuple: "list"}.get(
        type(value), type(value).__name__
    )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > _MAX_QUOTED_CHARS:
        text = text[: _MAX_QUOTED_CHARS - 3] + "..."
    return f"{_value_type(value)} {text}"


def _check_type(key: str, value: Any, tp: Any) -> None:
    """RecipeError naming ``key`` unless ``value`` (plain, resolved) is of type ``tp``; int is accepted as float."""
    origin = typing.get_origin(tp)
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return
        for arg in (a for a in args if a is not type(None)):
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                _check_type(key, value, arg)  # a section: its own error names the key inside it
                return
            try:
                _check_type(key, value, arg)
                return
            except RecipeError:
                continue
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}", key=key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise RecipeError(f"{key}: expected a list {_type_name(tp)}, got {_describe(value)}", key=key)
        for i, (item, arg) in enumerate(zip(value, args, strict=True)):
            _check_type(f"{key}[{i}]", item, arg)
        return
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a {_type_name(tp)}, got {_describe(value)}", key=key)
        for i, item in enumerate(value):
            _check_type(f"{key}[{i}]", item, typing.get_args(tp)[0])
        return
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise RecipeError(f"{key}: expected a mapping with string keys, got {_describe(value)}", key=key)
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise RecipeError(f"{key}: expected a mapping of keys, got {_describe(value)}", key=key)
        hints = typing.get_type_hints(tp)
        for name, item in value.items():
            if name in hints:  # unknown keys: the schema merge names them
                _check_type(f"{key}.{name}", item, hints[name])
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        bool: isinstance(value, bool),
        int: is_number and isinstance(value, int),
        float: is_number,
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}", key=key)


def _check_types(plain: Mapping[str, Any]) -> None:
    hints = typing.get_type_hints(Recipe)
    for name, value in plain.items():
        if name in hints:
            _check_type(name, value, hints[name])


# ----------------------------------------------------------------------------------------------------------------
# OmegaConf errors -> one line naming the key
# ----------------------------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _recipe_error(exc: OmegaConfBaseException) -> RecipeError:
    """A RecipeError naming the key of an OmegaConf error (unknown key, missing value, interpolation, ...)."""
    key = str(getattr(exc, "full_key", "") or "")
    if isinstance(exc, ConfigKeyError) and key:
        section, _, _ = key.rpartition(".")
        sections = _sections()
        if section in sections:
            known = f"{section} has: {', '.join(_field_names(sections[section]))}"
        else:
            known = f"a recipe has: {', '.join(_field_names(Recipe))} (and {_EXTENDS})"
        return RecipeError(f"{key}: unknown key; {known}", key=key)
    if isinstance(exc, MissingMandatoryValue) and key:
        return RecipeError(
            f"{key}: missing (every key without a default must be set; `extends: paper` fills them in)",
            key=key,
        )
    return RecipeError(f"{key}: {_reason(exc)}", key=key) if key else RecipeError(_reason(exc))


def _reason(exc: OmegaConfBaseException) -> str:
    """OmegaConf's message on one line, without its ``full_key: ...`` context lines."""
    return _one_line(str(exc).split("\n    full_key:")[0])


# ----------------------------------------------------------------------------------------------------------------
# Shipped recipes and files
# ----------------------------------------------------------------------------------------------------------------


def _shipped() -> dict[str, Any]:
    folder = resources.files(__package__) / _RECIPE_FOLDER
    return {
        entry.name.rsplit(".", 1)[0]: entry
        for entry in folder.iterdir()
        if entry.name.endswith(_SUFFIXES) and entry.is_file()
    }


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted.

    Example::

        >>> "paper" in list_recipes()
        True
    """
    return sorted(_shipped())


def recipe_text(name: str) -> str:
    """The YAML text (comments included) of the shipped recipe ``name``.

    Example::

        text = recipe_text("paper")
    """
    shipped = _shipped()
    if name not in shipped:
        raise RecipeError(f"unknown recipe {name!r}; shipped recipes: {', '.join(sorted(shipped))}")
    return shipped[name].read_text(encoding="utf-8")


def _read_source(name_or_path: str | Path) -> tuple[str, str, Path | None]:
    """(text, label, folder for relative ``extends``) of a shipped name or a file path."""
    if not isinstance(name_or_path, (str, Path)):
        raise RecipeError(f"recipe: expected a name or a path, got {type(name_or_path).__name__}")
    text_name = str(name_or_path)
    shipped = _shipped()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        return shipped[name_or_path].read_text(encoding="utf-8"), f"recipe {name_or_path!r}", None
    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), f"recipe file {path}", path.parent
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"recipe file {path}: cannot read it ({exc})") from None
    if path.exists():
        raise RecipeError(f"recipe file {path}: not a file")
    if text_name.endswith(_SUFFIXES) or "/" in text_name or "\\" in text_name:
        raise RecipeError(f"recipe file {path}: no such file")
    raise RecipeError(f"unknown recipe {text_name!r}; shipped recipes: {', '.join(sorted(shipped))} (or a .yaml path)")


def _parse_yaml(text: str, where: str) -> DictConfig:
    """``text`` as an (untyped) DictConfig; RecipeError for bad YAML or a top level that is not a mapping."""
    try:
        config = OmegaConf.create(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RecipeError(f"{where}: not valid YAML ({problem}{at})") from None
    except AssertionError:  # OmegaConf.create asserts that YAML text holds a mapping or a list
        raise RecipeError(f"{where}: expected a mapping of sections, got a single value") from None
    except OmegaConfBaseException as exc:
        error = _recipe_error(exc)
        raise RecipeError(f"{where}: {error}", key=error.key) from None
    if not isinstance(config, DictConfig):
        raise RecipeError(f"{where}: expected a mapping of sections, got a list")
    return config


def _raw_recipe(name_or_path: str | Path, depth: int = 0) -> tuple[DictConfig, str]:
    """The recipe's untyped config with any ``extends:`` chain merged in (base first, then this file's keys)."""
    if depth > _MAX_EXTENDS_DEPTH:
        raise RecipeError(f"{_EXTENDS}: chain longer than {_MAX_EXTENDS_DEPTH} (a cycle?) at {name_or_path}")
    text, label, folder = _read_source(name_or_path)
    config = _parse_yaml(text, label)
    if _EXTENDS not in config:
        return config, label
    base_name = OmegaConf.to_container(config, resolve=False).get(_EXTENDS)  # as written, not interpolated
    del config[_EXTENDS]
    if not isinstance(base_name, str):
        raise RecipeError(f"{label}: {_EXTENDS}: expected a recipe name or path, got {_describe(base_name)}")
    if folder is not None and base_name not in _shipped() and not Path(base_name).expanduser().is_absolute():
        base_name = str(folder / base_name)
    base, _ = _raw_recipe(base_name, depth + 1)
    try:
        return OmegaConf.merge(base, config), label
    except OmegaConfBaseException as exc:
        error = _recipe_error(exc)
        raise RecipeError(f"{label}: {error}", key=error.key) from None


# ----------------------------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` → ``("a.b", parsed value)``; the value is YAML (``10``, ``3e-4``, ``null``, ``[0.5, 0.9]``).

    ``${...}`` interpolations are kept as text and resolved against the whole recipe when it is built.

    Example::

        >>> parse_override("retrain.epochs=10")
        ('retrain.epochs', 10)
    """
    if not isinstance(text, str) or "=" not in text:
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. retrain.epochs=10")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key:
        raise RecipeError(f"--set {text}: empty key")
    if not value_text.strip():
        raise RecipeError(f"--set {key}: empty value (write {key}=null for null)", key=key)
    if "\n" in value_text.strip():
        raise RecipeError(f"--set {key}: the value must be one line (a YAML flow value such as [0.5, 0.9])", key=key)
    try:
        parsed = _parse_yaml(f"value: {value_text.strip()}", f"--set {key}")
    except RecipeError as exc:
        raise RecipeError(str(exc).replace(f"--set {key}: value: ", f"--set {key}: ", 1), key=key) from None
    return key, OmegaConf.to_container(parsed, resolve=False)["value"]


def _set_key(config: DictConfig, key: str, value: Any) -> None:
    """``config`` with the dotted ``key`` set to ``value``; RecipeError for a section or an unknown key."""
    if not isinstance(key, str) or not key:
        raise RecipeError(f"override {key!r}: expected a dotted key such as 'retrain.epochs'")
    sections = _sections()
    section, _, name = key.partition(".")
    if not name and section in sections:
        example = _field_names(sections[section])[0]
        raise RecipeError(f"--set {key}: is a section; set one of its keys, e.g. {key}.{example}", key=key)
    if section not in sections and name:
        raise RecipeError(f"--set {key}: unknown section {section!r}; known: {', '.join(sections)}", key=key)
    if section not in sections and section not in _field_names(Recipe):
        raise RecipeError(f"--set {key}: unknown key; known: {', '.join(_field_names(Recipe))}", key=key)
    if name and name.split(".")[0] not in _field_names(sections[section]):
        raise RecipeError(
            f"--set {key}: unknown key; {section} has: {', '.join(_field_names(sections[section]))}",
            key=key,
        )
    try:
        OmegaConf.update(config, key, value, merge=False, force_add=True)
    except OmegaConfBaseException as exc:
        raise RecipeError(f"--set {key}: {_recipe_error(exc)}", key=key) from None


def _override_items(overrides: Iterable[str] | Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = [overrides]
    return [parse_override(item) for item in overrides]


# ----------------------------------------------------------------------------------------------------------------
# Building and validating
# ----------------------------------------------------------------------------------------------------------------


def _build(config: DictConfig) -> Recipe:
    """The typed :class:`Recipe` of an untyped config: interpolations resolved, strict types, then the schema."""
    try:
        plain = OmegaConf.to_container(config, resolve=True)
        _check_types(plain)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Recipe), plain))
    except OmegaConfBaseException as exc:
        raise _recipe_error(exc) from None


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise RecipeError(f"{key}: must be a finite number, got {value}", key=key)


def _at_least(key: str, value: float, minimum: float) -> None:
    _finite(key, value)
    if value < minimum:
        raise RecipeError(f"{key}: must be >= {minimum}, got {value}", key=key)


def _positive(key: str, value: float) -> None:
    _finite(key, value)
    if not value > 0:
        raise RecipeError(f"{key}: must be > 0, got {value}", key=key)


def _in_range(key: str, value: float, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    _finite(key, value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise RecipeError(f"{key}: must be in {interval}, got {value}", key=key)


def _one_of(key: str, value: Any, allowed: Sequence[Any]) -> None:
    if value is not None and value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise RecipeError(f"{key}: must be null or one of {choices}, got {value!r}", key=key)


def _validate_dataset(recipe: Recipe) -> None:
    from .data import DATASETS

    d = recipe.dataset
    known = (*DATASETS, *OWN_DATASETS)
    if d.name not in known:
        raise RecipeError(f"dataset.name: unknown dataset {d.name!r}; known: {', '.join(known)}", key="dataset.name")
    _validate_own_dataset(d)
    if d.image_size is not None:
        _at_least("dataset.image_size", d.image_size, 1)
        if d.name == "cifar10" and d.image_size != CIFAR10_IMAGE_SIZE:
            raise RecipeError(
                f"dataset.image_size: CIFAR-10 images are {CIFAR10_IMAGE_SIZE}x{CIFAR10_IMAGE_SIZE}, "
                f"got {d.image_size}",
                key="dataset.image_size",
            )
    _at_least("dataset.num_workers", d.num_workers, 0)
    if d.max_samples is not None:
        _at_least("dataset.max_samples", d.max_samples, 2)


def _validate_own_dataset(d: DatasetSection) -> None:
    """The keys read by own datasets: checked always; refused for cifar10 / digits when they are not the default."""
    if d.name not in OWN_DATASETS:
        defaults = DatasetSection(name=d.name, data_dir=None, image_size=None, num_workers=0, max_samples=None)
        for key in ("in_channels", "mean", "std", "cache", "skip_bad_images", "test_fraction", "flip"):
            if getattr(d, key) != getattr(defaults, key):
                raise RecipeError(f"dataset.{key}: only read by own datasets ({', '.join(OWN_DATASETS)}); "
                                  f"{d.name} has its own; leave it at {getattr(defaults, key)!r}")
    if d.in_channels is not None and d.in_channels not in (1, 3):
        raise RecipeError(f"dataset.in_channels: must be null, 1 or 3, got {d.in_channels}")
    _in_range("dataset.test_fraction", d.test_fraction, 0.0, 1.0, low_open=True, high_open=True)
    if d.cache not in CACHE_MODES:
        raise RecipeError(f"dataset.cache: must be one of {', '.join(map(repr, CACHE_MODES))}, got {d.cache!r}")
    for key in ("mean", "std"):
        values = getattr(d, key)
        if values is None:
            continue
        if len(values) not in (1, 3):
            raise RecipeError(f"dataset.{key}: one value per channel (1 or 3), got {len(values)}")
        if d.in_channels is not None and len(values) != d.in_channels:
            raise RecipeError(f"dataset.{key}: {len(values)} value(s) for dataset.in_channels {d.in_channels}")
        for i, value in enumerate(values):
            (_positive if key == "std" else _finite)(f"dataset.{key}[{i}]", value)
    if (d.mean is None) != (d.std is None):
        raise RecipeError("dataset.mean: set mean and std together (or both null: computed from the training split)")


def _validate_training(section_name: str, s: SearchSection | RetrainSection) -> None:
    """The checks common to the search and the retrain (sizes, SGD, cosine schedule, clipping, checkpointing)."""
    from .activation_checkpointing import RETRAIN_CHECKPOINTING, SEARCH_CHECKPOINTING

    key = section_name + "."
    _at_least(key + "cells", s.cells, MIN_NUM_CELLS)
    _at_least(key + "width", s.width, 1)
    _at_least(key + "epochs", s.epochs, 1)
    if s.batch_size != AUTO_BATCH_SIZE:
        if isinstance(s.batch_size, str):
            raise RecipeError(f"{key}batch_size: expected an int >= 1 or {AUTO_BATCH_SIZE!r}, got {s.batch_size!r}")
        _at_least(key + "batch_size", s.batch_size, 1)
    allowed = SEARCH_CHECKPOINTING if section_name == "search" else RETRAIN_CHECKPOINTING
    if s.checkpointing not in allowed:
        raise RecipeError(f"{key}checkpointing: must be one of {', '.join(map(repr, allowed))}, "
                          f"got {s.checkpointing!r}")
    _positive(key + "learning_rate", s.learning_rate)
    _in_range(key + "momentum", s.momentum, 0.0, 1.0, low_open=False, high_open=True)
    _at_least(key + "weight_decay", s.weight_decay, 0.0)
    _at_least(key + "eta_min", s.eta_min, 0.0)
    if s.eta_min > s.learning_rate:
        raise RecipeError(f"{key}eta_min: {s.eta_min} is above {key}learning_rate {s.learning_rate}", key=key)
    if s.gradient_clip is not None:
        _positive(key + "gradient_clip", s.gradient_clip)


def _validate_search(s: SearchSection) -> None:
    from .search import list_strategies

    strategies = list_strategies()
    if s.strategy not in strategies:
        raise RecipeError(
            f"search.strategy: unknown strategy {s.strategy!r}; known: {', '.join(strategies)}",
            key="search.strategy",
        )
    _in_range("search.train_fraction", s.train_fraction, 0.0, 1.0, low_open=True, high_open=True)
    if s.arc_learning_rate is not None:
        _positive("search.arc_learning_rate", s.arc_learning_rate)
    for i, beta in enumerate(s.arc_betas or ()):
        _in_range(f"search.arc_betas[{i}]", beta, 0.0, 1.0, low_open=False, high_open=True)
    if s.arc_weight_decay is not None:
        _at_least("search.arc_weight_decay", s.arc_weight_decay, 0.0)
    if s.warmup_epochs is not None:
        _at_least("search.warmup_epochs", s.warmup_epochs, 0)
        if s.warmup_epochs >= s.epochs:
            raise RecipeError(
                f"search.warmup_epochs: {s.warmup_epochs} leaves no epoch for the architecture "
                f"(search.epochs is {s.epochs}); lower it or raise search.epochs",
                key="search.warmup_epochs",
            )
    # Whether partial_channels fits the strategy and the supernet is the strategy's to say (DartsSearch.check_space,
    # called when the search is assembled); only its range is checked here.
    if s.partial_channels is not None:
        _at_least("search.partial_channels", s.partial_channels, 1)
    _one_of("search.order", s.order, ARCHITECTURE_ORDERS)
    _at_least("search.hessian_every", s.hessian_every, 0)
    if s.hessian_batch_size is not None:
        _at_least("search.hessian_batch_size", s.hessian_batch_size, 1)
    _one_of("search.early_stop", s.early_stop, EARLY_STOP_RULES)
    if s.early_stop == "hessian" and s.hessian_every == 0:
        raise RecipeError(
            "search.early_stop: 'hessian' needs the Hessian health check; set search.hessian_every >= 1",
            key="search.early_stop",
        )
    if s.seeds is not None:
        if not s.seeds:
            raise RecipeError(
                "search.seeds: expected at least one seed, or null for one search with `seed`",
                key="search.seeds",
            )
        for i, seed in enumerate(s.seeds):
            _at_least(f"search.seeds[{i}]", seed, 0)
        repeated = sorted({seed for seed in s.seeds if s.seeds.count(seed) > 1})
        if repeated:
            raise RecipeError(
                f"search.seeds: seed {repeated[0]} is listed twice; each seed runs one search",
                key="search.seeds",
            )
    _one_of("search.stem", s.stem, STEMS)
    if s.select not in SELECT_RULES:
        raise RecipeError(
            f"search.select: must be one of {', '.join(map(repr, SELECT_RULES))}, got {s.select!r}",
            key="search.select",
        )
    if s.cost is not None:
        from .search.cost import COST_METRICS

        if s.cost.metric not in COST_METRICS:
            raise RecipeError(f"search.cost.metric: must be one of {', '.join(map(repr, COST_METRICS))}, "
                              f"got {s.cost.metric!r}", key="search.cost.metric")
        _positive("search.cost.target", s.cost.target)
        _at_least("search.cost.weight", s.cost.weight, 0.0)


def _validate_select(select: SelectSection) -> None:
    _at_least("select.epochs", select.epochs, 1)
    _in_range("select.held_out_fraction", select.held_out_fraction, 0.0, 1.0, low_open=True, high_open=True)


def _validate_retrain(recipe: Recipe) -> None:
    r = recipe.retrain
    _at_least("retrain.auxiliary_weight", r.auxiliary_weight, 0.0)
    _in_range("retrain.drop_path_prob", r.drop_path_prob, 0.0, 1.0, low_open=False, high_open=True)
    _one_of("retrain.stem", r.stem, STEMS)
    if r.cutout is not None:
        _at_least("retrain.cutout", r.cutout, 1)
        if recipe.image_size is not None and r.cutout > recipe.image_size:
            raise RecipeError(
                f"retrain.cutout: {r.cutout} is longer than the {recipe.image_size}x{recipe.image_size} images",
                key="retrain.cutout",
            )


def validate(recipe: Recipe) -> Recipe:
    """Range and consistency checks (types are checked when building); returns ``recipe``.

    Strategy names are checked against :func:`~nni_darts_ext.search.list_strategies` and dataset names
    against :data:`~nni_darts_ext.data.DATASETS` (both imported here, lazily: they import NNI).

    Example::

        validate(load_recipe("paper"))
    """
    _at_least("seed", recipe.seed, 0)
    _validate_dataset(recipe)
    _validate_training("search", recipe.search)
    _validate_training("retrain", recipe.retrain)
    _validate_search(recipe.search)
    _validate_retrain(recipe)
    if recipe.export.max_skip_connects is not None:
        _at_least("export.max_skip_connects", recipe.export.max_skip_connects, 0)
    _one_of("export.selection", recipe.export.selection, EXPORT_SELECTIONS)
    if recipe.export.tune_epochs is not None:
        _at_least("export.tune_epochs", recipe.export.tune_epochs, 0)
    export = recipe.export
    for key, limit in {"max_macs": export.max_macs, "max_params": export.max_params,
                       "max_latency_ms": export.max_latency_ms}.items():
        if limit is not None:
            _positive(f"export.{key}", limit)
    _validate_select(recipe.select)
    return recipe


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] | Mapping[str, Any] = ()) -> Recipe:
    """Load a shipped recipe (by name) or a YAML file, apply ``overrides`` and validate.

    ``overrides``: ``"a.b=value"`` strings (values parsed as YAML) or a mapping ``{"a.b": value}``.

    Raises:
        RecipeError: unknown name, missing file, bad YAML, unknown/missing key, wrong type, out-of-range value,
            unknown strategy or dataset; the message names the key.

    Example::

        recipe = load_recipe("demo", ["search.epochs=1", "retrain.epochs=1"])
    """
    config, label = _raw_recipe(name_or_path)
    for key, value in _override_items(overrides):
        _set_key(config, key, value)
    try:
        return validate(_build(config))
    except RecipeError as exc:
        raise RecipeError(f"{label}: {exc}", key=exc.key) from None


def apply_overrides(recipe: Recipe, overrides: Iterable[str] | Mapping[str, Any]) -> Recipe:
    """A new, validated recipe with ``overrides`` (as in :func:`load_recipe`) applied to ``recipe``.

    Example::

        tiny = apply_overrides(load_recipe("paper"), {"search.epochs": 1})
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe: expected a Recipe, got {type(recipe).__name__}")
    config = OmegaConf.create(recipe.to_dict())
    for key, value in _override_items(overrides):
        _set_key(config, key, value)
    return validate(_build(config))
