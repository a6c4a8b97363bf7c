"""Sweeps: grid expansion, resumption, aggregation on known inputs, and a small end-to-end sweep."""

import json
from pathlib import Path

import pytest
import yaml

from sldarts.cli import main
from sldarts.errors import SldartsError
from sldarts.report import aggregate, markdown, mean_std, report
from sldarts.sweep import load_sweep, run_sweep

SWEEPS = sorted((Path(__file__).parent.parent / "src" / "sldarts" / "configs" / "sweeps").glob("*.yaml"))
TINY = ["epochs=1", "train_samples=96", "channels=4", "cells=1", "batch_size=32", "eval_samples=32"]


def test_grid_expansion_crosses_axes_and_variants(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"base": {"epochs": 3}, "grid": {"lr": [0.001, 0.005]},
                                    "variants": [{"optim": "single"}, {"optim": "bilevel", "order": 2}]}))
    base, points = load_sweep(spec, ["seed=0,1,2", "channels=8"])
    assert base == {"epochs": 3, "channels": 8}
    assert len(points) == 2 * 2 * 3
    assert {json.dumps(p.settings, sort_keys=True) for p in points} == {
        json.dumps({**v, "lr": lr, "seed": s}, sort_keys=True)
        for v in ({"optim": "single"}, {"optim": "bilevel", "order": 2}) for lr in (0.001, 0.005) for s in (0, 1, 2)}
    assert points[0].name == "optim=single_lr=0.001_seed=0"


def test_every_point_is_validated_before_anything_runs(tmp_path):
    with pytest.raises(SldartsError, match="did you mean 'sigmoid'"):
        load_sweep(None, ["activation=softmax,sigmod"])


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_sweeps_expand(path):
    expected = {"table1.yaml": 27, "table2.yaml": 72, "table3.yaml": 9, "table5-darts-imagenet.yaml": 18,
                "table3-methods.yaml": 33, "table4-methods-darts.yaml": 21}
    assert len(load_sweep(path, [])[1]) == expected[path.name]


def test_mean_std_on_known_inputs():
    assert mean_std([94.36, 94.36, 94.36]) == (pytest.approx(94.36), pytest.approx(0.0))
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(1.118033988749895)  # population std, as numpy.std


def _fake_run(d: Path, optim: str, seed: int, test: float, arch: str = "x") -> None:
    d.mkdir(parents=True)
    bench = {"index": 1, "arch": arch, "cifar10": {"valid": test - 3, "test": test},
             "cifar100": {"valid": None, "test": test - 20}, "imagenet16-120": {"valid": None, "test": None}}
    res = {"space": "nb201", "arch": arch, "param_free_ratio": 0.0, "valid_acc": 0.5, "benchmark": bench,
           "config": {"optim": optim, "seed": seed, "lr": 0.005, "out": str(d)}}
    (d / "result.json").write_text(json.dumps(res))


def test_report_aggregates_seeds_per_setting(tmp_path):
    # seeds 0 and 2 of single-level derive cell A, seed 1 cell B; both bi-level seeds derive cell x
    for i, (optim, seed, acc, arch) in enumerate([("single", 0, 94.0, "A"), ("single", 1, 94.5, "B"),
                                                  ("single", 2, 95.0, "A"), ("bilevel", 0, 54.3, "x"),
                                                  ("bilevel", 1, 54.3, "x")]):
        _fake_run(tmp_path / f"p{i}", optim, seed, acc, arch)
    (tmp_path / "unfinished").mkdir()
    md = report(tmp_path)
    assert "| optim | CIFAR-10 valid | CIFAR-10 test | CIFAR-100 test | n | distinct cells | modal cell |" in md
    assert "| single | 91.50 ± 0.41 | 94.50 ± 0.41 | 74.50 ± 0.41 | 3 | 2 | C1 (2/3 seeds) |" in md
    assert "| bilevel | 51.30 ± 0.00 | 54.30 ± 0.00 | 34.30 ± 0.00 | 2 | 1 | C2 (2/2 seeds) |" in md
    assert "- C1: `A`" in md and "- C2: `x`" in md
    csv_text = (tmp_path / "report.csv").read_text().splitlines()
    assert csv_text[0].startswith("optim,CIFAR-10 valid mean,CIFAR-10 valid std")
    assert (tmp_path / "report.md").read_text().strip() == md


def test_report_without_benchmark_uses_supernet_numbers():
    runs = [{"config": {"lr": lr, "seed": s}, "result": {"param_free_ratio": r, "valid_acc": 0.9}}
            for lr, s, r in [(0.1, 0, 0.5), (0.1, 1, 1.0), (0.01, 0, 0.0)]]
    varying, columns, rows = aggregate(runs)
    assert varying == ["lr"] and columns == ["supernet acc", "param-free ratio"]
    assert "| 0.1 | 90.00 ± 0.00 | 0.750 ± 0.250 | 2 | 1 | C1 (2/2 seeds) |" in markdown(varying, columns, rows)


