"""Search under a budget: cost tables against the fixed net, the expected cost by hand, the hinge penalty and its
gradient, a cost term on every preset, the export-limit rule and its refusals."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from nni_darts_ext._compat import import_nni_quietly
from nni_darts_ext.arch import build_model, load_arch, normalize_arch, random_arch
from nni_darts_ext.constants import FIRST_NODE, INPUTS_PER_NODE
from nni_darts_ext.errors import ArgumentTypeError, ArgumentValueError, BudgetError, RecipeError
from nni_darts_ext.pipeline.budget import Budget, net_costs
from nni_darts_ext.profile import count_macs, count_params
from nni_darts_ext.recipes import load_recipe
from nni_darts_ext.search import darts_strategy, list_strategies
from nni_darts_ext.search.cells import MixedCell
from nni_darts_ext.search.cost import ExpectedCost, build_cost_table, cell_weights, fit_to_limit
from nni_darts_ext.search.progressive import Stage

with import_nni_quietly():
    from nni.nas.hub.pytorch import DARTS as DartsSpace

from test_search_variants import CELLS, IMAGE, WIDTH, _darts_search  # noqa: E402 (the tiny search of every preset)

pytestmark = pytest.mark.xdist_group("test_budget")  # one worker: its module fixtures (a CLI search) run once

SMALL_STAGES = (Stage(num_cells=CELLS, ops_kept=5, skip_dropout=0.1), Stage(num_cells=CELLS, ops_kept=3,
                                                                               skip_dropout=0.2))


@pytest.fixture(scope="module")
def macs():
    return build_cost_table("macs", width=WIDTH, num_cells=CELLS, image_size=IMAGE)


@pytest.fixture(scope="module")
def params():
    return build_cost_table("params", width=WIDTH, num_cells=CELLS, image_size=IMAGE)


def _supernet(name="first-order", **overrides):
    torch.manual_seed(0)
    return darts_strategy(name, **overrides).mutate_model(DartsSpace(width=WIDTH, num_cells=CELLS, dataset="cifar"))


class _Search:
    """The SearchState of a bare supernet (what a loss term reads)."""

    def __init__(self, net):
        self.net = net
        self.mixing = next(m for m in net.modules() if isinstance(m, MixedCell)).mixing

    def mixed_cells(self):
        return [m for m in self.net.modules() if isinstance(m, MixedCell)]

    def op_alphas(self):
        return [p for n, p in self.net.named_parameters() if "_arch_alpha" in n]

    def arch_parameters(self):
        return self.op_alphas()


@pytest.mark.parametrize("seed", [0, 1])
def test_tables_give_the_fixed_nets_cost_exactly(macs, params, seed):
    arch = random_arch(seed)
    net = build_model(arch, width=WIDTH, num_cells=CELLS, image_size=IMAGE)
    assert macs.cost_of(arch) == count_macs(net, (1, 3, IMAGE, IMAGE))
    assert params.cost_of(arch) == count_params(net)


def test_tables_follow_the_datas_shape():
    """Own data: 2 classes of 1-channel images, and the imagenet stem at 64 px, give the built net's cost."""
    arch = random_arch(5)
    for shape in ({"num_classes": 2, "in_channels": 1, "image_size": 8, "stem": None},
                  {"num_classes": 3, "in_channels": 3, "image_size": 64, "stem": "imagenet"}):
        size = shape["image_size"]
        net = build_model(arch, width=WIDTH, num_cells=CELLS, **shape)
        params = build_cost_table("params", width=WIDTH, num_cells=CELLS, **shape)
        macs = build_cost_table("macs", width=WIDTH, num_cells=CELLS, **shape)
        assert params.cost_of(arch) == count_params(net)
        assert macs.cost_of(arch) == count_macs(net, (1, shape["in_channels"], size, size))


def test_cheapest_cell_is_the_lowest_cost(macs):
    cheapest, arch = macs.cheapest()
    assert cheapest == macs.cost_of(arch)
    assert all(macs.cost_of(random_arch(seed)) >= cheapest for seed in range(5))
    normalize_arch(arch)  # a valid NNI arch dict


