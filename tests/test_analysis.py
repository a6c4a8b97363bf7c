"""Analysis: the probe's numbers against direct autograd and finite differences; auto-lr; figures."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sldarts import search
from sldarts.activations import Softmax
from sldarts.analysis import Probe, choose_cells
from sldarts.analyze import analyze
from sldarts.config import SearchConfig
from sldarts.spaces.nb201 import EDGES, OPS, FusedSearchCell, NB201Supernet


def tiny(impl="reference", seed=0):
    torch.manual_seed(seed)
    m = NB201Supernet(channels=3, cells=1, num_classes=4, in_channels=1, activation=Softmax(), impl=impl,
                      track_running_stats=True).double()
    with torch.no_grad():
        m.arch["cell"].normal_(0, 0.5)
    return m


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)


def test_choose_cells():
    assert choose_cells("first,middle,last", 15) == [0, 7, 14]
    assert choose_cells("0,-1", 8) == [0, 7]


def test_correlation_equals_direct_autograd():
    m = tiny()
    bw, ba = batch(1), batch(2)
    row = Probe(m, "first,last").measure(bw, ba)
    cell = m.search_cells()[2][0]  # last search cell (index 2 of 3)
    conv = cell.edges[4].ops[OPS.index("nor_conv_3x3")][1]  # edge 3<-1
    gw = torch.autograd.grad(nn.functional.cross_entropy(m(bw[0]), bw[1]), [conv.weight, conv.bias])
    ga = torch.autograd.grad(nn.functional.cross_entropy(m(ba[0]), ba[1]), [conv.weight, conv.bias])
    inner = sum(float((a * b).sum()) for a, b in zip(gw, ga))
    got = row["corr"]["cell2"]["edges"]["3<-1"]["nor_conv_3x3"]
    assert got[0] == pytest.approx(inner, rel=1e-9)
    norm = (sum(float((a * a).sum()) for a in gw) * sum(float((b * b).sum()) for b in ga)) ** 0.5
    assert got[1] == pytest.approx(inner / norm, rel=1e-9)
    # the fused layout gives the same numbers through its slices
    f = tiny("fused")
    f.load_state_dict({k: v for k, v in m.state_dict().items() if ".edges." not in k}, strict=False)
    for a, b in zip(f.layers, m.layers):
        if isinstance(a, FusedSearchCell):
            a.load_reference(b)
    got_f = Probe(f, "first,last").measure(bw, ba)["corr"]["cell2"]["edges"]["3<-1"]["nor_conv_3x3"]
    assert got_f[0] == pytest.approx(inner, rel=1e-7)


def test_single_level_correlation_is_the_squared_gradient_norm():
    m = tiny()
    b = batch(3)
    row = Probe(m, "first").measure(b, None)
    conv = m.search_cells()[0][0].edges[0].ops[OPS.index("nor_conv_1x1")][1]
    g = torch.autograd.grad(nn.functional.cross_entropy(m(b[0]), b[1]), [conv.weight, conv.bias])
    sq = sum(float((x * x).sum()) for x in g)
    inner, cos = row["corr"]["cell0"]["edges"]["1<-0"]["nor_conv_1x1"]
    assert inner == pytest.approx(sq, rel=1e-9) and inner > 0 and cos == pytest.approx(1.0)
    for inner, cos in row["corr"]["cell0"]["nodes"].values():
        assert inner > 0 and cos == pytest.approx(1.0)


def test_dldp_matches_finite_differences():
    m = tiny()
    b = batch(4)
    row = Probe(m, "last").measure(b, None)
    p0 = m.arch_weights()["cell"].detach()
    h = 1e-6
    e, k = 5, OPS.index("skip_connect")  # edge 3<-2 of the last cell
    losses = []
    for sign in (1, -1):
        p = p0.clone()
        p[e, k] += sign * h
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(m(b[0], cell_weights={2: p}), b[1])))
    fd = (losses[0] - losses[1]) / (2 * h)
    assert row["dldp"]["cell2"]["3<-2"]["skip_connect"] == pytest.approx(fd, rel=1e-5, abs=1e-9)
    assert len(row["dldp"]["cell2"]) == len(EDGES)


def test_probe_leaves_the_model_unchanged():
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    Probe(m).measure(batch(1), batch(2))
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_auto_lr_stops_at_the_bound_and_records_every_try(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(NB201Supernet, "param_free_ratio", lambda self, arch: 1.0)  # every try "collapses"
    res = search(SearchConfig(**dict(tiny, cells=1, lr=0.05, auto_lr=True, auto_lr_tries=3, auto_lr_factor=5)))
    tries = json.load(open(Path(tiny["out"]) / "auto_lr.json"))
    assert [t["lr"] for t in tries] == pytest.approx([0.05, 0.01, 0.002])
    assert [t["try"] for t in tries] == [1, 2, 3] and res["auto_lr"] == tries
    assert all((Path(t["run_dir"]) / "result.json").exists() for t in tries)


def test_auto_lr_stops_when_the_ratio_is_low(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(NB201Supernet, "param_free_ratio", lambda self, arch: 0.0)
    res = search(SearchConfig(**dict(tiny, cells=1, auto_lr=True)))
    assert len(res["auto_lr"]) == 1


def test_search_with_analysis_and_the_analyze_command(tmp_path, tiny):
    runs = []
    for optim in ("bilevel", "single"):
        out = tmp_path / optim
        search(SearchConfig(**dict(tiny, cells=1, epochs=2, optim=optim, analysis=True, analysis_every=2,
                                   out=str(out))))
        rows = [json.loads(x) for x in open(out / "analysis.jsonl")]
        assert [r["global_step"] for r in rows] == list(range(0, 2 * len(rows), 2))
        metrics = [json.loads(x) for x in open(out / "metrics.jsonl")]
        assert metrics[1]["analysis_seconds"] > 0
        runs.append(out)
    paths = analyze(runs, tmp_path / "fig")
    names = {p.name for p in paths}
    assert {"correlation.png", "correlation.pdf", "weights_single.png", "dldp_bilevel.pdf", "report.md"} <= names
    assert (tmp_path / "fig" / "correlation.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.load(open(tmp_path / "fig" / "summary.json"))
    single = next(s for s in summary if s["optim"] == "single")
    assert all(v["cos"] == pytest.approx(1.0) for v in single["correlation"].values())
