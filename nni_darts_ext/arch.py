"""DARTS architecture dicts: validation, file formats, genotypes, named cells and the fixed network.

An *arch* is the dict NNI 3.0 exports from a DARTS search (``experiment.export_top_models(formatter='dict')``)::

    {'normal/op_2_0': 'sep_conv_3x3', 'normal/input_2_0': [0], ..., 'reduce/input_5_1': [1]}

Nodes ``i = 2..5`` of each cell (``normal``, ``reduce``) take two edges ``k = 0, 1``; edge ``k`` applies
``op_{i}_{k}`` to state ``input_{i}_{k}`` (0 and 1 are the two previous cells, ``2..i-1`` earlier nodes).
NNI's tutorial prints inputs as plain ints; NNI itself only accepts one-element lists.
:func:`normalize_arch` accepts both and returns NNI's form.

The original DARTS code (Liu et al. 2019, https://github.com/quark0/darts, ``cnn/genotypes.py``) writes the same
cell as a :data:`Genotype`; :func:`to_genotype`, :func:`from_genotype` and :func:`format_genotype` convert.
Genotype text is parsed with :mod:`ast` and never evaluated.

Example::

    arch = load_arch("runs/search/arch.json")      # NNI export, tutorial ints or Genotype(...) text
    model = build_model(arch, width=36, num_cells=20, auxiliary_loss=True, drop_path_prob=0.2)
    text = format_genotype(to_genotype(arch))     # "Genotype(normal=[...], ...)"
"""

from __future__ import annotations

import ast
import json
import logging
import numbers
import os
import random
import re
import warnings
from collections import Counter, namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nni_darts_ext.checks import check_choice, check_int, check_optional
from nni_darts_ext.constants import (
    AUX_HEAD_POOLED_SIZE,
    CELL_TYPES,
    DARTS_NUM_CELLS,
    DARTS_WIDTH,
    FIRST_NODE,
    INPUTS_PER_NODE,
    MAX_ARCH_FILE_BYTES,
    MIN_NUM_CELLS,
    NATIVE_IMAGE_SIZE,
    NODES_PER_CELL,
    NUM_CLASSES,
    PRIMITIVES,
)
from nni_darts_ext.errors import ArchError
from nni_darts_ext.io import atomic_write_json

__all__ = [
    "ArchError",
    "normalize_arch",
    "save_arch",
    "load_arch",
    "Genotype",
    "to_genotype",
    "from_genotype",
    "format_genotype",
    "DARTS_V1",
    "DARTS_V2",
    "NAMED_ARCHS",
    "random_arch",
    "NUM_EDGES",
    "edge_difference",
    "build_model",
    "count_parameters",
]

_logger = logging.getLogger(__name__)

# Node indices 2..5 and edge indices 0..1 of a DARTS cell.
_NODES = tuple(range(FIRST_NODE, FIRST_NODE + NODES_PER_CELL))
_EDGES = tuple(range(INPUTS_PER_NODE))
# The concatenated nodes: NNI's DARTS cell (merge_op='all') concatenates every intermediate node.
_CONCAT = list(_NODES)
_KEY_RE = re.compile(r"(?P<kind>op|input)_(?P<node>\d+)_(?P<edge>\d+)")
_DATASETS = tuple(NATIVE_IMAGE_SIZE)


# ----------------------------------------------------------------------------------------------------------------
# Arch dicts
# ----------------------------------------------------------------------------------------------------------------


def _canonical_keys() -> Iterator[tuple[str, str, int, int]]:
    """Yield ``(key, kind, node, edge)`` in canonical order: normal then reduce, nodes 2..5, k 0..1, op first."""
    for cell in CELL_TYPES:
        for node in _NODES:
            for edge in _EDGES:
                for kind in ("op", "input"):
                    yield f"{cell}/{kind}_{node}_{edge}", kind, node, edge


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unexpected_key_message(key: Any) -> str:
    if not isinstance(key, str):
        return f"key {_short(key)} is not a string (keys look like 'normal/op_2_0')"
    cell, sep, rest = key.partition("/")
    if not sep:
        return f"{_short(key)}: unexpected key (keys look like 'normal/op_2_0' or 'reduce/input_5_1')"
    if cell not in CELL_TYPES:
        return f"{_short(key)}: unknown cell name {cell!r} (expected one of {', '.join(CELL_TYPES)})"
    match = _KEY_RE.fullmatch(rest)
    if match and int(match["node"]) not in _NODES:
        nodes = f"{_NODES[0]}..{_NODES[-1]}"
        return f"{_short(key)}: unexpected key: node {match['node']} does not exist (nodes are {nodes})"
    if match and int(match["edge"]) not in _EDGES:
        edges = f"0..{_EDGES[-1]}"
        return f"{_short(key)}: unexpected key: edge {match['edge']} does not exist (each node has edges {edges})"
    return (
        f"{_short(key)}: unexpected key (expected '{cell}/op_{{i}}_{{k}}' or '{cell}/input_{{i}}_{{k}}' "
        f"with i in {_NODES[0]}..{_NODES[-1]} and k in 0..{_EDGES[-1]})"
    )


