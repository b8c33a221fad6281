"""Property tests: every arch normalize_arch accepts builds a network; every malformed input raises ArchError only."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nni_darts_ext.arch import (
    ArchError,
    Genotype,
    build_model,
    format_genotype,
    from_genotype,
    load_arch,
    normalize_arch,
    save_arch,
    to_genotype,
)
from nni_darts_ext.constants import PRIMITIVES

CELLS = ("normal", "reduce")
NODES = range(2, 6)
KEYS = [f"{cell}/{kind}_{i}_{k}" for cell in CELLS for i in NODES for k in range(2) for kind in ("op", "input")]
# The machine is shared and slow: no per-example deadline; model building is limited to a few examples.
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUILDS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def valid_archs(draw) -> dict:
    """A valid arch in a random mix of NNI lists and tutorial ints, keys in random order; duplicate inputs allowed."""
    arch = {}
    for cell in CELLS:
        for i in NODES:
            for k in range(2):
                arch[f"{cell}/op_{i}_{k}"] = draw(st.sampled_from(PRIMITIVES))
                source = draw(st.integers(0, i - 1))
                arch[f"{cell}/input_{i}_{k}"] = draw(st.sampled_from([source, [source]]))
    order = draw(st.permutations(list(arch)))
    return {key: arch[key] for key in order}


def node_of(key: str) -> int:
    return int(key.rsplit("_", 2)[1])


@st.composite
def broken_archs(draw) -> dict:
    """A valid arch with one mutation that always makes it invalid."""
    arch = dict(draw(valid_archs()))
    key = draw(st.sampled_from(KEYS))
    kind = draw(st.sampled_from(["remove", "extra key", "bad op", "op type", "input range", "input type", "cell name"]))
    if kind == "remove":
        del arch[key]
    elif kind == "extra key":
        extra = draw(st.text(max_size=20) | st.integers() | st.sampled_from(["normal/op_6_0", "reduce/input_1_0", "x/op_2_0"]))
        assume(extra not in KEYS)
        arch[extra] = draw(json_values)
    elif kind == "bad op":
        op_key = key.replace("input_", "op_")
        arch[op_key] = draw(st.text(max_size=20).filter(lambda s: s not in PRIMITIVES))
    elif kind == "op type":
        arch[key.replace("input_", "op_")] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif kind == "input range":
        input_key = key.replace("op_", "input_")
        value = draw(st.integers(max_value=-1) | st.integers(min_value=node_of(input_key)))
        arch[input_key] = draw(st.sampled_from([value, [value]]))
    elif kind == "input type":
        input_key = key.replace("op_", "input_")
        arch[input_key] = draw(
            json_values.filter(
                lambda v: not (isinstance(v, int) and not isinstance(v, bool))
                and not (isinstance(v, list) and len(v) == 1 and type(v[0]) is int)
            )
        )
    else:
        cell = draw(st.text(max_size=10).filter(lambda s: s not in CELLS))
        arch[cell + key[key.index("/"):]] = arch.pop(key)
    return arch


def assert_arch_error_or_valid(call, *args):
    """``call(*args)`` either returns a valid normalized arch or raises ArchError, never anything else."""
    try:
        result = call(*args)
    except ArchError as exc:
        assert str(exc)
        return None
    assert normalize_arch(result) == result
    return result


# ---------------------------------------------------------------------------------------------------------------
# Accepted archs
# ---------------------------------------------------------------------------------------------------------------


@BUILDS
@given(arch=valid_archs())
def test_every_accepted_arch_builds_and_runs(arch):
    model = build_model(arch, width=4, num_cells=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


@FAST
@given(arch=valid_archs())
def test_accepted_archs_round_trip(arch):
    normal = normalize_arch(arch)
    assert normalize_arch(normal) == normal
    assert list(normal) == KEYS
    assert from_genotype(to_genotype(arch)) == normal
    assert from_genotype(format_genotype(arch)) == normal
    for key in KEYS:
        expected = arch[key] if "/op_" in key else [arch[key]] if isinstance(arch[key], int) else arch[key]
        assert normal[key] == expected


@settings(max_examples=40, deadline=None)
@given(arch=valid_archs())
def test_accepted_archs_survive_save_and_load(arch):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "arch.json"
        save_arch(arch, path)
        assert load_arch(path) == normalize_arch(arch)
        path.write_text(format_genotype(arch))
        assert load_arch(path) == normalize_arch(arch)


# ---------------------------------------------------------------------------------------------------------------
# Rejected input
# ---------------------------------------------------------------------------------------------------------------


@FAST
@given(arch=broken_archs())
def test_broken_archs_raise_arch_error(arch):
    try:
        normalize_arch(arch)
    except ArchError as exc:
        assert str(exc)
    else:
        raise AssertionError(f"accepted a broken arch: {arch!r}")


@FAST
@given(arch=valid_archs(), key=st.sampled_from(KEYS), value=json_values)
def test_any_value_is_accepted_or_rejected_cleanly(arch, key, value):
    assert_arch_error_or_valid(normalize_arch, dict(arch, **{key: value}))


@FAST
@given(value=json_values | st.lists(valid_archs(), max_size=2) | st.tuples(st.integers()))
def test_random_values_are_rejected(value):
    try:
        normalize_arch(value)
    except ArchError:
        return
    raise AssertionError(f"accepted {value!r}")


@FAST
@given(text=st.text(max_size=200))
def test_random_text_is_rejected_by_from_genotype(text):
    assume("Genotype" not in text)
    try:
        from_genotype(text)
    except ArchError:
        return
    raise AssertionError(f"accepted {text!r}")


@FAST
@given(arch=valid_archs(), data=st.data())
def test_mutated_genotype_text_is_accepted_or_rejected_cleanly(arch, data):
    text = format_genotype(arch)
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 12)))
    insert = data.draw(st.text(alphabet="()[],'0123456789 _abcrGegn=\\\n\0", max_size=6))
    assert_arch_error_or_valid(from_genotype, text[:start] + insert + text[end:])


@FAST
@given(
    fields=st.fixed_dictionaries(
        {
            "normal": json_values | st.lists(st.tuples(st.sampled_from(PRIMITIVES), st.integers(-1, 6)), min_size=7, max_size=9),
            "normal_concat": st.sampled_from([range(2, 6), [2, 3, 4, 5], [4, 5, 6], range(2, 10**30), [2, 3, 4, 5.0]]),
            "reduce": json_values | st.lists(st.tuples(st.sampled_from(PRIMITIVES), st.integers(-1, 6)), min_size=8, max_size=8),
            "reduce_concat": json_values,
        }
    )
)
def test_random_genotype_objects_are_accepted_or_rejected_cleanly(fields):
    assert_arch_error_or_valid(from_genotype, Genotype(**fields))


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_files_are_rejected_by_load_arch(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "arch.txt"
        path.write_bytes(content)
        try:
            load_arch(path)
        except ArchError as exc:
            assert str(exc).startswith(f"{path}: ")
            return
    raise AssertionError(f"accepted {content!r}")
