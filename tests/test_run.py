"""End-to-end searches on tiny data: every space x strategy x activation, run files, resume, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sldarts import search
from sldarts.cli import main
from sldarts.config import SearchConfig
from sldarts.spaces import darts, nb201

OPTIMS = [dict(optim="single"), dict(optim="bilevel", order=1), dict(optim="bilevel", order=2),
          dict(optim="bilevel", arch_data="train")]


@pytest.mark.parametrize("space,cells", [("nb201", 1), ("darts", 3)])
@pytest.mark.parametrize("optim", OPTIMS, ids=["single", "bilevel1", "bilevel2", "bilevel-train"])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_every_combination_runs_and_writes_its_files(tiny, space, cells, optim, activation):
    res = search(SearchConfig(space=space, cells=cells, activation=activation, **optim, **tiny))
    run = tiny["out"]
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["train_loss"] is None and rows[1]["train_loss"] > 0
    for key in ("lr", "train_acc", "valid_acc", "alphas", "weights", "param_free_ratio", "seconds"):
        assert key in rows[1]
    if space == "nb201":
        nb201.parse_arch(res["arch"])
        assert rows[1]["arch"] == res["arch"]
        assert len(rows[1]["weights"]["cell"]) == 6
    else:
        assert darts.check_genotype(res["genotype"]) == res["genotype"]
        assert res["complexity"]["params"] > 1_000_000  # the C=36, 20-cell CIFAR evaluation network
        assert json.load(open(f"{run}/genotype.json")) == res["genotype"]
        assert set(rows[1]["alphas"]) == {"normal", "reduce"}
    assert 0 <= res["param_free_ratio"] <= 1
    saved = json.load(open(f"{run}/result.json"))
    assert saved["space"] == space and saved["config"]["activation"] == activation
    assert yaml.safe_load(open(f"{run}/config.yaml"))["optim"] == optim["optim"]
    state = torch.load(f"{run}/checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and "a_opt" in state and "w_opt" in state


@pytest.mark.parametrize("optim", OPTIMS, ids=["single", "bilevel1", "bilevel2", "bilevel-train"])
def test_graceful_stops_and_resumes_match_an_uninterrupted_run(tmp_path, tiny, optim):
    from sldarts.errors import SldartsError
    from sldarts.search_run import SearchRun

    base = dict(tiny, epochs=2, cells=1, train_samples=128, deterministic=True, **optim)
    full = search(SearchConfig(**dict(base, out=str(tmp_path / "full"))))
    cfg = SearchConfig(**dict(base, out=str(tmp_path / "part")))
    # A pending SIGTERM stops the loop after the step in flight: mid-epoch, with a checkpoint.
    stops = 0
    while True:
        run = SearchRun(cfg.replace(resume=stops > 0))
        run.stop.request_stop()
        try:
            res = run.run()
            break
        except SldartsError as exc:
            assert "resume=true" in str(exc)
            stops += 1
    assert stops >= 3  # stopped and resumed several times, mid-epoch and between epochs
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("w_opt", "a_opt"):
        assert a[k]["state"].keys() == b[k]["state"].keys()
    assert res["arch"] == full["arch"]
    rows = [json.loads(line) for line in open(tmp_path / "part" / "metrics.jsonl")]
    full_rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["train_loss"] for r in rows[1:]] == pytest.approx([r["train_loss"] for r in full_rows[1:]], rel=1e-9)


def test_run_directory_is_protected(tiny):
    search(SearchConfig(**tiny))
    with pytest.raises(Exception, match="already holds a run"):
        search(SearchConfig(**tiny))
    with pytest.raises(Exception, match="different run"):
        search(SearchConfig(**dict(tiny, momentum=0.5, resume=True)))
    again = search(SearchConfig(**dict(tiny, resume=True)))  # finished: returns the result
    assert "arch" in again
    # a run written before the channels_last key existed still resumes (layout is not what a run computes)
    saved = Path(tiny["out"]) / "config.yaml"
    saved.write_text("".join(line for line in saved.read_text().splitlines(True) if "channels_last" not in line))
    assert search(SearchConfig(**dict(tiny, resume=True, channels_last=False)))["arch"] == again["arch"]
    search(SearchConfig(**dict(tiny, overwrite=True, seed=1)))


def test_cli_search_and_derive(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["search", "epochs=1", "train_samples=128", "channels=4", "cells=1", "progress=none",
                 f"out={out}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main(["derive", str(out)]) == 0
    assert capsys.readouterr().out.strip() == printed["arch"]


@pytest.mark.parametrize("argv,needle", [
    (["search", "lrr=0.1"], "did you mean 'lr'"),
    (["search", "space=nb202"], "did you mean 'nb201'"),
    (["search", "epochs=abc"], "expected int"),
    (["search", "lr=-1"], "out of range"),
    (["search", "dataset=cifar10", "data_root=/nonexistent"], "cifar-10-batches-py"),
    (["search", "--config", "/nonexistent.yaml"], "does not exist"),
    (["search", "optim=single", "order=2"], "order=2 needs optim=bilevel"),
    (["derive", "/nonexistent"], "not a search run directory"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_without_traceback(argv, needle, capsys, tmp_path):
    assert main(argv + ([f"out={tmp_path / 'x'}"] if argv[0] == "search" and "=" in argv[-1] else [])) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_python_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sldarts", "search", "space=nb202"], capture_output=True, text=True)
    assert r.returncode == 2 and "nb201" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "imagenet16-120", "imagefolder", "imagenet"])
def test_search_on_each_data_format(tmp_path, tiny, dataset, monkeypatch):
    import os

    from datafiles import write_cifar10, write_cifar100, write_image_folder, write_imagenet16

    monkeypatch.setenv("SLDARTS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    space, cells = "nb201", 1
    if dataset == "cifar10":
        write_cifar10(root)
    elif dataset == "cifar100":
        write_cifar100(root, n=16)
    elif dataset == "imagenet16-120":
        write_imagenet16(root / "ImageNet16", n=16)
    elif dataset == "imagefolder":
        write_image_folder(root, size=16)
    else:  # the DARTS ImageNet search network: three stride-2 convs before the cells
        write_image_folder(root, classes=("a", "b"), per_class=4, size=40)
        os.rename(root / "test", root / "val")
        space, cells = "darts", 2
    cfg = SearchConfig(**dict(tiny, space=space, cells=cells, dataset=dataset, data_root=str(root), batch_size=8,
                              workers=0, optim="bilevel" if dataset == "cifar10" else "single"))
    res = search(cfg)
    assert res["param_free_ratio"] >= 0
    rows = [json.loads(line) for line in open(f"{tiny['out']}/metrics.jsonl")]
    assert rows[-1]["train_loss"] > 0


def test_bf16_autocast_runs(tiny):
    res = search(SearchConfig(**dict(tiny, cells=1, amp="bf16", optim="bilevel", order=2)))
    assert res["arch"] and res["valid_acc"] is not None


def test_collapse_warning_and_plain_progress_lines(tiny, monkeypatch, capsys):
    monkeypatch.setattr(nb201.NB201Supernet, "param_free_ratio", lambda self, arch: 0.5)
    res = search(SearchConfig(**dict(tiny, cells=1, progress="lines", log_every=2)))
    assert "exceeds 0.3" in res["warning"] and "lower weight learning rate" in res["warning"]
    err = capsys.readouterr().err
    assert "epoch 1/1 step 2/" in err and "warning: the search may have collapsed (parameter-free share 0.50" in err
    log = open(f"{tiny['out']}/log.txt").read()
    assert "epoch 1/1 loss" in log and "\r" not in log
