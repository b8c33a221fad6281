"""Arch dicts: both input formats, genotypes, files, named cells, random cells and the fixed network."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from nni_darts_ext.arch import (
    DARTS_V1,
    DARTS_V2,
    NAMED_ARCHS,
    NUM_EDGES,
    ArchError,
    Genotype,
    build_model,
    count_parameters,
    edge_difference,
    format_genotype,
    from_genotype,
    load_arch,
    normalize_arch,
    random_arch,
    save_arch,
    to_genotype,
)
from nni_darts_ext.constants import DARTS_NUM_CELLS, DARTS_WIDTH, PRIMITIVES

# Tiny network for every forward pass (CONTRIBUTING.md).
TINY = dict(width=4, num_cells=3)

# quark0/darts cnn/genotypes.py at f276dd3, copied verbatim.
QUARK0_DARTS_V1 = (
    "DARTS_V1 = Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"
)
QUARK0_DARTS_V2 = (
    "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)


def as_ints(arch: dict) -> dict:
    """The tutorial's format: inputs as plain ints."""
    return {key: (value[0] if isinstance(value, list) else value) for key, value in arch.items()}


def canonical_key_order() -> list[str]:
    return [
        f"{cell}/{kind}_{i}_{k}"
        for cell in ("normal", "reduce") for i in range(2, 6) for k in range(2) for kind in ("op", "input")
    ]


# ---------------------------------------------------------------------------------------------------------------
# normalize_arch
# ---------------------------------------------------------------------------------------------------------------


def test_both_input_formats_normalize_to_nni_form(darts_v2_arch):
    from_nni = normalize_arch(darts_v2_arch)
    from_ints = normalize_arch(as_ints(darts_v2_arch))
    assert from_nni == from_ints == darts_v2_arch
    assert list(from_ints) == canonical_key_order()
    assert all(isinstance(from_ints[key], list) and len(from_ints[key]) == 1 for key in from_ints if "/input_" in key)


def test_normalize_orders_keys_and_copies(darts_v2_arch):
    shuffled = dict(reversed(list(as_ints(darts_v2_arch).items())))
    result = normalize_arch(shuffled)
    assert list(result) == canonical_key_order()
    result["normal/input_2_0"].append(99)
    assert normalize_arch(darts_v2_arch)["normal/input_2_0"] == [0]
    assert DARTS_V2["normal/input_2_0"] == [0]


def test_normalize_accepts_tuple_and_numpy_style_ints(darts_v2_arch):
    import numpy as np

    arch = dict(darts_v2_arch, **{"normal/input_2_0": (0,), "normal/input_2_1": np.int64(1)})
    assert normalize_arch(arch) == darts_v2_arch


def _without(arch: dict, *keys: str) -> dict:
    return {k: v for k, v in arch.items() if k not in keys}


