"""P-DARTS (method=pdarts): op pruning between stages, the skip cap, the skip dropout and its schedule, the
masked candidates of a stage, and a two-stage search resumed after kill -9 across the stage boundary."""

import json
import math
import signal

import pytest
import torch
from test_reliability import cli, wait_for_epoch

import sldarts
from sldarts.config import load_config
from sldarts.errors import SldartsError
from sldarts.methods import resolve
from sldarts.methods.pdarts import PdartsOptions, Progressive, prune, skip_cap, stage_plan
from sldarts.spaces.darts import OPS, SPACE

SKIP, SEP3, SEP5, MAX = (OPS.index(o) for o in ("skip_connect", "sep_conv_3x3", "sep_conv_5x5", "max_pool_3x3"))


def test_prune_keeps_the_top_k_of_the_kept_ops_by_activated_weight():
    w = torch.tensor([[0.30, 0.05, 0.10, 0.20, 0.15, 0.05, 0.10, 0.05],
                      [0.00, 0.40, 0.00, 0.10, 0.30, 0.00, 0.20, 0.00]])
    # edge 0: all 8 ops, keep 5: none (0.30), skip (.20), sep3 (.15), then the tie avg/dil3 (.10) -> both;
    # the .05 ties (max, sep5, dil5) go
    assert prune(w, [list(range(8)), [1, 3, 4, 6]], 5)[0] == [0, 2, 3, 4, 6]
    # edge 1: only 4 ops left; keep 3 of them (ties break to the earlier op; pruned ops never come back)
    assert prune(w, [list(range(8)), [1, 3, 4, 6]], 3)[1] == [1, 4, 6]
    assert prune(w, [[0, 1, 2], [1, 3, 4, 6]], 2) == [[0, 2], [1, 4]]


def _weights(normal_rows: dict[int, dict[int, float]]) -> dict[str, torch.Tensor]:
    """14 x 8 activated weights, 0.01 everywhere but the given (edge: {op: weight}) entries."""
    n = torch.full((14, 8), 0.01)
    for e, row in normal_rows.items():
        for op, v in row.items():
            n[e, op] = v
    return {"normal": n, "reduce": torch.full((14, 8), 0.01)}


def _derive(ws):
    return SPACE.rederive(ws, "argmax")[0]


def test_skip_cap_replaces_the_weakest_skip_edges_by_their_next_best_op():
    # node 2 <- edges 0, 1 (skip .9, skip .5 with sep5 .3 next); node 3 <- edges 2..4 (edge 2 skip .3 only,
    # edge 3 sep3 .8, edge 4 max-pool .05); nodes 4, 5 sep3 everywhere
    rows = {0: {SKIP: 0.9}, 1: {SKIP: 0.5, SEP5: 0.3}, 2: {SKIP: 0.3}, 3: {SEP3: 0.8}, 4: {MAX: 0.05}}
    rows.update({e: {SEP3: 0.6} for e in range(5, 14)})
    w = _weights(rows)
    g0 = _derive(w)
    assert sum(op == "skip_connect" for op, _ in g0["normal"]) == 3
    g, changed = skip_cap(w, 2, _derive, SKIP)
    assert changed == [2]  # the weakest skip (.3) goes; edge 2 has nothing better than .01: edge 4 wins node 3
    assert g["normal"][2:4] == [["sep_conv_3x3", 1], ["max_pool_3x3", 2]]
    assert g["normal"][:2] == g0["normal"][:2] and g["reduce"] == g0["reduce"]
    g1, changed = skip_cap(w, 1, _derive, SKIP)
    assert changed == [2, 1]  # then skip .5 on edge 1: its next-best op sep5 takes its place
    assert g1["normal"][:2] == [["skip_connect", 0], ["sep_conv_5x5", 1]]
    assert skip_cap(w, 3, _derive, SKIP) == (g0, [])
    assert torch.equal(w["normal"], _weights(rows)["normal"])  # the caller's weights are left alone