def test_expected_cost_by_hand(macs):
    net = _supernet()
    search = _Search(net)
    term = ExpectedCost(macs, target=1.0)
    with torch.no_grad():
        for alpha in search.op_alphas():
            alpha.zero_()
    # Uniform weights over the 7 ops (NNI's trailing `none` dropped, the rest renormalised): per node
    # k/n * sum over inputs of the ops' mean cost.
    by_hand = macs.fixed
    for nodes in macs.ops.values():
        for inputs in nodes:
            by_hand += INPUTS_PER_NODE / len(inputs) * sum(sum(c.values()) / len(c) for c in inputs)
    assert float(term.expected(search).detach()) == pytest.approx(by_hand, rel=1e-5)
    # One op dominating every edge: k/n * sum over inputs of that op's cost.
    cell = search.mixed_cells()[0]
    sep = cell.op_names.index("sep_conv_3x3")
    with torch.no_grad():
        for alpha in search.op_alphas():
            alpha[sep] = 50.0
    by_hand = macs.fixed + sum(INPUTS_PER_NODE / len(inputs) * sum(c["sep_conv_3x3"] for c in inputs)
                               for nodes in macs.ops.values() for inputs in nodes)
    assert float(term.expected(search).detach()) == pytest.approx(by_hand, rel=1e-5)


def test_penalty_is_zero_below_the_target_and_the_hinge_above(macs):
    search = _Search(_supernet())
    expected = float(ExpectedCost(macs, target=1.0).expected(search).detach())
    below = ExpectedCost(macs, target=2 * expected, weight=3.0)
    assert float(below.arch_loss(search, epoch=0, max_epochs=1)) == 0.0
    above = ExpectedCost(macs, target=expected / 2, weight=3.0)
    assert float(above.arch_loss(search, epoch=0, max_epochs=1)) == pytest.approx(3.0 * (2 - 1), rel=1e-5)
    assert above.last == pytest.approx(expected, rel=1e-6)


def test_gradient_reaches_the_alphas_and_favours_cheap_ops(macs):
    search = _Search(_supernet())
    term = ExpectedCost(macs, target=1.0)
    term.arch_loss(search, epoch=0, max_epochs=1).backward()
    cell = search.mixed_cells()[0]
    sep5, skip = cell.op_names.index("sep_conv_5x5"), cell.op_names.index("skip_connect")
    for alpha in search.op_alphas():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0
        assert alpha.grad[sep5] > alpha.grad[skip]  # descent lowers the costly op's logit more


def test_expected_cost_refuses_bad_arguments(macs):
    with pytest.raises(ArgumentValueError) as error:
        ExpectedCost(macs, target=0.0)
    assert error.value.argument == "target"
    with pytest.raises(ArgumentTypeError) as error:
        darts_strategy("first-order", cost=object())
    assert error.value.argument == "cost"


@pytest.mark.parametrize("name", list_strategies())
def test_every_preset_searches_with_a_cost_term(name, macs):
    overrides = {"stages": SMALL_STAGES} if name == "p-darts" else {}
    cost = ExpectedCost(macs, target=macs.cheapest()[0], weight=1.0)
    strategy = _darts_search(darts_strategy(name, warmup_epochs=0, cost=cost, **overrides))
    assert strategy.oneshot_module.cost is cost
    assert cost.last is not None and math.isfinite(cost.last) and cost.last > macs.fixed
    arch = normalize_arch(next(iter(strategy.list_models())).sample)
    assert len(arch) == 32


def _weights(net):
    with torch.no_grad():
        for alpha in _Search(net).op_alphas():
            alpha.copy_(torch.randn_like(alpha))
    return cell_weights(_Search(net).mixed_cells())


def _best_arch(weights):
    """Per node the two inputs with the strongest op (what the unconstrained export keeps)."""
    arch = {}
    for label, nodes in weights.items():
        for pos, w in enumerate(nodes):
            best, ops = w.max(-1)
            for n, j in enumerate(best.argsort(descending=True)[:INPUTS_PER_NODE].tolist()):
                arch[f"{label}/op_{FIRST_NODE + pos}_{n}"] = list(macs_names)[int(ops[j])]
                arch[f"{label}/input_{FIRST_NODE + pos}_{n}"] = [j]
    return arch


macs_names = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
              "dil_conv_5x5")


def test_export_limit_picks_a_fitting_cell_and_refuses_the_impossible(params):
    net = _supernet()
    assert tuple(_Search(net).mixed_cells()[0].op_names) == macs_names
    weights = _weights(net)
    arch = _best_arch(weights)
    cheapest = params.cheapest()[0]
    assert fit_to_limit(arch, weights, params, params.cost_of(arch), key="export.max_params") == arch  # fits
    limit = cheapest + 0.3 * (params.cost_of(arch) - cheapest)
    fitted = fit_to_limit(arch, weights, params, limit, key="export.max_params")
    assert params.cost_of(fitted) <= limit
    normalize_arch(fitted)
    assert fit_to_limit(arch, weights, params, cheapest, key="export.max_params") is not None
    with pytest.raises(BudgetError) as error:
        fit_to_limit(arch, weights, params, cheapest - 1, key="export.max_params")
    assert error.value.key == "export.max_params" and error.value.cheapest == cheapest
    assert f"{int(cheapest)} params" in str(error.value) and "\n" not in str(error.value)