REJECTIONS = {
    "list instead of dict": (lambda a: [a], "must be a dict"),
    "string instead of dict": (lambda a: "darts", "got str"),
    "empty dict": (lambda a: {}, "arch dict is empty"),
    "missing node": (
        lambda a: _without(a, "normal/op_3_0", "normal/op_3_1", "normal/input_3_0", "normal/input_3_1"),
        "missing normal/op_3_0, normal/input_3_0, normal/op_3_1, normal/input_3_1",
    ),
    "missing input": (lambda a: _without(a, "reduce/input_4_1"), "missing key reduce/input_4_1"),
    "missing cell": (lambda a: {k: v for k, v in a.items() if k.startswith("normal/")}, "the whole 'reduce' cell"),
    "unknown op": (
        lambda a: dict(a, **{"normal/op_2_0": "conv_3x3"}),
        "normal/op_2_0: unknown op 'conv_3x3' (expected one of " + ", ".join(PRIMITIVES) + ")",
    ),
    "none op": (lambda a: dict(a, **{"reduce/op_5_1": "none"}), "reduce/op_5_1: unknown op 'none'"),
    "op not a string": (lambda a: dict(a, **{"normal/op_2_0": 3}), "normal/op_2_0: op must be a string"),
    "negative input": (
        lambda a: dict(a, **{"normal/input_2_0": -1}),
        "normal/input_2_0: input -1 is out of range (node 2 accepts inputs 0..1)",
    ),
    "input beyond the cell": (
        lambda a: dict(a, **{"reduce/input_5_0": [7]}),
        "reduce/input_5_0: input 7 is out of range (node 5 accepts inputs 0..4)",
    ),
    "forward input": (
        lambda a: dict(a, **{"normal/input_3_1": 5}),
        "normal/input_3_1: input 5 points forward (node 3 accepts inputs 0..2)",
    ),
    "self input": (
        lambda a: dict(a, **{"normal/input_4_0": [4]}),
        "normal/input_4_0: input 4 points forward (node 4 accepts inputs 0..3)",
    ),
    "bool input": (lambda a: dict(a, **{"normal/input_2_0": True}), "normal/input_2_0: input must be an int"),
    "float input": (lambda a: dict(a, **{"normal/input_2_0": 1.0}), "normal/input_2_0: input must be an int"),
    "two-element input list": (lambda a: dict(a, **{"normal/input_2_0": [0, 1]}), "one-element list, got [0, 1]"),
    "wrong cell name": (
        lambda a: dict(_without(a, "reduce/op_2_0"), **{"reduction/op_2_0": "max_pool_3x3"}),
        "'reduction/op_2_0': unknown cell name 'reduction' (expected one of normal, reduce)",
    ),
    "extra node": (lambda a: dict(a, **{"normal/op_6_0": "skip_connect"}), "'normal/op_6_0': unexpected key: node 6"),
    "extra edge": (lambda a: dict(a, **{"normal/input_2_2": [0]}), "'normal/input_2_2': unexpected key: edge 2"),
    "key without cell": (lambda a: dict(a, **{"op_2_0": "skip_connect"}), "'op_2_0': unexpected key"),
    "non-string key": (lambda a: {**a, 3: "skip_connect"}, "key 3 is not a string"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_malformed_arch_is_rejected_naming_the_key(darts_v2_arch, case):
    mutate, fragment = REJECTIONS[case]
    with pytest.raises(ArchError) as info:
        normalize_arch(mutate(darts_v2_arch))
    assert fragment in str(info.value)


def test_all_problems_are_reported_at_once(darts_v2_arch):
    arch = dict(_without(darts_v2_arch, "normal/op_4_1"), **{"normal/input_3_1": 5, "reduce/op_2_0": "none"})
    message = str(pytest.raises(ArchError, normalize_arch, arch).value)
    for fragment in ("missing key normal/op_4_1", "normal/input_3_1: input 5 points forward", "reduce/op_2_0"):
        assert fragment in message
    assert isinstance(pytest.raises(ValueError, normalize_arch, arch).value, ArchError)


# ---------------------------------------------------------------------------------------------------------------
# Named archs
# ---------------------------------------------------------------------------------------------------------------


def test_darts_v2_is_nnis_darts_v2(monkeypatch):
    """Capture the arch that ``DARTS.load_searched_model('darts-v2')`` freezes, without building its 20 cells."""
    from nni_darts_ext._compat import import_nni_quietly

    with import_nni_quietly():
        from nni.nas.hub.pytorch import DARTS

    captured = {}

    def fake_frozen_factory(cls, arch):
        captured["arch"] = arch
        return lambda **kwargs: captured.setdefault("kwargs", kwargs)

    monkeypatch.setattr(DARTS, "frozen_factory", classmethod(fake_frozen_factory))
    DARTS.load_searched_model("darts-v2")
    assert DARTS_V2 == captured["arch"]
    assert captured["kwargs"] == {"width": DARTS_WIDTH, "num_cells": DARTS_NUM_CELLS}
    assert NAMED_ARCHS["darts-v2"] is DARTS_V2


def test_named_archs_match_quark0_genotypes(darts_v2_arch):
    assert DARTS_V2 == darts_v2_arch
    assert DARTS_V2 == from_genotype(QUARK0_DARTS_V2)
    assert DARTS_V1 == from_genotype(QUARK0_DARTS_V1)
    assert NAMED_ARCHS == {"darts-v1": DARTS_V1, "darts-v2": DARTS_V2}
    assert DARTS_V1 != DARTS_V2


# ---------------------------------------------------------------------------------------------------------------
# Genotypes
# ---------------------------------------------------------------------------------------------------------------


def test_genotype_lists_node_edges_in_order(darts_v2_arch):
    genotype = to_genotype(as_ints(darts_v2_arch))
    assert isinstance(genotype, Genotype) and genotype._fields == ("normal", "normal_concat", "reduce", "reduce_concat")
    assert genotype.normal[:4] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
    assert genotype.normal[6:] == [("skip_connect", 0), ("dil_conv_3x3", 2)]  # node 5: op_5_0, op_5_1
    assert genotype.normal_concat == genotype.reduce_concat == [2, 3, 4, 5]
    assert genotype == to_genotype(from_genotype(QUARK0_DARTS_V2))


@pytest.mark.parametrize("arch", [DARTS_V1, DARTS_V2, random_arch(0), random_arch(1)], ids=["v1", "v2", "r0", "r1"])
def test_arch_genotype_text_round_trip(arch):
    text = format_genotype(to_genotype(as_ints(arch)))
    assert text.startswith("Genotype(normal=[(")
    assert from_genotype(text) == arch
    assert from_genotype(to_genotype(arch)) == arch
    assert format_genotype(arch) == text


def test_genotype_text_variants_are_accepted():
    v2 = to_genotype(DARTS_V2)
    with_range = f"Genotype(normal={v2.normal!r}, normal_concat=range(2, 6), reduce={v2.reduce!r}, reduce_concat=range(2, 6))"
    positional = f"genotypes.Genotype({v2.normal!r}, [2, 3, 4, 5], {tuple(v2.reduce)!r}, (2, 3, 4, 5))"
    multiline = QUARK0_DARTS_V2.replace("), (", "),\n    (")
    for text in (with_range, positional, multiline, "\n" + QUARK0_DARTS_V2 + "\n"):
        assert from_genotype(text) == DARTS_V2
    original = Genotype(normal=v2.normal, normal_concat=range(2, 6), reduce=v2.reduce, reduce_concat=range(2, 6))
    assert from_genotype(original) == DARTS_V2


GENOTYPE_REJECTIONS = {
    "concat 4..6": (QUARK0_DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[4, 5, 6]"), "normal_concat must be"),
    "concat range": (QUARK0_DARTS_V2.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=range(2, 7)"), "reduce_concat must be"),
    "seven edges": (QUARK0_DARTS_V2.replace("('dil_conv_3x3', 2)", ""), "got 7 edges"),
    "unknown op": (QUARK0_DARTS_V2.replace("dil_conv_3x3", "none"), "normal/op_5_1: unknown op 'none'"),
    "forward input": (QUARK0_DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)"), "points forward"),
    "not a pair": (QUARK0_DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 2, 3)"), "normal[7] must be an (op, input) pair"),
    "missing field": ("Genotype(normal=[], normal_concat=[2, 3, 4, 5])", "missing field(s) reduce, reduce_concat"),
    "unknown field": (QUARK0_DARTS_V2.replace("reduce_concat=", "concat="), "unknown field 'concat'"),
    "expression": (QUARK0_DARTS_V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 1 + 1)"), "unsupported expression BinOp"),
    "other call": ("print('hello')", "must be a call Genotype("),
    "two statements": (QUARK0_DARTS_V2 + "\n" + QUARK0_DARTS_V2, "found 2 statements"),
    "syntax error": ("Genotype(normal=[", "not genotype text (SyntaxError"),
    "null byte": ("Genotype(\0)", "not genotype text"),
}


@pytest.mark.parametrize("case", list(GENOTYPE_REJECTIONS))
def test_malformed_genotype_is_rejected(case):
    text, fragment = GENOTYPE_REJECTIONS[case]
    with pytest.raises(ArchError) as info:
        from_genotype(text)
    assert fragment in str(info.value)


def test_genotype_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    for text in (
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        f"Genotype(normal=__import__('pathlib').Path({str(marker)!r}).touch(), normal_concat=[], reduce=[], reduce_concat=[])",
    ):
        with pytest.raises(ArchError):
            from_genotype(text)
    assert not marker.exists()


def test_from_genotype_rejects_other_objects():
    with pytest.raises(ArchError, match="expected a Genotype"):
        from_genotype(42)
    with pytest.raises(ArchError, match="expected a Genotype"):
        from_genotype({"normal": []})


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def test_save_writes_nni_form_json_and_load_reads_it_back(tmp_path, darts_v2_arch):
    path = tmp_path / "sub" / "arch.json"
    save_arch(as_ints(darts_v2_arch), path)
    on_disk = json.loads(path.read_text())
    assert on_disk == darts_v2_arch and list(on_disk) == canonical_key_order()
    assert load_arch(path) == darts_v2_arch
    assert [p.name for p in path.parent.iterdir()] == ["arch.json"]  # no temporary file left behind


def test_save_validates_before_writing(tmp_path, darts_v2_arch):
    path = tmp_path / "arch.json"
    with pytest.raises(ArchError, match="normal/input_3_1"):
        save_arch(dict(darts_v2_arch, **{"normal/input_3_1": 5}), path)
    assert not path.exists()


def test_load_accepts_tutorial_ints_and_genotype_text(tmp_path, darts_v2_arch):
    ints = tmp_path / "ints.json"
    ints.write_text(json.dumps(as_ints(darts_v2_arch)))
    genotype = tmp_path / "genotype.txt"
    genotype.write_text(QUARK0_DARTS_V2 + "\n")
    printed = tmp_path / "printed.txt"
    printed.write_text(format_genotype(DARTS_V1))
    assert load_arch(ints) == load_arch(str(genotype)) == darts_v2_arch
    assert load_arch(printed) == DARTS_V1


FILE_REJECTIONS = {
    "duplicate key": (
        '{"normal/op_2_0": "sep_conv_3x3", "normal/op_2_0": "skip_connect"}',
        "duplicate key 'normal/op_2_0'",
    ),
    "empty": ("", "file is empty"),
    "whitespace": ("  \n\n", "file is empty"),
    "garbage": ("hello world, not an arch\n", "neither a JSON arch dict nor Genotype(...) text"),
    "bad json": ('{"normal/op_2_0": ', "not valid JSON"),
    "json list": ("[1, 2, 3]", "must be a dict"),
    "json number": ("3", "must be a dict"),
    "invalid arch": ('{"normal/op_2_0": "conv"}', "normal/op_2_0: unknown op 'conv'"),
    "bad genotype": ("Genotype(normal=[], normal_concat=range(2, 6), reduce=[], reduce_concat=range(2, 6))", "got 0 edges"),
}


@pytest.mark.parametrize("case", list(FILE_REJECTIONS))
def test_malformed_file_is_rejected_naming_it(tmp_path, case):
    content, fragment = FILE_REJECTIONS[case]
    path = tmp_path / f"{case.replace(' ', '_')}.json"
    path.write_text(content)
    with pytest.raises(ArchError) as info:
        load_arch(path)
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_unreadable_and_binary_files_are_rejected(tmp_path):
    binary = tmp_path / "weights.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe" * 10)
    with pytest.raises(ArchError, match=re.escape(f"{binary}: not a text file")):
        load_arch(binary)
    with pytest.raises(ArchError, match=re.escape(f"{tmp_path / 'missing.json'}: cannot read arch file")):
        load_arch(tmp_path / "missing.json")
    with pytest.raises(ArchError, match="cannot read arch file"):
        load_arch(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Random archs
# ---------------------------------------------------------------------------------------------------------------


def test_random_arch_is_seeded_valid_and_uses_distinct_inputs():
    assert random_arch(7) == random_arch(7)
    assert len({json.dumps(random_arch(seed)) for seed in range(20)}) == 20
    for seed in range(20):
        arch = random_arch(seed)
        assert normalize_arch(arch) == arch
        for cell in ("normal", "reduce"):
            for i in range(2, 6):
                assert arch[f"{cell}/input_{i}_0"] != arch[f"{cell}/input_{i}_1"]
    with pytest.raises(TypeError, match="seed"):
        random_arch("7")


def test_random_arch_covers_every_op_and_input():
    archs = [random_arch(seed) for seed in range(60)]
    assert {a[f"normal/op_{i}_{k}"] for a in archs for i in range(2, 6) for k in range(2)} == set(PRIMITIVES)
    assert {a["reduce/input_5_1"][0] for a in archs} == {0, 1, 2, 3, 4}


def test_edge_difference_counts_chosen_edges_per_node():
    # By hand, node by node: normal node 3 (skip 0 vs sep 0: 1), node 5 (sep 0 + skip 2 vs skip 0 + dil 2: 2);
    # reduce node 3 (max 0 vs max 1: 1), node 5 (avg 0 vs max 1: 1); every other node has the same two edges.
    assert edge_difference(DARTS_V1, DARTS_V2) == edge_difference(DARTS_V2, DARTS_V1) == 5
    assert edge_difference(DARTS_V2, format_genotype(to_genotype(DARTS_V2))) == 0  # any arch format
    swapped = dict(DARTS_V2)  # node 4's two edges listed in the other order: the same edges
    for key in ("op", "input"):
        swapped[f"normal/{key}_4_0"], swapped[f"normal/{key}_4_1"] = DARTS_V2[f"normal/{key}_4_1"], DARTS_V2[
            f"normal/{key}_4_0"]
    assert edge_difference(DARTS_V2, swapped) == 0
    assert NUM_EDGES == 16
    assert 0 <= edge_difference(random_arch(0), random_arch(1)) <= NUM_EDGES


# ---------------------------------------------------------------------------------------------------------------
# build_model
# ---------------------------------------------------------------------------------------------------------------


def test_both_formats_build_the_same_network(darts_v2_arch):
    torch.manual_seed(0)
    from_nni = build_model(darts_v2_arch, **TINY)
    torch.manual_seed(0)
    from_ints = build_model(as_ints(darts_v2_arch), **TINY)
    assert type(from_nni).__name__ == "DARTS"
    assert list(from_nni.state_dict()) == list(from_ints.state_dict())
    from_ints.load_state_dict(from_nni.state_dict())
    x = torch.randn(2, 3, 16, 16)
    from_nni.eval(), from_ints.eval()
    with torch.no_grad():
        out = from_nni(x)
        assert out.shape == (2, 10)
        torch.testing.assert_close(out, from_ints(x))
    assert count_parameters(from_nni) == sum(p.numel() for p in from_nni.parameters()) > 0


def test_genotype_and_name_build_too():
    assert list(build_model("darts-v1", **TINY).state_dict()) == list(build_model(to_genotype(DARTS_V1), **TINY).state_dict())


@pytest.mark.parametrize("image_size", [16, 32])
def test_auxiliary_head_in_train_mode(image_size):
    model = build_model(DARTS_V2, auxiliary_loss=True, image_size=image_size, **TINY).train()
    logits, aux = model(torch.randn(2, 3, image_size, image_size))
    assert logits.shape == aux.shape == (2, 10)
    pool = model.auxiliary_head.features[1]
    if image_size == 32:  # NNI's head, untouched
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 5 and pool.stride == 3
    else:
        assert isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size == 2
    assert model.eval()(torch.randn(1, 3, image_size, image_size)).shape == (1, 10)


def test_adaptive_aux_pool_keeps_state_dicts_compatible():
    native = build_model(DARTS_V2, auxiliary_loss=True, **TINY)
    small = build_model(DARTS_V2, auxiliary_loss=True, image_size=16, **TINY)
    assert list(native.state_dict()) == list(small.state_dict())
    small.load_state_dict(native.state_dict())
    # Why the replacement exists: NNI's own head cannot pool the 4x4 map of a 16x16 input.
    with pytest.raises(RuntimeError, match="Output size is too small"):
        native.train()(torch.randn(2, 3, 16, 16))


def test_drop_path_is_wired():
    model = build_model(DARTS_V2, drop_path_prob=0.2, **TINY)
    drop_paths = [m for m in model.modules() if type(m).__name__ == "DropPath"]
    assert drop_paths and all(m.drop_prob == 0.2 for m in drop_paths)
    model.set_drop_path_prob(0.1)
    assert all(m.drop_prob == 0.1 for m in drop_paths)


def test_defaults_are_the_darts_v2_evaluation_network():
    """Width 36, 20 cells: NNI 3.0 (nasnet.py DARTS.load_searched_model) gives 3,349,342 parameters for darts-v2 (built, not run)."""
    assert count_parameters(build_model(DARTS_V2)) == 3_349_342


BAD_ARGUMENTS = [
    (dict(width=0), ValueError, "width must be >= 1"),
    (dict(width=4.0), TypeError, "width must be an int"),
    (dict(width=True), TypeError, "width must be an int"),
    (dict(num_cells=2), ValueError, "num_cells must be >= 3"),
    (dict(num_cells="3"), TypeError, "num_cells must be an int"),
    (dict(drop_path_prob=1.0), ValueError, r"drop_path_prob must be in \[0, 1\)"),
    (dict(drop_path_prob=-0.1), ValueError, "drop_path_prob"),
    (dict(drop_path_prob="0.2"), TypeError, "drop_path_prob must be a float"),
    (dict(auxiliary_loss=1), TypeError, "auxiliary_loss must be a bool"),
    (dict(dataset="mnist"), ValueError, "dataset must be one of 'cifar', 'imagenet'"),
    (dict(image_size=0), ValueError, "image_size must be >= 1"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_ARGUMENTS, ids=[str(b[0]) for b in BAD_ARGUMENTS])
def test_build_model_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_model(DARTS_V2, **{**TINY, **kwargs})


def test_build_model_rejects_bad_arch():
    with pytest.raises(ArchError, match="normal/input_3_1: input 5 points forward"):
        build_model(dict(DARTS_V2, **{"normal/input_3_1": 5}), **TINY)