def test_stage_masks_pruned_ops_and_drops_out_skips_on_the_official_schedule():
    cfg = load_config(None, dict(method="pdarts", space="darts", channels=4, cells=3, pdarts_cells="3,4",
                                 pdarts_keep="3", pdarts_skip_drop="0.2,0.4", arch_warmup=2))
    method = resolve(cfg)
    part = method.get("pdarts")
    assert isinstance(part, Progressive) and not method.fused_ok and part.warmup == 2
    keep = {k: [[0, SKIP, SEP3]] + [[MAX, SKIP, SEP5]] * 13 for k in ("normal", "reduce")}
    part.stage, part.keep = 1, keep
    torch.manual_seed(0)
    net = method.apply(SPACE.supernet(cfg, 10, 3))
    w = net.arch_weights()["normal"].detach()
    assert torch.allclose(w[0, [0, SKIP, SEP3]].sum(), torch.tensor(1.0)) and float(w[0].sum()) == pytest.approx(1)
    assert w[0, [1, 2, 5, 6, 7]].abs().sum() == 0 and w[1, [0, 2, 4, 6, 7]].abs().sum() == 0
    assert net.cells[0].edges[0]._live == [SKIP, SEP3] and net.cells[0].edges[1]._live == [MAX, SKIP, SEP5]
    # rate 0.4 in stage 2, 4 epochs, α frozen for 2: linear decay while frozen, then exp(-0.2 t)
    rates = []
    for e in range(4):
        method.on_epoch(e, 4)
        rates.append(part.rate)
    assert rates == pytest.approx([0.4 * 3 / 4, 0.4 * 2 / 4, 0.4, 0.4 * math.exp(-0.2)])
    ident = net.cells[0].edges[0].ops[SKIP]
    x = torch.ones(2, 4, 3, 3)
    ident.train()
    y = ident(x)
    kept = y[y != 0]  # dropout at the epoch's rate, scaled by 1/(1 - p)
    assert (y == 0).any() and torch.allclose(kept, torch.full_like(kept, 1 / (1 - 0.4 * math.exp(-0.2))))
    ident.eval()
    assert torch.equal(ident(x), x)


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(SldartsError, match="P-DARTS defines the DARTS space only"):
        sldarts.search(method="pdarts", space="nb201", out=str(tmp_path / "r"), progress="none")
    with pytest.raises(SldartsError, match="pdarts_keep needs 2 counts"):
        stage_plan(PdartsOptions(pdarts=True, pdarts_keep="5"))
    # OUT is a run directory like any other: a folder holding someone else's config.yaml is left as it was
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.yaml").write_text("mine: 1\n")
    with pytest.raises(SldartsError, match="no sldarts run marked as its own"):
        sldarts.search(method="pdarts", space="darts", out=str(tmp_path / "theirs"), progress="none")
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["config.yaml"]
    assert (tmp_path / "theirs" / "config.yaml").read_text() == "mine: 1\n"
    with pytest.raises(SldartsError, match="decreasing"):
        stage_plan(PdartsOptions(pdarts=True, pdarts_cells="3,4", pdarts_keep="1", pdarts_skip_drop="0,0"))


def test_combines_with_single_level_in_one_stage(tmp_path):
    keys = dict(method="pdarts", optim="single", space="darts", cells=3, pdarts_cells="3", pdarts_keep="",
                pdarts_skip_drop="0.1", epochs=1, train_samples=32, batch_size=32, eval_samples=32, channels=4,
                threads=1, progress="none", out=str(tmp_path / "r"))
    res = sldarts.search(**keys)
    cfg = json.loads((tmp_path / "r" / "stage1" / "result.json").read_text())["config"]
    assert (cfg["optim"], cfg["method"], cfg["pdarts"], cfg["impl"]) == ("single", "pdarts", True, "reference")
    assert res["pdarts"]["stages"] == [{"stage": 1, "cells": 3, "ops_per_edge": 8, "run_dir": str(tmp_path / "r"
                                                                                                   / "stage1")}]
    # overwrite=true replaces what the search wrote (in its stage folders too) and nothing else
    (tmp_path / "r" / "notes.txt").write_text("mine")
    (tmp_path / "r" / "stage1" / "old.txt").write_text("stale")
    for run in (tmp_path / "r", tmp_path / "r" / "stage1"):
        (run / "result.json").write_text("{}")  # what a new search must replace
    with pytest.raises(SldartsError, match="already holds a run"):
        sldarts.search(**keys)
    sldarts.search(**keys, overwrite=True)
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "r" / "stage1" / "old.txt").read_text() == "stale"
    assert json.loads((tmp_path / "r" / "result.json").read_text())["pdarts"]["stages"][0]["cells"] == 3
    assert "genotype" in json.loads((tmp_path / "r" / "stage1" / "result.json").read_text())
    marker = json.loads((tmp_path / "r" / ".sldarts-run.json").read_text())["files"]
    assert {"config.yaml", "result.json", "stage1"} <= set(marker) and "notes.txt" not in marker


ARGS = ["search", "method=pdarts", "space=darts", "pdarts_cells=3,3", "pdarts_keep=5", "pdarts_skip_drop=0.1,0.4",
        "arch_warmup=1", "epochs=2", "train_samples=32", "channels=4", "batch_size=32", "eval_samples=32",
        "deterministic=true", "threads=1", "progress=lines", "log_every=1"]


def test_two_stage_search_resumes_bit_identically_after_kill_9_in_the_second_stage(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    p = cli([*ARGS, f"out={full}"])
    assert p.wait(300) == 0, p.stderr.read()
    p = cli([*ARGS, f"out={part}"])
    wait_for_epoch(part / "stage2", 1, p)  # stage 1 finished, stage 2 one epoch in
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    p = cli([*ARGS, f"out={part}", "resume=true"])
    assert p.wait(300) == 0, p.stderr.read()
    for stage in ("stage1", "stage2"):
        a = torch.load(full / stage / "checkpoint.pt", weights_only=True)["model"]
        b = torch.load(part / stage / "checkpoint.pt", weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (full, part))
    assert ra["genotype"] == rb["genotype"] and ra["pdarts"]["stages"][1]["ops_per_edge"] == 5
    keep = json.loads((part / "stage2" / "keep.json").read_text())
    assert all(len(ops) == 5 for k in keep for ops in keep[k])
    assert sum(op == "skip_connect" for op, _ in ra["genotype"]["normal"]) <= 2
