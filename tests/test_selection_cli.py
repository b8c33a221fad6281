"""``search --set export.selection=perturbation`` and ``nni-darts select``, end to end at a tiny size."""

from __future__ import annotations

import json

import pytest

from nni_darts_ext.arch import load_arch
from nni_darts_ext.cli import main
from nni_darts_ext.recipe_data import RecipeData

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_selection_cli")]  # one worker: its fixtures run once

TINY = ["dataset.image_size=8", "dataset.max_samples=48", "search.width=4", "search.cells=3", "search.epochs=1",
        "search.batch_size=24"]
THREADS = ["--threads", "1"]
FILES = ("arch.json", "genotype.txt", "cells.png", "selection.json")



@pytest.fixture(scope="module")
def searched(tmp_path_factory, nni_home):
    """One tiny demo search with perturbation selection (no fine-tuning, to stay small)."""
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--recipe", "demo", "--out", str(out), "--quiet", *THREADS, "--set", *TINY,
                 "export.selection=perturbation", "export.tune_epochs=0"]) == 0
    return out


def _read_splits(monkeypatch):  # a MonkeyPatch
    """Record which splits the run builds (``train=False``: the test split, whose labels selection must not read)."""
    seen = []
    original = RecipeData.split

    def split(self, *, train, cutout=None):
        seen.append(train)
        return original(self, train=train, cutout=cutout)

    monkeypatch.setattr(RecipeData, "split", split)
    return seen


def test_search_with_perturbation_selection_writes_arch_and_selection(searched):
    for name in FILES:
        assert (searched / name).is_file(), name
    assert not (searched / "selection_state.pt").exists()
    record = json.loads((searched / "selection.json").read_text())
    assert record["selection"] == "perturbation" and record["tune_epochs"] == 0
    ops = [d for d in record["decisions"] if d["kind"] == "op"]
    nodes = [d for d in record["decisions"] if d["kind"] == "input"]
    assert len(ops) == 2 * 14 and len(nodes) == 2 * 3
    assert all(d["choice"] in d["accuracy_without"] for d in ops)
    arch = load_arch(searched / "arch.json")
    for d in nodes:
        assert sorted(arch[f"{d['cell']}/input_{d['node']}_{n}"][0] for n in range(2)) == d["choice"]
    summary = json.loads((searched / "summary.json").read_text())
    assert summary["selection"] == "perturbation" and summary["selection_record"] == "selection.json"
    assert record["search_seconds"] > 0 and record["selection_seconds"] > 0


def _select_pt(searched, out):
    return main(["select", str(searched), "--selection", "perturbation", "--out", str(out), "--quiet", *THREADS,
                 "--set", "export.tune_epochs=1"])


@pytest.fixture(scope="module")
def selected(searched, tmp_path_factory):
    """``select --selection perturbation`` from the search, with the splits it built."""
    out = tmp_path_factory.mktemp("select") / "pt"
    with pytest.MonkeyPatch.context() as patch:
        seen = _read_splits(patch)
        assert _select_pt(searched, out) == 0
    return out, seen


def test_select_again_from_the_finished_search_never_reading_the_test_split(searched, selected, tmp_path):
    out, seen = selected
    for name in FILES:
        assert (out / name).is_file(), name
    assert seen and all(seen), "the selection built the test split"
    record = json.loads((out / "selection.json").read_text())
    assert record["selection"] == "perturbation" and len(record["decisions"]) == 2 * (14 + 3)
    assert record["from"]["search"] == str(searched)

    # Magnitude from the same checkpoint: the cell the search's own export gave before selecting.
    magnitude = tmp_path / "magnitude"
    assert main(["select", str(searched), "--selection", "magnitude", "--out", str(magnitude), "--quiet",
                 *THREADS]) == 0
    searched_record = json.loads((searched / "selection.json").read_text())
    assert load_arch(magnitude / "arch.json") == searched_record["magnitude_arch"]


@pytest.mark.parametrize("argv, expected", [
    (["select", "{missing}", "--out", "{out}"], "no such folder"),
    (["select", "{searched}", "--out", "{searched}"], "is the search folder"),
    (["select", "{searched}", "--selection", "random", "--out", "{out}"], "--selection"),
    (["search", "--recipe", "demo", "--out", "{out}", "--set", "search.strategy=gdas", "export.selection=perturbation"],
     "'gdas'"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(searched, tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    argv = [a.format(missing=tmp_path / "nope", out=out, searched=searched) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_an_interrupted_select_continues_when_rerun_and_ends_as_an_uninterrupted_one(searched, selected, tmp_path,
                                                                                    monkeypatch):
    from nni_darts_ext.search import perturbation_selection

    out = tmp_path / "pt"
    decide = perturbation_selection._decide_inputs
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C at the first node decision, after every op decision was saved
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(perturbation_selection, "_decide_inputs", interrupted)
    assert _select_pt(searched, out) == 130
    assert calls and (out / "selection_state.pt").is_file() and not (out / "arch.json").exists()
    monkeypatch.setattr(perturbation_selection, "_decide_inputs", decide)
    assert _select_pt(searched, out) == 0
    assert not (out / "selection_state.pt").exists()
    whole = json.loads((selected[0] / "selection.json").read_text())
    resumed = json.loads((out / "selection.json").read_text())
    for key in ("decisions", "order", "supernet_val_accuracy_before", "supernet_val_accuracy_after"):
        assert resumed[key] == whole[key], key
    assert load_arch(out / "arch.json") == load_arch(selected[0] / "arch.json")


def test_a_select_that_fails_while_writing_its_files_continues_when_rerun(searched, selected, tmp_path, monkeypatch):
    """The cell drawing fails after the whole selection: no arch.json (the mark of a finished folder) is left, so
    rerunning the same command writes the folder from the saved selection state."""
    from nni_darts_ext.pipeline import selection as selection_module

    out = tmp_path / "pt"
    draw = selection_module.plot_cells

    def failing(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(selection_module, "plot_cells", failing)
    with pytest.raises(RuntimeError, match="drawing failed"):
        _select_pt(searched, out)
    assert (out / "selection_state.pt").is_file() and not (out / "arch.json").exists()
    monkeypatch.setattr(selection_module, "plot_cells", draw)
    assert _select_pt(searched, out) == 0
    assert not (out / "selection_state.pt").exists()
    assert load_arch(out / "arch.json") == load_arch(selected[0] / "arch.json")
