"""DARTS+'s two early-stopping rules on hand-made α histories and in a search; DropNAS's grouped operation
dropout: its per-op rates, the redraw that never drops a whole group, the renormalised softmax of the kept ops."""

import json

import pytest
import torch
from test_reliability import killed_and_resumed

import sldarts
from sldarts.errors import SldartsError
from sldarts.methods import Method
from sldarts.methods.dartsplus import EarlyStop, normal_ops, ranking
from sldarts.methods.dropnas import GroupedDrop, draw_mask, op_groups, op_rate
from sldarts.methods.samplers import SoftmaxSampler
from sldarts.spaces.darts import OPS as DOPS
from sldarts.spaces.darts import DartsSupernet
from sldarts.spaces.nb201 import NB201Supernet
from sldarts.spaces.ops import PARAM_FREE

TINY = dict(train_samples=64, batch_size=32, eval_samples=32, channels=4, cells=1, progress="none")


def _part(skips=0, patience=0):
    return EarlyStop(EarlyStop.Options(dartsplus_max_skips=skips, dartsplus_patience=patience))


def test_dartsplus_rule_two_stops_when_the_ranking_holds_for_patience_epochs():
    a, b = {"cell": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}, {"cell": torch.tensor([[3.0, 1.0], [2.0, 0.0]])}
    assert ranking(a) == [[1, 0]] and ranking(b) == [[0, 0]]
    part = _part(patience=3)
    # epochs 1..7: a, b, b, a, a, a, a: the ranking changes at 2 and 4, then holds for 3 epochs after epoch 4
    for epoch, alpha in enumerate([a, b, b, a, a, a], start=1):
        part.observe(epoch, None, ranking(alpha))
        assert part.stop_reason() is None, epoch
    part.observe(7, None, ranking(a))
    assert part.stop_reason() == ("the ranking of α has not changed for 3 epochs (dartsplus_patience=3) "
                                  "after epoch 7")
    again = _part(patience=3)
    again.load_state_dict(json.loads(json.dumps(part.state_dict())))  # what a checkpoint holds
    assert again.stop_reason() == part.stop_reason() and again.stable == 3


def test_dartsplus_rule_one_counts_the_normal_cells_skips():
    net = DartsSupernet(4, 3, impl="reference")
    part = _part(skips=2, patience=10)
    part.adapt(net)
    with torch.no_grad():
        net.arch["normal"].zero_()
        net.arch["normal"][:, DOPS.index("sep_conv_3x3")] = 1.0
        net.arch["reduce"].zero_()
        net.arch["reduce"][:, DOPS.index("skip_connect")] = 1.0  # the reduction cell's skips do not count
        net.arch["normal"][0, DOPS.index("skip_connect")] = 2.0  # edge 2<-0: one skip
    assert sum(op == "skip_connect" for op in normal_ops(net.derive())) == 1
    part.end_epoch(1, 50, net)
    assert part.stop_reason() is None
    with torch.no_grad():
        net.arch["normal"][2, DOPS.index("skip_connect")] = 2.0  # edge 3<-0: a second skip
    part.end_epoch(2, 50, net)
    assert part.stop_reason() == ("the normal cell derives 2 skip connections (>= dartsplus_max_skips=2) "
                                  "after epoch 2")
    nb = NB201Supernet(4, 1, impl="reference")  # the one cell is the normal cell
    with torch.no_grad():
        nb.arch["cell"].zero_()
        nb.arch["cell"][:2, 1] = 1.0  # op 1 is skip_connect on two edges
    assert normal_ops(nb.derive()).count("skip_connect") == 2


