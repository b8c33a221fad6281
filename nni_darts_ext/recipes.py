"""Named, typed DARTS protocols: YAML recipes shipped with the package, loaded into dataclasses.

A recipe records a whole search + retrain protocol (data, search, retrain, seed), every number commented with its
source in the YAML file. :func:`load_recipe` takes a shipped name (``paper``, ``tutorial``, ``pc-darts``,
``demo``) or a path, applies dotted ``--set`` style overrides and validates everything, raising
:class:`RecipeError` (a ``ValueError``) with one line that names the offending key.

Rules:

* Every key of the schema (:class:`Recipe`, :class:`DatasetSection`, :class:`SearchSection`,
  :class:`RetrainSection`) must be present; a user file can start from a shipped one with ``extends: paper``
  and list only what it changes. Unknown keys are errors.
* Types are strict: ``bool`` is not an ``int``, a float is not an ``int`` (``epochs: 50.0`` is an error), a
  string is never a number. An ``int`` is accepted where a float is expected (``eta_min: 0``).
* YAML 1.1 reads ``3e-4`` as a string; recipes and overrides are parsed with ``yaml.SafeLoader`` plus the usual
  float resolver, so ``3e-4`` is a float (quoted ``'3e-4'`` stays a string and is rejected as one).

Example::

    recipe = load_recipe("paper", overrides=["retrain.epochs=10", "dataset.data_dir=/data"])
    recipe.retrain.epochs            # 10
    print(recipe.to_yaml())
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

import yaml

from .constants import CIFAR10_IMAGE_SIZE, DIGITS_IMAGE_SIZE, MIN_NUM_CELLS

__all__ = [
    "RecipeError",
    "Recipe",
    "DatasetSection",
    "SearchSection",
    "RetrainSection",
    "list_recipes",
    "recipe_text",
    "load_recipe",
    "apply_overrides",
    "parse_override",
]

#: The recipe the CLI uses when none is named: small enough for a 2-core CPU.
DEFAULT_RECIPE = "demo"
# Package data: nni_darts_ext/recipes/*.yaml (a folder beside this module, not a package).
_RECIPE_FOLDER = "recipes"
_SUFFIXES = (".yaml", ".yml")
# `extends:` chains longer than this are refused (they are almost certainly a cycle).
_MAX_EXTENDS_DEPTH = 8


class RecipeError(ValueError):
    """A recipe (file, name or override) that cannot be used; the message names the key, on one line."""


# ----------------------------------------------------------------------------------------------------------------
# YAML: SafeLoader + the usual fix for YAML 1.1 floats without a dot (3e-4, 1e5)
# ----------------------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``3e-4`` as a float (PyYAML, YAML 1.1, needs ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise RecipeError(f"{where}: not valid YAML ({problem}{at})") from None


# ----------------------------------------------------------------------------------------------------------------
# Schema. No defaults for numbers: the shipped YAML files are the record (each number with its source).
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSection:
    """Which data, where. ``name``: ``cifar10`` or ``digits``."""

    name: str
    # Folder holding cifar-10-batches-py (ignored for digits). Relative paths are relative to the working folder.
    data_dir: Optional[str]
    # Input size in pixels; null: the dataset's own (32 for CIFAR-10, 16 for digits). CIFAR-10 only takes 32.
    image_size: Optional[int]
    # DataLoader worker processes.
    num_workers: int
    # Use at most this many images of each split (a seeded random subset): for smoke tests; null: all.
    max_samples: Optional[int]


@dataclass(frozen=True)
class SearchSection:
    """The one-shot search: supernet size, weight optimizer (SGD + cosine), architecture optimizer (Adam)."""

    strategy: str
    cells: int
    width: int
    epochs: int
    batch_size: int
    train_fraction: float
    learning_rate: float
    momentum: float
    weight_decay: float
    eta_min: float
    gradient_clip: float
    arc_learning_rate: float
    arc_betas: Tuple[float, float]
    arc_weight_decay: float
    warmup_epochs: int
    # PC-DARTS: 1/K of each edge's channels go through the candidate ops; null for other strategies.
    partial_channels: Optional[int]


@dataclass(frozen=True)
class RetrainSection:
    """The fixed network trained from scratch on the whole training set, then tested."""

    cells: int
    width: int
    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    weight_decay: float
    eta_min: float
    auxiliary_weight: float
    drop_path_prob: float
    # Cutout side in pixels; null: no cutout.
    cutout: Optional[int]
    # Gradient-norm clip; null: no clipping.
    gradient_clip: Optional[float]


@dataclass(frozen=True)
class Recipe:
    """A complete protocol. Build with :func:`load_recipe`; change with :func:`apply_overrides`."""

    name: str
    description: str
    seed: int
    dataset: DatasetSection
    search: SearchSection
    retrain: RetrainSection

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), in schema order; ``load_recipe`` reads it back."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self, header: str = "") -> str:
        """YAML text of :meth:`to_dict`, with ``header`` lines as comments on top."""
        lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        return lines + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @property
    def image_size(self) -> int:
        """The effective input size: ``dataset.image_size`` or the dataset's own."""
        if self.dataset.image_size is not None:
            return self.dataset.image_size
        return CIFAR10_IMAGE_SIZE if self.dataset.name == "cifar10" else DIGITS_IMAGE_SIZE


