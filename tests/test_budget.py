"""Search under a budget (sldarts.budget): cost tables counted per candidate, the expected cost's gradient,
searches that meet a target, the latency table's cache, and one-line errors."""

import json

import pytest
import torch
import userspace

import sldarts
from sldarts.activations import ACTIVATIONS
from sldarts.budget import CostModel, CostOptions, count_macs_of, darts_layout, expected_cost, nb201_layout
from sldarts.config import load_config
from sldarts.errors import SldartsError
from sldarts.evaluate.complexity import complexity, count_params
from sldarts.spaces import get_space
from sldarts.spaces.darts import OPS as DARTS_OPNAMES
from sldarts.spaces.nb201 import OPS
from sldarts.spaces.ops import NB201_OPS

NB = dict(space="nb201", epochs=1, train_samples=128, channels=4, cells=1, batch_size=32, eval_samples=32,
          progress="none", workers=0, threads=1)
USER = dict(epochs=1, train_samples=128, batch_size=32, eval_samples=32, progress="none", workers=0, threads=1,
            arch_lr=0.003)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS.names()))
def test_expected_cost_gradient_matches_finite_differences(name):
    act = ACTIVATIONS.get(name)()
    g = torch.Generator().manual_seed(0)
    tables = {"a": torch.rand(3, 4, generator=g, dtype=torch.float64) * 100,
              "b": torch.rand(1, 2, generator=g, dtype=torch.float64) * 10,
              "d": torch.rand(5, 4, generator=g, dtype=torch.float64) * 10}  # DARTS-like: rows are edges
    nodes = {"d": [(0, 2), (2, 5)]}  # edges into two nodes; the second keeps 2 of its 3 inputs
    alphas = {k: (torch.randn(t.shape, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
              for k, t in tables.items()}

    def f() -> torch.Tensor:
        return expected_cost(tables, 7.0, {k: act(a) for k, a in alphas.items()}, {"d": 0}, nodes)

    grads = torch.autograd.grad(f(), list(alphas.values()))
    eps = 1e-6
    for _ in range(4):  # directional derivatives along random directions: grad · v against central differences
        vs = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in alphas.values()]
        with torch.no_grad():
            for a, v in zip(alphas.values(), vs, strict=True):
                a += eps * v
            up = float(f())
            for a, v in zip(alphas.values(), vs, strict=True):
                a -= 2 * eps * v
            down = float(f())
            for a, v in zip(alphas.values(), vs, strict=True):
                a += eps * v
        along = sum(float((gr * v).sum()) for gr, v in zip(grads, vs, strict=True))
        assert along == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-8)
    # one-hot weights: the expected cost is the derived architecture's
    onehot = {"a": torch.eye(4, dtype=torch.float64)[[0, 3, 1]], "b": torch.tensor([[0.0, 1.0]], dtype=torch.float64)}
    tables.pop("d")
    want = 7.0 + float(tables["a"][0, 0] + tables["a"][1, 3] + tables["a"][2, 1] + tables["b"][0, 1])
    assert float(expected_cost(tables, 7.0, onehot)) == pytest.approx(want)