def test_dartsplus_search_stops_early_records_rule_and_epoch_and_resumes_its_history(tmp_path):
    # α held still (an α warm-up as long as the search): the ranking never changes, so patience 2 stops the
    # search after epoch 3 of 5. The run killed after epoch 1 must resume the history: without it the resumed
    # run would start counting again and stop after epoch 4.
    args = ["search", "method=dartsplus", "space=nb201", "dartsplus_patience=2", "arch_warmup=5", "epochs=5",
            "train_samples=32", "batch_size=32", "eval_samples=32", "channels=4", "cells=1", "deterministic=true",
            "threads=1", "progress=lines", "log_every=1"]
    full, part = killed_and_resumed(args, tmp_path)
    for res in (full, part):
        assert res["stopped_early"] == {"epoch": 3, "reason": "early_stop: the ranking of α has not changed for "
                                        "2 epochs (dartsplus_patience=2) after epoch 3"}
    assert full["arch"] == part["arch"]


def test_dropnas_groups_and_per_op_rates_follow_the_formula():
    net = NB201Supernet(4, 1, impl="reference")
    edge = next(m for m in net.modules() if hasattr(m, "drop"))
    free, param = op_groups(edge)
    assert [edge.names[k] for k in free] == [n for n in edge.names if n in PARAM_FREE]
    assert {edge.names[k] for k in param} == {"nor_conv_1x1", "nor_conv_3x3"}
    assert op_rate(3e-5, 4) == pytest.approx(3e-5 ** 0.25) and op_rate(3e-5, 4) ** 4 == pytest.approx(3e-5)
    torch.manual_seed(0)
    groups, n, p_d = [[0, 1, 2], [3, 4]], 5, 0.3
    dropped = torch.zeros(n)
    draws = 20000
    for _ in range(draws):
        keep = draw_mask(groups, n, p_d)
        assert any(keep[k] for k in groups[0]) and any(keep[k] for k in groups[1])  # never a whole group
        dropped += torch.tensor([not k for k in keep], dtype=torch.float)
    for g in groups:
        r, size = op_rate(p_d, len(g)), len(g)
        expected = (r - r ** size) / (1 - r ** size)  # dropped given that not the whole group was (redraw)
        for k in g:
            assert dropped[k].item() / draws == pytest.approx(expected, abs=0.012)


def test_dropnas_kept_ops_take_the_softmax_over_the_kept_ops_and_dropped_ones_no_gradient():
    net = NB201Supernet(4, 1, impl="reference")
    Method("dropnas", "single", 1, [SoftmaxSampler(), GroupedDrop(GroupedDrop.Options(3e-5))]).apply(net)
    edge = next(m for m in net.modules() if getattr(m, "drop", None) is not None)
    keep = [name in ("skip_connect", "nor_conv_3x3", "avg_pool_3x3") for name in edge.names]
    edge.drop = lambda: keep
    alpha = torch.tensor([0.3, -0.2, 0.5, 0.1, -0.4], requires_grad=True)
    x = torch.randn(2, 4, 5, 5)
    edge.train()
    out = edge(x, torch.softmax(alpha, -1))
    e = alpha.detach().exp()
    kept = [k for k in range(5) if keep[k]]
    expected = sum(e[k] / e[kept].sum() * edge.ops[k](x) for k in kept)  # no 1/(1-r) rescaling
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert all(alpha.grad[k].abs() < 1e-7 for k in range(5) if not keep[k])
    assert all(alpha.grad[k].abs() > 0 for k in kept)
    edge.eval()  # evaluation and derivation: every op, the plain softmax
    assert torch.allclose(edge(x, torch.softmax(alpha, -1).detach()),
                          sum(torch.softmax(alpha, -1)[k].detach() * edge.ops[k](x) for k in range(5)
                              if edge.names[k] != "none"), atol=1e-6)


def test_dropnas_refuses_what_it_cannot_do():
    with pytest.raises(SldartsError, match="activation=sigmoid has no such softmax"):
        GroupedDrop(GroupedDrop.Options(3e-5)).adapt(NB201Supernet(4, 1, impl="reference"))
    with pytest.raises(SldartsError, match="use a rate below 1"):
        sldarts.search(method="dropnas", dropnas_rate=1.0, epochs=1, out="/tmp/never", **TINY)