def _missing_message(missing: list[str]) -> str:
    parts = []
    for cell in CELL_TYPES:
        cell_missing = [key for key in missing if key.startswith(cell + "/")]
        if len(cell_missing) == len(_NODES) * len(_EDGES) * 2:
            parts.append(f"the whole '{cell}' cell")
        else:
            parts.extend(cell_missing)
    return ("missing key " if len(parts) == 1 and "/" in parts[0] else "missing ") + ", ".join(parts)


def _check_op(key: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{key}: op must be a string, got {type(value).__name__} {_short(value)}"
    if value not in PRIMITIVES:
        return f"{key}: unknown op {_short(value)} (expected one of {', '.join(PRIMITIVES)})"
    return None


def _check_input(key: str, node: int, value: Any) -> tuple[int | None, str | None]:
    raw = value
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            return None, f"{key}: input must be an int or a one-element list, got {_short(raw)}"
        value = value[0]
    if not _is_int(value):
        got = f"{type(value).__name__} {_short(raw)}"
        return None, f"{key}: input must be an int or a one-element list of int, got {got}"
    value = int(value)
    accepts = f"node {node} accepts inputs 0..{node - 1}"
    if node <= value <= _NODES[-1]:
        return None, f"{key}: input {value} points forward ({accepts})"
    if not 0 <= value < node:
        return None, f"{key}: input {value} is out of range ({accepts})"
    return value, None


def normalize_arch(arch: Any) -> dict[str, Any]:
    """Validate a DARTS arch dict and return it in NNI 3.0's canonical form.

    Accepts NNI's export (``'normal/input_2_0': [0]``) and the tutorial's ints (``'normal/input_2_0': 0``).
    Returns a new dict with inputs as one-element lists and keys in a stable order (normal then reduce,
    nodes 2..5, edges 0..1, op before input). Two edges of one node may read the same input (NNI builds it;
    DARTS searches never export it).

    Raises:
        ArchError: not a dict, unknown cell name, missing or extra keys, unknown op, an input that is not an
            int, out of range or pointing forward. All problems are reported at once, each naming its key.

    Example::

        >>> normalize_arch({**DARTS_V2, "normal/input_2_0": 0})["normal/input_2_0"]
        [0]
    """
    if not isinstance(arch, dict):
        hint = " (export_top_models returns a list: pass one of its elements)" if isinstance(arch, list) else ""
        raise ArchError(
            f"arch must be a dict of 'cell/op_i_k' and 'cell/input_i_k' keys, got {type(arch).__name__}{hint}"
        )
    if not arch:
        raise ArchError("arch dict is empty (expected 32 keys such as 'normal/op_2_0' and 'normal/input_2_0')")

    expected = {key for key, *_ in _canonical_keys()}
    errors = [_unexpected_key_message(key) for key in arch if key not in expected]
    missing = [key for key, *_ in _canonical_keys() if key not in arch]
    if missing:
        errors.append(_missing_message(missing))

    result: dict[str, Any] = {}
    for key, kind, node, _ in _canonical_keys():
        if key not in arch:
            continue
        if kind == "op":
            error = _check_op(key, arch[key])
            result[key] = arch[key]
        else:
            value, error = _check_input(key, node, arch[key])
            result[key] = [value]
        if error:
            errors.append(error)
    if errors:
        raise ArchError("; ".join(errors))
    return result


def _coerce_arch(arch: Any) -> dict[str, Any]:
    """Normalize an arch dict, a Genotype (or any object with its four fields), genotype text or a named arch."""
    if isinstance(arch, str) and arch in NAMED_ARCHS:
        return normalize_arch(NAMED_ARCHS[arch])
    if isinstance(arch, str) or all(hasattr(arch, field) for field in Genotype._fields):
        return from_genotype(arch)
    return normalize_arch(arch)


# ----------------------------------------------------------------------------------------------------------------
# Genotypes
# ----------------------------------------------------------------------------------------------------------------

#: The original DARTS genotype type (quark0/darts ``cnn/genotypes.py``): ``normal``/``reduce`` list the
#: ``(op, input)`` pairs of node 2's two edges, then node 3's, ..., and ``*_concat`` the concatenated nodes.
Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")


def to_genotype(arch: Any) -> Genotype:
    """Convert an arch dict (either input format) to a :data:`Genotype`; concat lists are ``[2, 3, 4, 5]``.

    Example::

        >>> to_genotype(DARTS_V2).normal[:2]
        [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]
    """
    arch = _coerce_arch(arch)
    cells = {
        cell: [(arch[f"{cell}/op_{i}_{k}"], arch[f"{cell}/input_{i}_{k}"][0]) for i in _NODES for k in _EDGES]
        for cell in CELL_TYPES
    }
    return Genotype(
        normal=cells["normal"], normal_concat=list(_CONCAT), reduce=cells["reduce"], reduce_concat=list(_CONCAT)
    )


def _check_concat(name: str, concat: Any) -> None:
    if isinstance(concat, range) and concat == range(_CONCAT[0], _CONCAT[-1] + 1):
        return
    if isinstance(concat, (list, tuple)) and all(_is_int(v) for v in concat) and list(concat) == _CONCAT:
        return
    raise ArchError(
        f"genotype {name} must be range(2, 6) or [2, 3, 4, 5] (NNI's DARTS cell concatenates all four nodes), "
        f"got {_short(concat)}"
    )


def from_genotype(genotype_or_text: Any) -> dict[str, Any]:
    """Convert a :data:`Genotype` (or its text, as printed by DARTS) to a normalized arch dict.

    Text is parsed with :func:`ast.parse` and never evaluated: ``Genotype(normal=[('sep_conv_3x3', 0), ...],
    normal_concat=range(2, 6), reduce=[...], reduce_concat=[2, 3, 4, 5])``, optionally as ``NAME = Genotype(...)``.

    Raises:
        ArchError: not a genotype, not 8 ``(op, input)`` pairs per cell, concat other than 2..5, or an
            invalid op/input (named by its arch key).

    Example::

        >>> from_genotype("Genotype(normal=[('skip_connect', 0)] * 8, ...)")  # doctest: +SKIP
    """
    if isinstance(genotype_or_text, str):
        try:
            genotype = _parse_genotype_text(genotype_or_text)
        except RecursionError:
            raise ArchError("genotype text nested too deeply") from None
    else:
        genotype = genotype_or_text
    if not all(hasattr(genotype, field) for field in Genotype._fields):
        raise ArchError(
            f"expected a Genotype (fields {', '.join(Genotype._fields)}) or its text, got {type(genotype).__name__}"
        )
    arch: dict[str, Any] = {}
    for cell in CELL_TYPES:
        edges = getattr(genotype, cell)
        _check_concat(f"{cell}_concat", getattr(genotype, f"{cell}_concat"))
        expected = len(_NODES) * len(_EDGES)
        if not isinstance(edges, (list, tuple)) or len(edges) != expected:
            got = f"{len(edges)} edges" if isinstance(edges, (list, tuple)) else type(edges).__name__
            raise ArchError(
                f"genotype {cell} must list {expected} (op, input) pairs "
                f"(two per node {_NODES[0]}..{_NODES[-1]}), got {got}"
            )
        for position, pair in enumerate(edges):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ArchError(f"genotype {cell}[{position}] must be an (op, input) pair, got {_short(pair)}")
            node, edge = divmod(position, len(_EDGES))
            node += FIRST_NODE
            arch[f"{cell}/op_{node}_{edge}"], arch[f"{cell}/input_{node}_{edge}"] = pair
    try:
        return normalize_arch(arch)
    except ArchError as exc:
        raise ArchError(f"genotype: {exc}") from None


def format_genotype(genotype: Any) -> str:
    """Return the one-line text form of a genotype (or arch dict), which :func:`from_genotype` reads back.

    Example::

        >>> format_genotype(DARTS_V2)[:45]
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_c"
    """
    return repr(to_genotype(_coerce_arch(genotype)))


def _literal(node: ast.AST, where: str) -> Any:
    """Evaluate the few literal forms genotype text uses: str/int constants, lists, tuples, ``range(a, b)``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):  # bool is an int here; checked later
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and _is_int(node.operand.value)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.List):
        return [_literal(item, where) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item, where) for item in node.elts)
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "range"
        and not node.keywords
        and 1 <= len(node.args) <= 3
    ):
        args = [_literal(arg, where) for arg in node.args]
        if all(_is_int(arg) for arg in args):
            return range(*args)
    line = getattr(node, "lineno", "?")
    raise ArchError(f"genotype text: unsupported expression {type(node).__name__} in {where} (line {line})")


def _parse_genotype_text(text: str) -> Genotype:
    """Parse ``Genotype(...)`` text without evaluating it."""
    try:
        with warnings.catch_warnings():  # e.g. "invalid escape sequence" in arbitrary text
            warnings.simplefilter("ignore")
            module = ast.parse(text, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ArchError(f"not genotype text ({type(exc).__name__}: {_short(str(exc), 120)})") from None
    if len(module.body) != 1:
        raise ArchError(f"genotype text must hold one Genotype(...) expression, found {len(module.body)} statements")
    statement = module.body[0]
    if isinstance(statement, ast.Expr):
        call = statement.value
    elif (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        call = statement.value
    else:
        raise ArchError(
            f"genotype text must be Genotype(...) or NAME = Genotype(...), found {type(statement).__name__}"
        )
    func = getattr(call, "func", None)
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if not isinstance(call, ast.Call) or name != "Genotype":
        raise ArchError(
            "genotype text must be a call Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)"
        )
    if any(isinstance(arg, ast.Starred) for arg in call.args) or any(k.arg is None for k in call.keywords):
        raise ArchError("genotype text: *args and **kwargs are not supported; write the four fields out")
    if len(call.args) > len(Genotype._fields):
        raise ArchError(
            f"genotype text: Genotype takes {len(Genotype._fields)} fields, got {len(call.args)} positional arguments"
        )
    fields: dict[str, Any] = {}
    for field, arg in zip(Genotype._fields, call.args, strict=False):
        fields[field] = _literal(arg, field)
    for keyword in call.keywords:
        if keyword.arg not in Genotype._fields:
            raise ArchError(f"genotype text: unknown field {keyword.arg!r} (fields are {', '.join(Genotype._fields)})")
        if keyword.arg in fields:
            raise ArchError(f"genotype text: field {keyword.arg!r} given twice")
        fields[keyword.arg] = _literal(keyword.value, keyword.arg)
    missing = [field for field in Genotype._fields if field not in fields]
    if missing:
        raise ArchError(f"genotype text: missing field(s) {', '.join(missing)}")
    return Genotype(**fields)


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ArchError(f"duplicate key {key!r}")
        result[key] = value
    return result


def save_arch(arch: Any, path: str | os.PathLike[str]) -> None:
    """Validate ``arch`` (either format, or a Genotype) and write it atomically as NNI-form JSON.

    Example::

        save_arch(exported_arch, "runs/search/arch.json")
    """
    atomic_write_json(path, _coerce_arch(arch))


def load_arch(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an arch file: a JSON arch dict (either input format) or genotype text; returns the normalized arch.

    JSON is parsed with duplicate keys rejected; genotype text with :func:`ast.parse` (never ``eval``).

    Raises:
        ArchError: unreadable, empty, too large, neither JSON nor genotype text, or an invalid arch; the
            message starts with the file name.

    Example::

        arch = load_arch("runs/search/arch.json")
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_ARCH_FILE_BYTES:
            raise ArchError(f"{path}: file is {size} bytes, larger than an arch file can be ({MAX_ARCH_FILE_BYTES})")
        data = path.read_bytes()
    except OSError as exc:
        raise ArchError(f"{path}: cannot read arch file ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArchError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise ArchError(f"{path}: file is empty (expected a JSON arch dict or Genotype(...) text)")
    try:
        return _parse_arch_text(text)
    except ArchError as exc:
        raise ArchError(f"{path}: {exc}") from None


def _parse_arch_text(text: str) -> dict[str, Any]:
    """JSON arch dict (duplicate keys rejected) or, failing JSON, genotype text."""
    try:
        return normalize_arch(json.loads(text, object_pairs_hook=_reject_duplicate_keys))
    except json.JSONDecodeError as exc:
        json_error = f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except RecursionError:
        raise ArchError("JSON nested too deeply to be an arch dict") from None
    if text.lstrip()[:1] in ("{", "[", '"'):
        raise ArchError(json_error)
    if not re.search(r"\bGenotype\s*\(", text):
        raise ArchError(f"neither a JSON arch dict nor Genotype(...) text ({json_error})")
    return from_genotype(text)


# ----------------------------------------------------------------------------------------------------------------
# Named and random architectures
# ----------------------------------------------------------------------------------------------------------------

# DARTS (second order), CIFAR-10: the cell of NNI's `DARTS.load_searched_model('darts-v2')` (nasnet.py), equal to
# quark0/darts cnn/genotypes.py DARTS_V2.
DARTS_V2: dict[str, Any] = from_genotype(
    Genotype(
        normal=[
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2),
        ],
        normal_concat=[2, 3, 4, 5],
        reduce=[
            ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1),
        ],
        reduce_concat=[2, 3, 4, 5],
    )
)

# DARTS (first order), CIFAR-10: quark0/darts cnn/genotypes.py DARTS_V1 (commit f276dd3).
DARTS_V1: dict[str, Any] = from_genotype(
    Genotype(
        normal=[
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2),
        ],
        normal_concat=[2, 3, 4, 5],
        reduce=[
            ("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0),
        ],
        reduce_concat=[2, 3, 4, 5],
    )
)

#: Published cells by name ('darts-v2' is NNI's name). The values are shared: copy before mutating.
NAMED_ARCHS: dict[str, dict[str, Any]] = {"darts-v1": DARTS_V1, "darts-v2": DARTS_V2}


def random_arch(seed: int) -> dict[str, Any]:
    """A uniformly random valid cell pair: each node reads two distinct earlier states, each edge a random op.

    Drawn with ``random.Random(seed)``, so the same seed gives the same arch on every platform.

    Example::

        >>> random_arch(0) == random_arch(0)
        True
    """
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = random.Random(int(seed))
    arch: dict[str, Any] = {}
    for cell in CELL_TYPES:
        for node in _NODES:
            inputs = rng.sample(range(node), len(_EDGES))
            for edge, source in zip(_EDGES, inputs, strict=False):
                arch[f"{cell}/op_{node}_{edge}"] = rng.choice(PRIMITIVES)
                arch[f"{cell}/input_{node}_{edge}"] = [source]
    return normalize_arch(arch)


#: Chosen edges of an architecture: two per intermediate node, four nodes, two cells (16).
NUM_EDGES = len(CELL_TYPES) * NODES_PER_CELL * INPUTS_PER_NODE


def edge_difference(a: Any, b: Any) -> int:
    """How many of ``a``'s chosen ``(input, op)`` edges ``b`` does not choose at the same node, out of
    :data:`NUM_EDGES`; the order of a node's two edges does not matter, nor the arch format (dict, genotype, name).
    ``NUM_EDGES - edge_difference(a, b)`` edges agree.

    Example::

        >>> edge_difference(DARTS_V2, DARTS_V2), edge_difference(DARTS_V1, DARTS_V2)
        (0, 5)
    """

    def edges(arch: dict[str, Any]) -> dict[tuple[str, int], Counter]:
        return {(cell, node): Counter((arch[f"{cell}/input_{node}_{k}"][0], arch[f"{cell}/op_{node}_{k}"])
                                      for k in _EDGES)
                for cell in CELL_TYPES for node in _NODES}

    ea, eb = edges(_coerce_arch(a)), edges(_coerce_arch(b))
    return sum(sum((ea[node] - eb[node]).values()) for node in ea)


# ----------------------------------------------------------------------------------------------------------------
# The fixed network
# ----------------------------------------------------------------------------------------------------------------


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def build_model(
    arch: Any,
    width: int = DARTS_WIDTH,
    num_cells: int = DARTS_NUM_CELLS,
    auxiliary_loss: bool = False,
    drop_path_prob: float = 0.0,
    dataset: str = "cifar",
    image_size: int | None = None,
    *,
    num_classes: int = NUM_CLASSES,
    in_channels: int = 3,
    stem: str | None = None,
):
    """Build NNI's fixed DARTS network (``nni.nas.hub.pytorch.DARTS``) for ``arch``, for ``num_classes`` classes of
    ``in_channels``-channel images (:class:`~nni_darts_ext.space.DartsSpace`).

    ``arch`` is an arch dict in either format (or a Genotype, its text, or a name in :data:`NAMED_ARCHS`);
    the model is ``DartsSpace.frozen_factory(arch)(width=..., num_cells=..., dataset=..., auxiliary_loss=...,
    drop_path_prob=..., num_classes=..., in_channels=...)``, a ``DARTS`` instance whose ``set_drop_path_prob``
    schedules drop-path. ``stem`` (``"cifar"`` or ``"imagenet"``) names NNI's stem; ``None`` takes ``dataset``
    (NNI's name for it, kept for older callers). With NNI's shape (3 channels; 10 classes for
    the cifar stem, 1000 for imagenet) the net is NNI's own ``DARTS``.
    When ``image_size`` is given it must be at least :func:`~nni_darts_ext.space.min_image_size` of the stem.
    NNI splits ``num_cells`` over 3 stages (the 2nd and 3rd start with a reduction cell), so at least 3.

    NNI's auxiliary head pools with ``AvgPool2d(5, stride=3)`` (cifar; ``stride=2`` for imagenet), which needs
    the 8x8 map of a 32x32 input (7x7 of 224x224). When ``image_size`` is given and differs from the
    dataset's native size, that one layer is replaced by ``nn.AdaptiveAvgPool2d(2)``: same 2x2 output, no
    parameters, so state dicts stay interchangeable. With ``image_size`` None or native, the net is NNI's.

    Raises:
        ArchError: invalid arch. TypeError / ValueError: a bad argument, named.

    Example::

        model = build_model(DARTS_V2, width=16, num_cells=8, auxiliary_loss=True, image_size=16)
    """
    _check_positive_int("width", width)
    _check_positive_int("num_cells", num_cells, MIN_NUM_CELLS)
    if not isinstance(auxiliary_loss, bool):
        raise TypeError(f"auxiliary_loss must be a bool, got {type(auxiliary_loss).__name__}")
    if not isinstance(drop_path_prob, numbers.Real) or isinstance(drop_path_prob, bool):
        raise TypeError(f"drop_path_prob must be a float, got {type(drop_path_prob).__name__}")
    if not 0.0 <= drop_path_prob < 1.0:
        raise ValueError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")
    if dataset not in _DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(map(repr, _DATASETS))}, got {dataset!r}")
    num_classes = check_int("num_classes", num_classes, minimum=2)
    in_channels = check_int("in_channels", in_channels, minimum=1)
    dataset = check_optional(check_choice, "stem", stem, _DATASETS) or dataset
    if image_size is not None:
        _check_positive_int("image_size", image_size)
    arch = _coerce_arch(arch)

    from torch import nn

    from .space import DARTS, DartsSpace, check_image_size, nni_shaped

    if image_size is not None:
        check_image_size(image_size, dataset)
    shape = {} if nni_shaped(dataset, num_classes, in_channels) else {"num_classes": num_classes,
                                                                      "in_channels": in_channels}
    model = (DARTS if not shape else DartsSpace).frozen_factory(arch)(
        width=int(width),
        num_cells=int(num_cells),
        dataset=dataset,
        auxiliary_loss=auxiliary_loss,
        drop_path_prob=float(drop_path_prob),
        **shape,
    )
    if auxiliary_loss and image_size is not None and image_size != NATIVE_IMAGE_SIZE[dataset]:
        features = model.auxiliary_head.features
        pool_index = next(i for i, layer in enumerate(features) if isinstance(layer, nn.AvgPool2d))
        features[pool_index] = nn.AdaptiveAvgPool2d(AUX_HEAD_POOLED_SIZE)
        _logger.debug(
            "auxiliary head pools adaptively to %d for %dx%d input", AUX_HEAD_POOLED_SIZE, image_size, image_size
        )
    return model


def count_parameters(model) -> int:
    """Number of trainable parameters (the auxiliary head included when present).

    Example::

        >>> count_parameters(build_model(DARTS_V2))  # doctest: +SKIP
        3349342
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
