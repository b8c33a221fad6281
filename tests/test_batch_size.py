"""``batch_size: auto``: the search for the largest batch under a memory limit (against a known peak curve), size
parsing, the linear learning-rate rule, and the CLI end to end (a real trial step in a child process)."""

from __future__ import annotations

import json

import pytest
import yaml

from nni_darts_ext.batch_size import find_batch_size, parse_memory_size, scaled_learning_rate
from nni_darts_ext.cli import main
from nni_darts_ext.errors import RecipeError, UsageError
from nni_darts_ext.recipes import load_recipe


def _linear(base, per_sample, *, oom_from=None):
    """A trial whose step peaks at ``base + per_sample * batch`` (``None``: out of memory from ``oom_from``)."""
    calls = []

    def trial(sizes, limit):
        calls.append(list(sizes))
        peaks = []
        for size in sizes:
            peak = None if oom_from is not None and size >= oom_from else base + per_sample * size
            peaks.append(peak)
            if peak is None or peak > limit:
                break
        return peaks

    return trial, calls


@pytest.mark.parametrize("limit, cap, expected", [(2000, 64, 10), (1200, 64, 2), (10**9, 48, 48), (3500, 64, 25)])
def test_the_largest_batch_under_the_limit_is_found(limit, cap, expected):
    trial, calls = _linear(1000, 100)
    found = find_batch_size(trial, limit=limit, cap=cap)
    assert found.batch_size == expected and found.peak == 1000 + 100 * expected <= limit
    assert calls[0] == sorted(calls[0]) and calls[0][0] == 2  # one child measures ascending batches, from 2
    assert all(len(c) == 1 for c in calls[1:])  # binary-search probes: one fresh child each
    assert all((p is not None and p <= limit) == (b <= expected) for b, p in found.trials)


def test_out_of_memory_counts_as_over_the_limit():
    trial, _ = _linear(1000, 1, oom_from=13)
    assert find_batch_size(trial, limit=10**9, cap=64).batch_size == 12


def test_a_limit_below_the_smallest_batch_is_refused_in_one_line():
    trial, _ = _linear(1000, 100)
    with pytest.raises(UsageError, match=r"--memory-limit .*even batch 2 does not fit") as error:
        find_batch_size(trial, limit=1150, cap=64)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text, size", [("4GiB", 4 * 2**30), ("800MB", 800 * 10**6), ("1.5G", int(1.5 * 2**30)),
                                        ("123", 123), ("64 kib", 64 * 1024)])
def test_memory_sizes(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("text", ["", "4 GiBs", "-1GB", "0", "lots"])
def test_bad_memory_sizes_name_the_option(text):
    with pytest.raises(UsageError, match="--memory-limit"):
        parse_memory_size(text)


def test_linear_learning_rate_rule():
    assert scaled_learning_rate(0.025, 128, 64) == pytest.approx(0.05)


def test_recipes_take_auto_and_refuse_other_words():
    assert load_recipe("demo", ["search.batch_size=auto", "retrain.batch_size=auto"]).search.batch_size == "auto"
    with pytest.raises(RecipeError, match="search.batch_size"):
        load_recipe("demo", ["search.batch_size=big"])
    with pytest.raises(RecipeError, match="retrain.checkpointing"):
        load_recipe("demo", ["retrain.checkpointing=edges"])


TINY = ["dataset.max_samples=32", "search.width=4", "search.cells=3", "search.epochs=1", "search.batch_size=auto"]


@pytest.mark.e2e
def test_cli_search_finds_a_batch_writes_it_and_scales_the_learning_rate(tmp_path):
    out = tmp_path / "s"
    assert main(["search", "--out", str(out), "--recipe", "demo", "--quiet", "--threads", "1", "--memory-limit",
                 "64GiB", "--scale-lr", "--set", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["batch_size"] == 16  # the cap: half of the 32 images is the search's training split
    found = summary["batch_size_found_by"]
    assert found["limit_bytes"] == 64 * 2**30 and [b for b, _ in found["trials"]] == [2, 4, 8, 16]
    assert all(peak is not None and 0 < peak <= found["limit_bytes"] for _, peak in found["trials"])
    config = yaml.safe_load((out / "config.yaml").read_text())["search"]
    assert config["batch_size"] == 16 and config["learning_rate"] == pytest.approx(0.05 * 16 / 64)


@pytest.mark.e2e
def test_cli_refuses_a_limit_too_small_for_the_smallest_batch(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["search", "--out", str(out), "--recipe", "demo", "--quiet", "--threads", "1", "--memory-limit",
                 "1MB", "--set", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "even batch 2 does not fit" in err
    assert not (out / "summary.json").exists()


@pytest.mark.e2e
def test_cli_retrain_finds_a_global_batch_with_checkpointed_cells(tmp_path):
    out = tmp_path / "r"
    assert main(["retrain", "--arch", "darts-v2", "--out", str(out), "--recipe", "demo", "--quiet", "--threads", "1",
                 "--memory-limit", "64GiB", "--set", "dataset.max_samples=32", "retrain.width=4", "retrain.cells=3",
                 "retrain.epochs=1", "retrain.batch_size=auto", "retrain.checkpointing=cells",
                 "retrain.auxiliary_weight=0.4"]) == 0  # the auxiliary head's 1x1 BatchNorm needs batch >= 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["batch_size"] == summary["global_batch_size"] == 32  # the cap: the 32 training images
    assert summary["batch_size_found_by"]["learning_rate_rule"] == "unchanged (no --scale-lr)"
    assert yaml.safe_load((out / "config.yaml").read_text())["retrain"]["learning_rate"] == 0.025
