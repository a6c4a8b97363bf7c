"""How decided a derived cell is: margins on hand-made α, stability on a hand-written history, the note,
argmax-no-none, and re-deriving a finished run."""

import json
import math

import pytest
import torch
import yaml

import sldarts
from sldarts.activations import Sigmoid, Softmax
from sldarts.cli import main
from sldarts.decided import margins, note, stability
from sldarts.spaces import get_space
from sldarts.spaces.darts import OPS as DOPS
from sldarts.spaces.darts import DartsSupernet
from sldarts.spaces.model import ChoiceSupernet
from sldarts.spaces.nb201 import OPS, NB201Supernet, format_arch

ACT = {"sigmoid": Sigmoid(), "softmax": Softmax()}


def set_weights(net, key: str, w: torch.Tensor, activation: str) -> None:
    """Set α so that the activation gives exactly the hand-made weights ``w``."""
    with torch.no_grad():
        net.arch[key].copy_(torch.logit(w) if activation == "sigmoid" else torch.log(w))


def nb201_weights() -> torch.Tensor:
    """Rows sum to 1 (so softmax can produce them); edge 3<-0 has `none` ahead of skip by 0.002."""
    w = torch.tensor([
        [0.10, 0.15, 0.40, 0.25, 0.10],  # 1<-0: conv1x1 over conv3x3 by 0.15
        [0.10, 0.30, 0.20, 0.25, 0.15],  # 2<-0: skip over conv3x3 by 0.05
        [0.05, 0.10, 0.30, 0.305, 0.245],  # 2<-1: conv3x3 over conv1x1 by 0.005 (undecided)
        [0.252, 0.25, 0.20, 0.15, 0.148],  # 3<-0: none over skip by 0.002 (undecided)
        [0.10, 0.10, 0.10, 0.60, 0.10],  # 3<-1: conv3x3 by 0.5
        [0.20, 0.20, 0.30, 0.10, 0.20],  # 3<-2: conv1x1 over none by 0.1
    ])
    assert torch.allclose(w.sum(1), torch.ones(6))
    return w


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_nb201_margins_and_argmax_no_none_on_hand_made_alpha(activation):
    net = NB201Supernet(4, 1, activation=ACT[activation])
    set_weights(net, "cell", nb201_weights(), activation)
    d = {x.name: x for x in net.decisions()}
    assert [x.name for x in net.decisions()] == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    expected = {"1<-0": ("nor_conv_1x1", "nor_conv_3x3", 0.15), "2<-0": ("skip_connect", "nor_conv_3x3", 0.05),
                "2<-1": ("nor_conv_3x3", "nor_conv_1x1", 0.005), "3<-0": ("none", "skip_connect", 0.002),
                "3<-1": ("nor_conv_3x3", "none", 0.5), "3<-2": ("nor_conv_1x1", "none", 0.1)}
    for name, (win, runner, m) in expected.items():
        assert (d[name].winner, d[name].runner_up) == (win, runner) and d[name].margin == pytest.approx(m, abs=1e-5)
    assert margins(net.decisions())["min_margin"] == pytest.approx(0.002, abs=1e-5)
    assert net.derive() == format_arch([v[0] for v in expected.values()])
    # argmax-no-none: `none` is never derived; on 3<-0 the runner-up (skip) is, with its own margin over conv1x1
    no_none = net.derive("argmax-no-none")
    assert no_none == format_arch(["nor_conv_1x1", "skip_connect", "nor_conv_3x3", "skip_connect", "nor_conv_3x3",
                                   "nor_conv_1x1"])
    d2 = {x.name: x for x in net.decisions("argmax-no-none")}
    assert (d2["3<-0"].winner, d2["3<-0"].runner_up) == ("skip_connect", "nor_conv_1x1")
    assert d2["3<-0"].margin == pytest.approx(0.05, abs=1e-5)
    assert (d2["3<-2"].winner, d2["3<-2"].runner_up) == ("nor_conv_1x1", "skip_connect")


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_darts_op_and_edge_selection_margins_on_hand_made_alpha(activation):
    net = DartsSupernet(4, 3, activation=ACT[activation])
    w = torch.full((14, 8), 0.1)
    w[:, 0] = 0.3  # `none` strongest everywhere: the DARTS rule never derives it
    # node 2 (edges 0, 1): sep3 on edge 0 (by 0.02 over dil3), max-pool on edge 1 (by 0.05)
    w[0, DOPS.index("sep_conv_3x3")], w[0, DOPS.index("dil_conv_3x3")] = 0.20, 0.18
    w[1, DOPS.index("max_pool_3x3")] = 0.15
    # node 3 (edges 2, 3, 4): strengths 0.25, 0.24, 0.30 -> keep edges 4 and 2; selection margin 0.25 - 0.24
    w[2, DOPS.index("skip_connect")], w[3, DOPS.index("avg_pool_3x3")], w[4, DOPS.index("sep_conv_5x5")] = \
        0.25, 0.24, 0.30
    w = w / w.sum(1, keepdim=True) if activation == "softmax" else w
    for key in ("normal", "reduce"):
        set_weights(net, key, w, activation)
    d = {x.name: x for x in net.decisions()}
    sep3, dil3 = DOPS.index("sep_conv_3x3"), DOPS.index("dil_conv_3x3")
    assert (d["normal/2<-0"].winner, d["normal/2<-0"].runner_up) == ("sep_conv_3x3", "dil_conv_3x3")
    assert d["normal/2<-0"].margin == pytest.approx(float(w[0, sep3] - w[0, dil3]), abs=1e-5)
    assert d["normal/2<-1"].winner == "max_pool_3x3"
    assert "normal/node2" not in d  # two inputs, both kept: no edge-selection decision
    # node 3: the kept edges are 4 (sep5) and 2 (skip); the first dropped is 3 (avg pool)
    assert (d["normal/node3"].winner, d["normal/node3"].runner_up) == ("edge 3<-0", "edge 3<-1")
    skip, avg = DOPS.index("skip_connect"), DOPS.index("avg_pool_3x3")
    assert d["normal/node3"].margin == pytest.approx(float(w[2, skip] - w[3, avg]), abs=1e-5)
    gene = net.derive()["normal"]
    assert gene[:4] == [["sep_conv_3x3", 0], ["max_pool_3x3", 1], ["sep_conv_5x5", 2], ["skip_connect", 0]]
    assert net.derive("argmax-no-none") == net.derive()  # DARTS never derives `none` anyway