_SECTIONS: dict[str, type] = {"dataset": DatasetSection, "search": SearchSection, "retrain": RetrainSection}


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# ----------------------------------------------------------------------------------------------------------------
# Type checking
# ----------------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])} or null"
    if origin in (tuple, Tuple):
        return "[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    return {int: "int", float: "float", str: "string", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def _value_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against ``tp`` (int → float widening only); RecipeError naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        try:
            return _coerce(key, value, args[0])
        except RecipeError:
            raise RecipeError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}") from None
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise RecipeError(f"{key}: expected a list {_type_name(tp)}, got {_describe(value)}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        ok = isinstance(value, float)
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_value_type(value)} {text}" if value is not None else "null"


# ----------------------------------------------------------------------------------------------------------------
# Shipped recipes
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

        print(recipe_text("paper"))
    """
    shipped = _shipped()
    if name not in shipped:
        raise RecipeError(f"unknown recipe {name!r}; shipped recipes: {', '.join(sorted(shipped))}")
    return shipped[name].read_text(encoding="utf-8")


def _read_source(name_or_path: str | Path) -> tuple[str, str, Optional[Path]]:
    """(text, label, folder for relative `extends`) of a shipped name or a file path."""
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


def _raw_recipe(name_or_path: str | Path, depth: int = 0) -> tuple[dict[str, Any], str]:
    """The recipe's mapping with any ``extends:`` chain merged in (base first, then this file's keys)."""
    if depth > _MAX_EXTENDS_DEPTH:
        raise RecipeError(f"extends: chain longer than {_MAX_EXTENDS_DEPTH} (a cycle?) at {name_or_path}")
    text, label, folder = _read_source(name_or_path)
    raw = _yaml_load(text, label)
    if not isinstance(raw, dict):
        raise RecipeError(f"{label}: expected a mapping of sections, got {_describe(raw)}")
    if "extends" in raw:
        base_name = raw.pop("extends")
        if not isinstance(base_name, str):
            raise RecipeError(f"{label}: extends: expected a recipe name or path, got {_describe(base_name)}")
        if folder is not None and base_name not in _shipped() and not Path(base_name).is_absolute():
            base_name = str(folder / base_name)
        base, _ = _raw_recipe(base_name, depth + 1)
        raw = _deep_merge(base, raw, label)
    return raw, label


def _deep_merge(base: dict[str, Any], top: dict[str, Any], label: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if key in _SECTIONS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` → ``("a.b", parsed value)``; the value is YAML (``10``, ``0.1``, ``3e-4``, ``null``, ``[0.5, 0.9]``).

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
    value = _yaml_load(value_text, f"--set {key}") if value_text.strip() else None
    if not value_text.strip():
        raise RecipeError(f"--set {key}: empty value (write {key}=null for null)")
    return key, value


def _set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    top_fields = _field_names(Recipe)
    if len(parts) == 1:
        if parts[0] in _SECTIONS:
            raise RecipeError(f"--set {key}: is a section; set one of its keys, e.g. {key}.{_field_names(_SECTIONS[key])[0]}")
        if parts[0] not in top_fields:
            raise RecipeError(f"--set {key}: unknown key; known: {', '.join(top_fields)}")
        _coerce(f"--set {key}", value, _hints(Recipe)[parts[0]])
        raw[parts[0]] = value
        return
    section, name = parts[0], ".".join(parts[1:])
    if section not in _SECTIONS:
        raise RecipeError(f"--set {key}: unknown section {section!r}; known: {', '.join(_SECTIONS)}")
    cls = _SECTIONS[section]
    if name not in _field_names(cls):
        raise RecipeError(f"--set {key}: unknown key; {section} has: {', '.join(_field_names(cls))}")
    _coerce(f"--set {key}", value, _hints(cls)[name])
    current = raw.get(section)
    raw[section] = {**current, name: value} if isinstance(current, dict) else {name: value}


# ----------------------------------------------------------------------------------------------------------------
# Building and validating
# ----------------------------------------------------------------------------------------------------------------


def _check_keys(raw: dict[str, Any], names: list[str], *, prefix: str, known: str) -> None:
    """One-line RecipeError for the first unknown or missing key (``prefix`` is the dotted section)."""
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise RecipeError(f"{prefix}{unknown[0]}: unknown key; {known}")
    missing = [n for n in names if n not in raw]
    if missing:
        raise RecipeError(f"{prefix}{missing[0]}: missing (every key must be set; `extends: paper` fills them in)")


def _build_section(cls: type, section: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{section}: expected a mapping of keys, got {_describe(raw)}")
    names = _field_names(cls)
    _check_keys(raw, names, prefix=f"{section}.", known=f"{section} has: {', '.join(names)}")
    hints = _hints(cls)
    return cls(**{name: _coerce(f"{section}.{name}", raw[name], hints[name]) for name in names})


def _build(raw: dict[str, Any]) -> Recipe:
    names = _field_names(Recipe)
    _check_keys(raw, names, prefix="", known=f"a recipe has: {', '.join(names)} (and extends)")
    hints = _hints(Recipe)
    values: dict[str, Any] = {}
    for name in names:
        if name in _SECTIONS:
            values[name] = _build_section(_SECTIONS[name], name, raw[name])
        else:
            values[name] = _coerce(name, raw[name], hints[name])
    return Recipe(**values)


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise RecipeError(f"{key}: must be a finite number, got {value}")


def _at_least(key: str, value: float, minimum: float) -> None:
    _finite(key, value)
    if value < minimum:
        raise RecipeError(f"{key}: must be >= {minimum}, got {value}")


def _positive(key: str, value: float) -> None:
    _finite(key, value)
    if not value > 0:
        raise RecipeError(f"{key}: must be > 0, got {value}")


def _in_range(key: str, value: float, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    _finite(key, value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise RecipeError(f"{key}: must be in {interval}, got {value}")


def validate(recipe: Recipe) -> Recipe:
    """Range and consistency checks (types are checked when building); returns ``recipe``.

    Strategy names are checked against :func:`~nni_darts_ext.strategies.list_strategies` and dataset names
    against :data:`~nni_darts_ext.data.DATASETS` (both imported here, lazily: they import NNI).
    """
    from .data import DATASETS
    from .strategies import list_strategies

    _at_least("seed", recipe.seed, 0)

    d = recipe.dataset
    if d.name not in DATASETS:
        raise RecipeError(f"dataset.name: unknown dataset {d.name!r}; known: {', '.join(DATASETS)}")
    if d.image_size is not None:
        _at_least("dataset.image_size", d.image_size, 1)
        if d.name == "cifar10" and d.image_size != CIFAR10_IMAGE_SIZE:
            raise RecipeError(
                f"dataset.image_size: CIFAR-10 images are {CIFAR10_IMAGE_SIZE}x{CIFAR10_IMAGE_SIZE}, got {d.image_size}"
            )
    _at_least("dataset.num_workers", d.num_workers, 0)
    if d.max_samples is not None:
        _at_least("dataset.max_samples", d.max_samples, 2)

    for section_name in ("search", "retrain"):
        s = getattr(recipe, section_name)
        key = section_name + "."
        _at_least(key + "cells", s.cells, MIN_NUM_CELLS)
        _at_least(key + "width", s.width, 1)
        _at_least(key + "epochs", s.epochs, 1)
        _at_least(key + "batch_size", s.batch_size, 1)
        _positive(key + "learning_rate", s.learning_rate)
        _in_range(key + "momentum", s.momentum, 0.0, 1.0, low_open=False, high_open=True)
        _at_least(key + "weight_decay", s.weight_decay, 0.0)
        _at_least(key + "eta_min", s.eta_min, 0.0)
        if s.eta_min > s.learning_rate:
            raise RecipeError(f"{key}eta_min: {s.eta_min} is above {key}learning_rate {s.learning_rate}")
        if s.gradient_clip is not None:
            _positive(key + "gradient_clip", s.gradient_clip)

    s = recipe.search
    strategies = list_strategies()
    if s.strategy not in strategies:
        raise RecipeError(f"search.strategy: unknown strategy {s.strategy!r}; known: {', '.join(strategies)}")
    _in_range("search.train_fraction", s.train_fraction, 0.0, 1.0, low_open=True, high_open=True)
    _positive("search.arc_learning_rate", s.arc_learning_rate)
    for i, beta in enumerate(s.arc_betas):
        _in_range(f"search.arc_betas[{i}]", beta, 0.0, 1.0, low_open=False, high_open=True)
    _at_least("search.arc_weight_decay", s.arc_weight_decay, 0.0)
    _at_least("search.warmup_epochs", s.warmup_epochs, 0)
    if s.warmup_epochs >= s.epochs:
        raise RecipeError(
            f"search.warmup_epochs: {s.warmup_epochs} leaves no epoch for the architecture "
            f"(search.epochs is {s.epochs}); lower it or raise search.epochs"
        )
    if s.partial_channels is not None:
        _at_least("search.partial_channels", s.partial_channels, 1)
        if s.strategy != "pc-darts":
            raise RecipeError(
                f"search.partial_channels: only used by strategy 'pc-darts' (strategy is {s.strategy!r}); set it to null"
            )
        if s.width % s.partial_channels:
            raise RecipeError(
                f"search.partial_channels: {s.partial_channels} does not divide search.width {s.width}"
            )

    r = recipe.retrain
    _at_least("retrain.auxiliary_weight", r.auxiliary_weight, 0.0)
    _in_range("retrain.drop_path_prob", r.drop_path_prob, 0.0, 1.0, low_open=False, high_open=True)
    if r.cutout is not None:
        _at_least("retrain.cutout", r.cutout, 1)
        if r.cutout > recipe.image_size:
            raise RecipeError(
                f"retrain.cutout: {r.cutout} is longer than the {recipe.image_size}x{recipe.image_size} images"
            )
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
    raw, label = _raw_recipe(name_or_path)
    for key, value in _override_items(overrides):
        _set_key(raw, key, value)
    try:
        return validate(_build(raw))
    except RecipeError as exc:
        raise RecipeError(f"{label}: {exc}") from None


def apply_overrides(recipe: Recipe, overrides: Iterable[str] | Mapping[str, Any]) -> Recipe:
    """A new, validated recipe with ``overrides`` (as in :func:`load_recipe`) applied to ``recipe``.

    Example::

        tiny = apply_overrides(load_recipe("paper"), {"search.epochs": 1})
    """
    raw = recipe.to_dict()
    for key, value in _override_items(overrides):
        _set_key(raw, key, value)
    return validate(_build(raw))


def _override_items(overrides: Iterable[str] | Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = [overrides]
    return [parse_override(item) for item in overrides]