def test_small_sweep_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "optim=single,bilevel", "seed=0,1", "--parallel", "2", "--out", str(out)]) == 0
    md = capsys.readouterr().out
    assert len([x for x in md.splitlines() if x.startswith("| single |") or x.startswith("| bilevel |")]) == 2
    assert all(" | 2 | " in x for x in md.splitlines() if x.startswith("| single") or x.startswith("| bilevel"))
    assert "param-free ratio" in md
    # half-finished: remove one point's result, leave its checkpoint: only that point runs again, resumed
    victim = out / "optim=bilevel_seed=1"
    (victim / "result.json").unlink()
    before = {p: (p / "result.json").stat().st_mtime_ns for p in out.iterdir() if (p / "result.json").exists()}
    printed = run_sweep(None, [*TINY, "optim=single,bilevel", "seed=0,1"], out, print_only=True, log=lambda m: None)
    assert [p["status"] for p in printed].count("partial") == 1
    cmd = capsys.readouterr().out.strip().splitlines()
    assert len(cmd) == 1 and "resume=true" in cmd[0] and "optim=bilevel" in cmd[0]
    run_sweep(None, [*TINY, "optim=single,bilevel", "seed=0,1"], out, log=lambda m: None)
    assert (victim / "result.json").exists()
    assert before == {p: (p / "result.json").stat().st_mtime_ns for p in before}
    with pytest.raises(SldartsError, match="other base settings"):
        run_sweep(None, ["epochs=2", "seed=0,1"], out, log=lambda m: None)


def test_report_puts_the_papers_table3_beside_each_method(tmp_path):
    for i, (method, acc) in enumerate([("gdas", 93.0), ("gdas", 94.0), ("pcdarts", 92.0)]):
        _fake_run(tmp_path / f"p{i}", "bilevel", i, acc)
        res = json.loads((tmp_path / f"p{i}" / "result.json").read_text())
        res["config"]["method"] = method
        (tmp_path / f"p{i}" / "result.json").write_text(json.dumps(res))
    md = report(tmp_path)
    head = md.splitlines()[0]
    assert "| paper CIFAR-10 test |" in head and "| paper CIFAR-100 test |" in head
    gdas = [x for x in md.splitlines() if x.startswith("| gdas ")][0]
    assert "| 93.50 ± 0.50 |" in gdas and "| 93.51 ± 0.13 |" in gdas and "| 70.61 ± 0.26 |" in gdas
    assert [x for x in md.splitlines() if x.startswith("| pcdarts ")][0].split(" | ").count("-") == 3  # not in it


def test_commas_inside_values_and_list_keys_are_not_grid_axes(tmp_path, capsys):
    from sldarts.sweep import parse_sweep_args

    base, grid = parse_sweep_args(["logger=tensorboard,wandb", "analysis_cells=first,last", "seed=0,1",
                                   'out="a,b"', "data_root=c\\,d", 'lr=1,"2,3"'])
    assert base == {"logger": "tensorboard,wandb", "analysis_cells": "first,last", "out": "a,b", "data_root": "c,d"}
    assert grid == {"seed": [0, 1], "lr": [1, "2,3"]}  # a quoted value stays one string; the others are parsed
    _, points = load_sweep(None, ["logger=tensorboard,wandb", "seed=0,1"])
    assert [p.settings for p in points] == [{"seed": 0}, {"seed": 1}]
    assert main(["sweep", "logger=tensorboard,wandb", "seed=0,1", "--print", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 2 and all("logger" not in line for line in out.splitlines())
    assert "grid: seed (2: 0 | 1) = 2 points" in err
    with pytest.raises(SldartsError, match="unclosed quote"):
        load_sweep(None, ['seed="0,1'])


def test_gpus_per_point_packs_points_onto_free_gpus(tmp_path, capsys, monkeypatch):
    assert main(["sweep", "seed=0,1", "--print", "--gpus-per-point", "2", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all("torch.distributed.run --standalone --nproc-per-node=2 -m sldarts search" in x for x in lines)
    started, alive = [], set()

    class FakeProc:  # a point that runs for two polls of the pool
        def __init__(self, cmd, env, **kw):
            self.pid, self.polls, self.returncode = len(started), 0, None
            started.append((env["CUDA_VISIBLE_DEVICES"], sorted(alive)))
            alive.add(env["CUDA_VISIBLE_DEVICES"])
            self.gpus = env["CUDA_VISIBLE_DEVICES"]

        def poll(self):
            self.polls += 1
            if self.polls >= 2:
                self.returncode = 0
                alive.discard(self.gpus)
            return self.returncode

    import sldarts.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod.subprocess, "Popen", FakeProc)
    monkeypatch.setattr(sweep_mod.time, "sleep", lambda s: None)
    run_sweep(None, ["seed=0,1,2"], tmp_path / "pool", gpus=["0", "1", "2", "3"], gpus_per_point=2,
              log=lambda m: None)
    # two points at once on disjoint pairs; the third waits for a pair to come free
    assert started[:2] == [("0,1", []), ("2,3", ["0,1"])] and len(started[2][1]) < 2
    with pytest.raises(SldartsError, match="needs at least 4 GPUs"):
        run_sweep(None, ["seed=0,1"], tmp_path, gpus=["0", "1"], gpus_per_point=4, log=lambda m: None)


def test_darts_space_report_prints_table4_beside_the_cells(tmp_path):
    # DARTS V2's published cell on the ImageNet network has 4.7M parameters (Liu et al., Table 3; the paper's
    # Table 4 lists 4.7): the report counts each derived cell there and prints the paper's row beside it
    from sldarts.spaces import get_space

    v2 = get_space("darts").parse("DARTS_V2")  # a dict, as result.json holds it
    for method in ("darts", "pcdarts"):
        d = tmp_path / method
        d.mkdir()
        res = {"space": "darts", "arch_key": "genotype", "genotype": v2, "param_free_ratio": 0.125,
               "valid_acc": 0.5, "config": {"method": method, "seed": 0, "space": "darts"}}
        (d / "result.json").write_text(json.dumps(res))
    md = report(tmp_path)
    head, _, darts, pc = md.splitlines()[:4]
    assert "paper ImageNet FLOPs (M)" in head and "ImageNet params (M)" in head
    assert "| 4.72 ± 0.00 |" in darts and "| 574 | 4.7 | 73.3 |" in darts
    assert "| 597 | 5.3 | 75.8 |" in pc