def test_user_model_choice_and_input_choice_margins():
    import userspace

    net = ChoiceSupernet(userspace.build(10, 1))
    w = {"block": torch.tensor([0.30, 0.31, 0.2, 0.1]), "b3": torch.tensor([0.6, 0.2]),
         "merge": torch.tensor([0.5, 0.2, 0.45])}
    d = {x.name: x for x in net.decisions(weights=w)}
    assert (d["block"].winner, d["block"].runner_up) == ("conv5", "conv3")
    assert d["block"].margin == pytest.approx(0.01)
    assert (d["merge"].winner, d["merge"].runner_up, d["merge"].margin) == ("input 2", "input 1", pytest.approx(0.25))
    assert net.derive(weights=w) == {"block": "conv5", "b3": "conv1", "merge": [0, 2]}


def test_stability_from_a_hand_written_history():
    cells = ["a", "a", "b", "a", "c", "c", "c", "c", "c", "c", "c"]  # epochs 0..10
    rows = [{"epoch": e, "arch": c} for e, c in enumerate(cells)]
    assert stability(rows, "arch", 10) == {"stable_since_epoch": 4, "distinct_cells_last_20pct": 1}
    rows[9]["arch"] = "d"  # a change in the last 20% (epochs 9, 10)
    assert stability(rows, "arch", 10) == {"stable_since_epoch": 10, "distinct_cells_last_20pct": 2}
    assert stability([{"epoch": 0, "arch": "a"}, {"epoch": 1, "arch": "a"}], "arch", 1)["stable_since_epoch"] == 0
    dicts = [{"epoch": e, "genotype": {"normal": [["x", e > 1]]}} for e in range(4)]
    assert stability(dicts, "genotype", 3)["stable_since_epoch"] == 2


def test_note_names_undecided_edges_with_runner_ups_and_late_changes():
    net = NB201Supernet(4, 1, activation=Sigmoid())
    set_weights(net, "cell", nb201_weights(), "sigmoid")
    text = note(net.decisions(), 0.01, {"stable_since_epoch": 48, "distinct_cells_last_20pct": 3})
    assert text.startswith("undecided (margin < 0.01): 3<-0 none over skip_connect by 0.002, "
                           "2<-1 nor_conv_3x3 over nor_conv_1x1 by 0.005")
    assert "changed in the last 20% of epochs (3 distinct cells; stable since epoch 48)" in text
    assert note(net.decisions(), 0.001, {"distinct_cells_last_20pct": 1}) == ""


def _fake_run(tmp_path, weights: torch.Tensor):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"space": "nb201", "derive": "argmax"}))
    arch = format_arch([OPS[int(k)] for k in weights.argmax(1)])
    rows = [{"epoch": 1, "weights": {"cell": weights.tolist()}, "arch": arch, "param_free_ratio": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "result.json").write_text(json.dumps({"space": "nb201", "arch_key": "arch", "arch": arch,
                                                 "param_free_ratio": 0.5}))
    return run


def test_rederive_a_finished_run_without_searching(tmp_path, capsys):
    run = _fake_run(tmp_path, nb201_weights())
    assert main(["derive", str(run)]) == 0
    assert capsys.readouterr().out.strip().split("+")[2].startswith("|none~0|")
    assert main(["derive", str(run), "--derive", "argmax-no-none"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == format_arch(["nor_conv_1x1", "skip_connect", "nor_conv_3x3", "skip_connect",
                                           "nor_conv_3x3", "nor_conv_1x1"])
    extra = json.loads(out.err)
    assert extra["param_free_ratio"] == pytest.approx(2 / 6) and extra["min_margin"] == pytest.approx(0.005, abs=1e-5)
    assert main(["derive", str(run), "--derive", "first"]) == 2


def test_a_search_records_margins_stability_and_the_note(tmp_path):
    res = sldarts.search(epochs=2, train_samples=96, channels=4, cells=1, batch_size=32, eval_samples=32,
                         progress="none", derive="argmax-no-none", margin_threshold=1.0, out=str(tmp_path / "r"))
    rows = [json.loads(x) for x in open(tmp_path / "r" / "metrics.jsonl")]
    assert all(set(r["margins"]) == {"1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"} for r in rows)
    assert rows[-1]["min_margin"] == min(rows[-1]["margins"].values()) == res["min_margin"]
    assert "none" not in res["arch"] and res["derive"] == "argmax-no-none"
    assert res["config"]["derive"] == "argmax-no-none"
    assert res["stable_since_epoch"] in (0, 1, 2) and res["distinct_cells_last_20pct"] == 1
    assert res["note"].startswith("undecided (margin < 1)")  # every edge is below a threshold of 1
    # the recorded weights re-derive the same architecture with the same margins
    arch, decisions = get_space("nb201").rederive({k: torch.tensor(v) for k, v in rows[-1]["weights"].items()},
                                                  "argmax-no-none")
    assert arch == res["arch"]
    assert all(math.isclose(margins(decisions)["margins"][k], v, abs_tol=1e-6) for k, v in res["margins"].items())