def test_nb201_cost_tables_are_each_op_counted_alone_and_add_up_to_sldarts_complexity():
    darts = get_space("darts")  # DARTS: the published CIFAR network (C=36, 20 cells) of a genotype, by edges
    model = CostModel("params", darts_layout(darts, "cifar10"))
    g = darts.parse("DARTS_V2")
    idx = {k: [-1] * 14 for k in ("normal", "reduce")}
    for k in idx:
        for n, (op, src) in enumerate(g[k]):
            idx[k][[0, 2, 5, 9][n // 2] + src] = DARTS_OPNAMES.index(op)
    assert model.predict(idx) == count_params(darts.eval_network(g, 10, 3)) == 3349342  # sldarts complexity's count
    space = get_space("nb201")
    archs = ["|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"]  # every op
    # what `sldarts complexity` says, on ImageNet16-120's network (16x16 images: the cheapest to count)
    counted = {arch: complexity(space, arch, "imagenet16-120") for arch in archs}
    for kind in ("params", "macs"):
        model = CostModel(kind, nb201_layout(space, "imagenet16-120"))
        table = model.tables["cell"]
        assert table.shape == (6, 5) and torch.equal(table, table[:1].expand(6, 5))  # every edge sees the same
        for k, name in enumerate(OPS):  # 5 cells per stage, stages (16, 16x16), (32, 8x8), (64, 4x4)
            ops = [(NB201_OPS[name](c, 1, True, True), torch.zeros(1, c, s, s))
                   for c, s in ((16, 16), (32, 8), (64, 4))]
            alone = sum(sum(p.numel() for p in op.parameters()) if kind == "params" else count_macs_of(op, (x,))
                        for op, x in ops)
            assert table[0, k] == 5 * alone
        for arch in archs:
            ops = [op.split("~")[0] for node in arch.split("+") for op in node.strip("|").split("|")]
            assert model.predict({"cell": [OPS.index(op) for op in ops]}) == counted[arch][kind]


def _search(tmp_path, name, **kw):
    return sldarts.search(out=str(tmp_path / name), **kw)


def test_a_params_target_well_below_the_unconstrained_result_is_met_on_nb201_and_a_choice_model(tmp_path):
    # seed 1: with digits' held-out validation split, seed 0's unconstrained cell is already all skips
    free = _search(tmp_path, "nb_free", **NB, seed=1)
    bound = _search(tmp_path, "nb_bound", cost="params", cost_target=250000, cost_lr=5.0, **NB, seed=1)
    bilevel = _search(tmp_path, "nb_bilevel", cost="params", cost_target=250000, cost_lr=5.0, optim="bilevel",
                      **NB, seed=1)
    assert free["complexity"]["params"] > 250000  # the same seed without a target does not meet it
    for res in (bound, bilevel):
        b = res["budget"]
        assert b["met"] and b["measured"] == b["predicted"] == res["complexity"]["params"] <= 250000
        assert b["target"] == 250000 and b["unit"] == "params" and b["multiplier"] >= 0  # 0 once met for a while
    rows = [json.loads(line) for line in open(tmp_path / "nb_bound" / "metrics.jsonl")]
    assert all("expected_cost" in r and "derived_cost" in r for r in rows)
    # the multiplier is in the checkpoint, so a resumed run continues it exactly
    saved = torch.load(tmp_path / "nb_bound" / "checkpoint.pt", weights_only=True)["cost"]["multiplier"]
    assert saved == rows[-1]["cost_multiplier"] == bound["budget"]["multiplier"]
    table = json.loads((tmp_path / "nb_bound" / "cost_table.json").read_text())
    assert table["network"] == "NB201 evaluation network on cifar10" and table["base"] == 73306

    runs = {}
    for name, extra in (("free", dict(cost="params")), ("bound", dict(cost="params", cost_target=1000, cost_lr=5.0))):
        torch.manual_seed(0)  # the model's initial weights
        train, valid = userspace.digits()
        runs[name] = _search(tmp_path, "user_" + name, model=userspace.build(10, 1), train_data=train,
                             valid_data=valid, **USER, **extra)
    free_b, bound_b = runs["free"]["budget"], runs["bound"]["budget"]
    assert free_b["measured"] > 1000 and free_b["met"] is None  # no target: none to meet
    assert bound_b["met"] and bound_b["measured"] <= 1000
    # the fixed model's cost is what the table predicts and what the end of the search counts
    for res in runs.values():
        assert res["budget"]["measured"] == res["budget"]["predicted"] == res["complexity"]["params"]


def test_latency_table_is_written_once_and_reused_by_a_second_run(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    kw = dict(NB, cost="latency", cost_weight=0.1, cost_repeats=2, cost_cache=str(cache), progress="lines")
    _search(tmp_path, "lat1", **kw)
    files = list(cache.glob("latency-*.json"))
    assert len(files) == 1
    first = json.loads(files[0].read_text())
    assert first["device"]["device"] == "cpu" and first["device"]["threads"] == 1 and first["device"]["batch"] == 1
    log1 = (tmp_path / "lat1" / "log.txt").read_text()
    assert "latency table: timed" in log1
    res = _search(tmp_path, "lat2", **kw)
    log2 = (tmp_path / "lat2" / "log.txt").read_text()
    assert "latency table: reused 16 entries timed on cpu" in log2 and "latency table: timed" not in log2
    assert json.loads(files[0].read_text()) == first  # nothing timed again
    b = res["budget"]
    assert b["cost"] == "latency" and b["measured"] > 0 and b["latency"]["threads"] == 1
    assert "median of whole-network runs" in log2


def test_bad_budget_input_is_one_line(tmp_path):
    cases = [
        (dict(cost="flops"), "not a cost kind"),
        (dict(cost_target=1000), "needs a cost kind"),
        (dict(cost="params", cost_weight=1.0, cost_target=1000), "not both"),
    ]
    for kw, words in cases:
        with pytest.raises(SldartsError, match=words) as err:
            load_config(None, kw)
        assert "\n" not in str(err.value)
    with pytest.raises(SldartsError, match="smallest params any architecture of this space reaches is 73306") as err:
        _search(tmp_path, "low", cost="params", cost_target=50000, **NB)
    assert "\n" not in str(err.value)
    if not torch.cuda.is_available():
        with pytest.raises(SldartsError, match="no CUDA device") as err:
            CostModel("latency", nb201_layout(get_space("nb201"), "cifar10"),
                      CostOptions(cost="latency", cost_device="cuda"))
        assert "\n" not in str(err.value)


def test_report_of_a_budget_sweep_gives_accuracy_vs_cost_beside_the_benchmark_front(tmp_path):
    from sldarts.lookup import CsvBenchmark
    from sldarts.report import report

    def arch(*ops):
        return "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops)

    conv, skip = ("nor_conv_3x3",) * 6, ("skip_connect",) * 6
    one = ("nor_conv_3x3",) + ("skip_connect",) * 5
    costs = {"none": 0, "skip_connect": 0, "nor_conv_1x1": 10, "nor_conv_3x3": 100, "avg_pool_3x3": 0}
    table = {"cost": "params", "base": 5, "tables": {"cell": [[costs[o] for o in OPS]] * 6}}
    bench = tmp_path / "bench.csv"  # a tiny fake benchmark: three cells with a CIFAR-10 test accuracy
    bench.write_text("index,arch,cifar10_test\n" + "".join(
        f"{i},{arch(*ops)},{acc}\n" for i, (ops, acc) in enumerate(((conv, 94.0), (one, 90.0), (skip, 50.0)))))
    for target, ops in ((50, skip), (150, one), (0, conv)):
        cost = 5 + sum(costs[o] for o in ops)
        d = tmp_path / "sweep" / f"cost_target={target}"
        d.mkdir(parents=True)
        (d / "cost_table.json").write_text(json.dumps(table))
        budget = {"cost": "params", "unit": "params", "expected": cost + 1.0, "predicted": cost, "measured": cost,
                  "target": target or None, "weight": None, "met": cost <= target if target else None}
        (d / "result.json").write_text(json.dumps({
            "space": "nb201", "arch_key": "arch", "arch": arch(*ops), "param_free_ratio": 0.5, "valid_acc": 0.3,
            "budget": budget, "config": {"cost": "params", "cost_target": target, "seed": 0}}))
    md = report(tmp_path / "sweep", CsvBenchmark(bench))
    rows = [line.strip(" |") for line in md.splitlines() if line.startswith("| cost_target=")]
    assert "## Accuracy vs params" in md and len(rows) == 3
    assert rows[0].split(" | ")[1:6] == ["50 params", "5 params", "6 params", "yes", "50.00"]
    assert rows[1].split(" | ")[5:8] == ["90.00", "90.00 (105 params)", "0.00"]  # on the front
    assert "5 params → 50.00, 105 params → 90.00, 605 params → 94.00" in md  # the front of the three cells
    assert (tmp_path / "sweep" / "budget.png").stat().st_size > 0
    assert (tmp_path / "sweep" / "budget.md").read_text().startswith("## Accuracy vs params")