def test_recipe_keys_build_the_budget():
    tiny = ["dataset.image_size=8", f"retrain.width={WIDTH}", f"retrain.cells={CELLS}"]
    recipe = load_recipe("demo", [*tiny, "search.cost={metric: params, target: 1.0e+9, weight: 2.0}",
                                  "export.max_macs=1.0e+9"])
    budget = Budget.from_recipe(recipe)
    assert budget.cost is not None and budget.cost.weight == 2.0 and budget.cost.metric == "params"
    assert sorted(key for _, _, key in budget.limits) == ["export.max_macs", "search.cost.target"]
    with pytest.raises(BudgetError, match=r"export.max_params: 5 is below the cheapest possible cell \(\d+ params"):
        Budget.from_recipe(load_recipe("demo", [*tiny, "export.max_params=5"]))
    # A search target below the cheapest cell is aimed at: the export keeps the cheapest cells, the report says so.
    low = Budget.from_recipe(load_recipe("demo", [*tiny, "search.cost={metric: params, target: 10}"]))
    (table, limit, key), = low.limits
    cheapest, arch = table.cheapest()
    assert key == "search.cost.target" and limit == cheapest
    assert low.report(arch)[key] == {"metric": "params", "limit": 10.0, "value": cheapest, "within": False,
                                     "export_limit": cheapest}
    with pytest.raises(RecipeError, match="search.cost.metric"):
        load_recipe("demo", ["search.cost={metric: flops, target: 1}"])
    assert load_recipe("demo").search.cost is None  # default: accuracy alone


def test_net_costs_report_the_three_figures():
    net = build_model(random_arch(0), width=WIDTH, num_cells=CELLS, image_size=IMAGE)
    costs = net_costs(net, IMAGE, batch_size=2, repeats=1)
    assert costs["macs"] == count_macs(net, (1, 3, IMAGE, IMAGE)) and costs["params"] == count_params(net)
    assert costs["latency_ms"] > 0


# ------------------------------------------------------------------------------------------------- the CLI (e2e)
TINY = ["dataset.image_size=8", "dataset.max_samples=64", "search.width=4", "search.cells=3", "search.epochs=1",
        "search.batch_size=16", "search.arc_learning_rate=0.05", "retrain.width=4", "retrain.cells=3"]


@pytest.fixture(scope="module")
def searches(tmp_path_factory, nni_home):
    """An unconstrained tiny search and one with a macs target of half what it exported."""
    from nni_darts_ext.cli import main

    root = tmp_path_factory.mktemp("budget")
    assert main(["search", "--out", str(root / "free"), "--quiet", "--threads", "1", "--set", *TINY]) == 0
    free = json.loads((root / "free" / "summary.json").read_text())
    target = free["macs"] / 2  # half of what the unconstrained search exports
    assert main(["search", "--out", str(root / "cost"), "--quiet", "--threads", "1", "--set", *TINY,
                 f"search.cost={{metric: macs, target: {target}, weight: 1.0}}"]) == 0
    return root, free, target


@pytest.mark.e2e
def test_cli_search_with_a_cost_target_exports_a_cell_within_it(searches):
    root, free, target = searches
    summary = json.loads((root / "cost" / "summary.json").read_text())
    arch = load_arch(root / "cost" / "arch.json")
    net = build_model(arch, width=4, num_cells=3, image_size=8)
    cheapest = build_cost_table("macs", width=4, num_cells=3, image_size=8).cheapest()[0]
    assert summary["macs"] == count_macs(net, (1, 3, 8, 8)) <= max(target, cheapest)
    assert summary["macs"] <= 1.1 * target  # within the target, or within 10% of it when no cell reaches it
    assert summary["params"] == count_params(net) and summary["latency_ms"] > 0
    report = summary["budget"]["search.cost.target"]
    assert (report["metric"], report["limit"], report["value"]) == ("macs", target, float(summary["macs"]))
    assert report["within"] == (summary["macs"] <= target)
    records = json.loads((root / "cost" / "search_health.json").read_text())
    assert records and all(r["expected_cost"]["metric"] == "macs" and r["expected_cost"]["target"] == target
                           and r["expected_cost"]["expected"] > 0 for r in records)
    assert all(r["expected_cost"] is None for r in json.loads((root / "free" / "search_health.json").read_text()))
    assert free["budget"] == {} and free["macs"] > 0


