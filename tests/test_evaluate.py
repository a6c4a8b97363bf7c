"""Evaluation: published parameter / multiply-add counts, built-in cells, retraining, diagrams."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datafiles import write_cifar10, write_cifar100, write_image_folder

from sldarts.cli import main
from sldarts.config import load_retrain_config
from sldarts.errors import SldartsError
from sldarts.evaluate.complexity import complexity, count_params
from sldarts.evaluate.retrain import RetrainRun, retrain
from sldarts.plot import plot_cells
from sldarts.spaces.darts import DartsNetwork
from sldarts.spaces.genotypes import GENOTYPES, resolve_genotype

ALL_CONV3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def test_darts_v2_published_counts():
    net = DartsNetwork(GENOTYPES["DARTS_V2"], 36, 20, 10, auxiliary=True)
    assert count_params(net) == 3_349_342
    assert sum(p.numel() for p in net.parameters()) == 3_825_768  # with the auxiliary head
    im = complexity("darts", GENOTYPES["DARTS_V2"], "imagenet")
    assert im["params"] == 4_718_752 and im["macs"] == 529_911_552


def test_nb201_published_counts():
    assert complexity("nb201", ALL_CONV3, "cifar10") == {
        "params": 1_531_546, "params_m": 1.531546, "macs": 220_119_680, "macs_m": 220.11968}


def test_builtin_cells_match_the_papers_lists():
    assert set(GENOTYPES) == {"DARTS_V1", "DARTS_V2", "PDARTS", "PC_DARTS_CIFAR", "PC_DARTS_IMAGENET",
                              "DRNAS_CIFAR", "DRNAS_IMAGENET"}
    assert GENOTYPES["PDARTS"]["normal"][-1] == ["dil_conv_5x5", 4]
    assert GENOTYPES["DRNAS_CIFAR"]["reduce"][6] == ["skip_connect", 4]
    assert resolve_genotype("darts_v1") == GENOTYPES["DARTS_V1"]
    for g in GENOTYPES.values():
        net = DartsNetwork(g, 8, 5, 10, auxiliary=False)
        assert net(torch.randn(2, 3, 32, 32))[0].shape == (2, 10)
    with pytest.raises(SldartsError, match="neither a built-in"):
        resolve_genotype("NOPE")


def test_complexity_cli(capsys):
    assert main(["complexity", "--space", "nb201", "--arch", ALL_CONV3, "--dataset", "cifar10"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == 220_119_680
    assert main(["complexity", "--space", "nb201", "--arch", "|bad~0|", "--dataset", "cifar10"]) == 2


def tiny_retrain(tmp_path, **kw):
    base = dict(epochs=1, batch_size=8, channels=4, cells=3, progress="none", out=str(tmp_path / "rt"),
                data_root=str(tmp_path / "data"), deterministic=True)
    base.update(kw)
    return load_retrain_config(None, base)


def _stop_and_resume(cfg):
    """Stop after the first step (a pending SIGTERM), then resume to the end."""
    run = RetrainRun(cfg)
    run.stop.request_stop()
    with pytest.raises(SldartsError, match="resume=true"):
        run.run()
    assert (Path(cfg.out) / "checkpoint.pt").exists()
    return retrain(cfg.replace(resume=True))


def test_retrain_darts_cifar_recipe(tmp_path):
    write_cifar10(tmp_path / "data")
    cfg = tiny_retrain(tmp_path, recipe="darts-cifar", genotype="DARTS_V2")
    assert (cfg.cutout, cfg.drop_path, cfg.auxiliary_weight, cfg.lr, cfg.batch_size) == (16, 0.2, 0.4, 0.025, 8)
    res = _stop_and_resume(cfg)
    assert res["params"] > 0 and 0 <= res["top1"] <= 1 and res["macs"] > 0
    rows = [json.loads(line) for line in open(tmp_path / "rt" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [0, 1] and torch.isfinite(torch.tensor(rows[1]["train_loss"]))
    # the DARTS protocol reads the test split each epoch: named so, never valid_acc
    assert "valid_acc" not in rows[1] and res["top1"] == rows[1]["test_acc"] == res["test_acc"]
    assert json.load(open(tmp_path / "rt" / "genotype.json")) == GENOTYPES["DARTS_V2"]
    assert torch.load(tmp_path / "rt" / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_retrain_nb201_recipe_from_an_arch_string(tmp_path):
    write_cifar100(tmp_path / "data", n=16)
    cfg = tiny_retrain(tmp_path, recipe="nb201", arch=ALL_CONV3, dataset="cifar100", cells=1)
    assert cfg.nesterov and cfg.lr == 0.1 and cfg.weight_decay == 5e-4
    res = _stop_and_resume(cfg)
    assert res["arch"] == ALL_CONV3 and res["top1"] is not None


def test_retrain_pdarts_imagenet_recipe(tmp_path):
    write_image_folder(tmp_path / "data", classes=[f"n{i:03d}" for i in range(6)], per_class=2, size=72)
    os.rename(tmp_path / "data" / "test", tmp_path / "data" / "val")
    # 224 px: the ImageNet auxiliary head needs the 7x7 features it gets after the second reduction
    cfg = tiny_retrain(tmp_path, recipe="pdarts-imagenet", genotype="PDARTS", image_size=224, workers=0,
                       batch_size=6, cells=3)
    assert (cfg.lr_schedule, cfg.warmup_epochs, cfg.label_smoothing, cfg.weight_decay) == ("linear", 5, 0.1, 3e-5)
    res = _stop_and_resume(cfg)
    assert "top5" in res and res["top5"] >= res["top1"]


def test_lr_schedules():
    from sldarts.evaluate.retrain import lr_lambda

    f = lr_lambda(250, 5, "linear")
    assert [f(e) for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(5) == 1.0 and f(249) == pytest.approx(1 / 245)
    g = lr_lambda(600, 0, "cosine")
    assert g(0) == 1.0 and g(300) == pytest.approx(0.5)


def test_png_cell_diagram_without_graphviz(tmp_path):
    paths = plot_cells("darts", GENOTYPES["DARTS_V2"], tmp_path / "v2", use_graphviz=False)
    names = sorted(p.name for p in paths)
    assert names == ["v2_normal.dot", "v2_normal.pdf", "v2_normal.png", "v2_reduce.dot", "v2_reduce.pdf",
                     "v2_reduce.png"]
    png = (tmp_path / "v2_normal.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    dot = (tmp_path / "v2_normal.dot").read_text()
    assert dot.count("->") == 8 + 4 and '"c_{k-1}" -> "0" [label="sep_conv_3x3"' in dot
    nb = plot_cells("nb201", "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|none~2|",
                    tmp_path / "nb", use_graphviz=False)
    assert (tmp_path / "nb_cell.dot").read_text().count("->") == 3  # `none` edges are not drawn
    assert len(nb) == 3


def test_two_process_retrain_ends_with_identical_weights(tmp_path):
    write_cifar10(tmp_path / "data", n_per_batch=8)
    dump = tmp_path / "dump"
    dump.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29513",
           str(Path(__file__).parent / "ddp_worker.py"), "retrain", str(dump), "recipe=darts-cifar",
           "genotype=DARTS_V2", "epochs=1", "batch_size=8", "channels=4", "cells=3", "progress=none",
           "device=cpu", f"data_root={tmp_path / 'data'}", f"out={tmp_path / 'ddp'}", "threads=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (torch.load(dump / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "ddp" / "result.json").exists()