@pytest.mark.e2e
def test_cli_inspect_shows_the_cost(searches, capsys):
    from nni_darts_ext.cli import main

    root, _, target = searches
    assert main(["inspect", str(root / "cost")]) == 0
    out = capsys.readouterr().out
    assert f"search cost: macs, target {target:g}" in out and "expected macs" in out
    assert "search.cost.target:" in out and "(within)" in out


@pytest.mark.e2e
def test_cli_refuses_an_impossible_limit_naming_the_cheapest(tmp_path, capsys, params):
    from nni_darts_ext.cli import main

    out = tmp_path / "run"
    code = main(["search", "--out", str(out), "--quiet", "--threads", "1", "--set", *TINY, "export.max_params=10"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert f"export.max_params: 10 is below the cheapest possible cell ({int(params.cheapest()[0])} params" in err
    assert not out.exists()  # refused before anything is written


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["first-order"])
def test_search_with_a_cost_killed_and_resumed_is_bit_identical(name, tmp_path):
    from test_exact_resume import REPO, _argv, _assert_identical, _killed

    from nni_darts_ext.cli import main

    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home), NNI_HOME=str(home / ".nni"), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cost = ["search.cost={metric: macs, target: 1.0e+5, weight: 1.0}"]  # appended to _argv's --set list
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([*_argv("search", straight, name), *cost]) == 0
    _killed([*_argv("search", killed, name), *cost], env, killed / "checkpoints" / "last.ckpt")
    assert main([*_argv("search", killed, name, "--resume"), *cost]) == 0
    _assert_identical(straight, killed)
    records = json.loads((killed / "search_health.json").read_text())
    assert [r["expected_cost"]["expected"] for r in records] == [
        r["expected_cost"]["expected"] for r in json.loads((straight / "search_health.json").read_text())]


def test_latency_table_is_cached_in_the_run_folder_and_read_back(tmp_path, monkeypatch):
    from nni_darts_ext.pipeline import budget as budget_module
    from nni_darts_ext.search.cost import CostTable

    tiny = ["dataset.image_size=8", f"retrain.width={WIDTH}", f"retrain.cells={CELLS}", "export.max_latency_ms=1.0e+6"]
    recipe = load_recipe("demo", tiny)
    built = Budget.from_recipe(recipe, batch_size=2, out=tmp_path)
    table = built.latency_table
    assert table is not None and table.key["batch_size"] == 2 and table.key["device"] == "cpu"
    assert table.fixed >= 0 and all(c >= 0 for nodes in table.ops.values() for inputs in nodes
                                    for costs in inputs for c in costs.values())
    built.save(tmp_path)
    saved = CostTable.from_json(json.loads((tmp_path / "latency_table.json").read_text()))
    monkeypatch.setattr(budget_module, "build_cost_table", lambda *a, **k: pytest.fail("measured again"))
    again = Budget.from_recipe(recipe, batch_size=2, out=tmp_path).latency_table
    assert again == saved  # resume: the same table, not a new measurement


def test_health_record_and_plot_carry_the_expected_cost(tmp_path):
    from nni_darts_ext.health import health_record, plot_health

    arch = random_arch(0)
    cost = {"metric": "macs", "expected": 1.5e5, "target": 1e5}
    records = [health_record(e, arch, None, {}, expected_cost=cost) for e in range(2)]
    assert records[0]["expected_cost"] == cost and health_record(0, arch, None, {})["expected_cost"] is None
    assert len(plot_health(records).axes) == 4 and len(plot_health([health_record(0, arch, None, {})]).axes) == 3


def test_building_a_table_leaves_the_random_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    build_cost_table("latency", width=WIDTH, num_cells=CELLS, image_size=IMAGE, batch_size=2, repeats=1)
    assert torch.equal(torch.rand(3), expected)  # a run with a cost starts from the same random state


@pytest.mark.parametrize("name", ["first-order", "fair-darts", "drnas", "gdas"])
def test_descending_the_penalty_lowers_the_expected_cost_to_the_target(name, params):
    search = _Search(_supernet(name))
    start = float(ExpectedCost(params, target=1.0).expected(search).detach())
    target = params.cheapest()[0] + 0.5 * (start - params.cheapest()[0])
    term = ExpectedCost(params, target=target, weight=1.0)
    optimizer = torch.optim.Adam(search.op_alphas(), lr=0.1)
    for _ in range(60):
        optimizer.zero_grad()
        term.arch_loss(search, epoch=0, max_epochs=1).backward()
        optimizer.step()
    assert term.last < start and float(term.expected(search).detach()) <= 1.02 * target
