"""Reliability, second round (issue 23): a run directory owns only what it wrote and has one writer, no
non-finite state is ever checkpointed or called success, the user's mistakes are reported in the user's words,
key=value settings are taken anywhere. Most checks need no training; the rest share tiny runs."""

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_reliability import killed_and_resumed

from sldarts.cli import main, parse
from sldarts.config import SearchConfig
from sldarts.data.loader import TensorLoader
from sldarts.data.readers import ArrayData, DatasetInfo
from sldarts.errors import SldartsError
from sldarts.rundir import LOCK, MARKER, append_line, lock_run_dir, owned, unlock_run_dir
from sldarts.search_run import SearchRun, search
from sldarts.spaces import nb201

TINY = dict(epochs=1, train_samples=64, channels=4, cells=1, batch_size=32, eval_samples=32, progress="none",
            threads=1)


def one_line(capsys, rc_expected=2, args=()) -> str:
    rc = main(list(args))
    err = capsys.readouterr().err
    assert rc == rc_expected and err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err
    return err


def kv(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


# -- 1. overwrite removes only what the run wrote ---------------------------------------------------------

def test_overwrite_leaves_foreign_files_and_refuses_unmarked_folders(tmp_path, capsys):
    proj = tmp_path / "project"  # the case: a project folder with its own config and experiments
    (proj / "mlruns" / "0").mkdir(parents=True)
    (proj / "mlruns" / "0" / "meta.yaml").write_text("other experiment\n")
    (proj / "config.yaml").write_text(yaml.safe_dump({"epochs": 1}))
    (proj / "cell_notes.md").write_text("notes\n")
    (proj / "cellular.py").write_text("x = 1\n")
    before = sorted(str(p.relative_to(proj)) for p in proj.rglob("*"))
    err = one_line(capsys, 2, ["search", "--config", str(proj / "config.yaml"), f"out={proj}", "overwrite=true"])
    assert MARKER in err and "overwrite=true removes only" in err
    assert sorted(str(p.relative_to(proj)) for p in proj.rglob("*")) == before  # nothing touched
    err = one_line(capsys, 2, ["search", "--config", str(proj / "config.yaml"), f"out={proj}"])
    assert "holds a config.yaml that no sldarts run marked as its own" in err
    (proj / "config.yaml").unlink()
    (proj / "log.txt").write_text("my log\n")  # a fresh run would write into the user's log.txt
    err = one_line(capsys, 2, ["search", f"out={proj}", *kv(TINY)])
    assert "log.txt" in err and "did not write" in err
    # a run of its own: overwrite removes its files, keeps every file and folder added by someone else
    run = tmp_path / "run"
    assert main(["search", f"out={run}", *kv(TINY)]) == 0
    assert {"config.yaml", "checkpoint.pt", "metrics.jsonl", "result.json"} <= set(owned(run))
    (run / "mlruns").mkdir()
    (run / "mlruns" / "other").write_text("x")
    for name in ("cell_notes.md", "cellular.py", "notes.txt"):
        (run / name).write_text(name)
    first = json.loads((run / "result.json").read_text())
    assert main(["search", f"out={run}", *kv(TINY), "overwrite=true", "seed=1"]) == 0
    for name in ("cell_notes.md", "cellular.py", "notes.txt", "mlruns/other"):
        assert (run / name).read_text() == name.split("/")[-1].replace("other", "x")
    assert json.loads((run / "result.json").read_text())["config"]["seed"] == 1 != first["config"]["seed"]
    # report on one finished run; a damaged result.json is one line on resume and derive
    assert main(["report", str(run)]) == 0 and "param-free" in capsys.readouterr().out
    (run / "result.json").write_text("{not json")
    assert "not valid JSON" in one_line(capsys, 2, ["derive", str(run)])
    assert "not valid JSON" in one_line(capsys, 2, ["search", f"out={run}", *kv(TINY), "seed=1", "resume=true"])


# -- 4. one writer ----------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_frees_the_lock(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    r, w = os.pipe()
    pid = os.fork()  # the holder: another process with the run directory's lock
    if pid == 0:
        try:
            lock_run_dir(run)
            os.write(w, b"1")
            time.sleep(120)
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"1"
        with pytest.raises(SldartsError, match=f"in use by pid {pid} on .*lock_wait=SECONDS"):
            lock_run_dir(run)
        with pytest.raises(SldartsError, match="in use by"):
            search(SearchConfig(**dict(TINY, out=str(run))))
        assert sorted(p.name for p in run.iterdir()) == [LOCK]  # refused before writing anything
    finally:
        os.kill(pid, signal.SIGKILL)  # kill -9: the kernel drops the flock, no stale lock is left behind
        os.waitpid(pid, 0)
    lock_run_dir(run, wait=5)
    unlock_run_dir(run)


def test_kill_9_while_a_second_search_waits_for_the_lock_resumes_bit_identically(tmp_path):
    args = ["search", "epochs=3", "train_samples=64", "channels=4", "cells=1", "batch_size=32", "eval_samples=32",
            "deterministic=true", "threads=1", "progress=lines", "log_every=1"]
    ra, rb = killed_and_resumed(args, tmp_path, waiter=True)
    assert ra["arch"] == rb["arch"]
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "part" / "metrics.jsonl")] == [0, 1, 2, 3]  # each once


# -- 2, 5, 6, 8. finite or nothing; advice that resume accepts ---------------------------------------------

@pytest.mark.parametrize("items,message", [
    (["lr=nan"], "lr=nan is not a finite number"), (["lr=inf"], "lr=inf is not a finite number"),
    (["momentum=nan"], "momentum=nan is not a finite"), (["alpha_init=nan"], "alpha_init=nan is not a finite"),
    (["arch_lr=-inf"], "arch_lr=-inf is not a finite"), (["seed=99999999999999999999"], "seed=.* out of range"),
    (["optim=single", "arch_data=train"], "arch_data=train applies to optim=bilevel only"),
    (["optim=single", "train_portion=0.2"], "train_portion=0.2 splits the data only for optim=bilevel"),
])
def test_validation_refuses_non_finite_unbounded_and_ignored_values(items, message, capsys):
    import re

    assert re.search(message, one_line(capsys, 2, ["search", *items]))


def _poison_state(monkeypatch, epoch: int, what: str) -> None:
    """After the last step of ``epoch`` (1-based), a weight or the weight optimiser's momentum becomes NaN while
    the loss stays finite: what lr=nan or momentum=nan did to 0.2.0, which checkpointed it and exited 0."""
    real = SearchRun.train_step

    def step(self, x, y):
        out = real(self, x, y)
        if self.epoch + 1 == epoch and self.step_in_epoch + 1 == len(self.train_loader):
            with torch.no_grad():
                if what == "weights":
                    list(self.model.weights())[0].fill_(float("nan"))
                else:
                    next(iter(self.w_opt.state.values()))["momentum_buffer"].fill_(float("nan"))
        return out

    monkeypatch.setattr(SearchRun, "train_step", step)


def test_non_finite_state_is_never_checkpointed_and_the_advice_can_be_followed(tmp_path, monkeypatch):
    out = tmp_path / "r"
    cfg = dict(TINY, epochs=2, lr=0.1, out=str(out))
    _poison_state(monkeypatch, 1, "momentum")  # the first epoch: no checkpoint yet
    with pytest.raises(SldartsError, match="non-finite weights or optimiser state.*no checkpoint yet.*resume=true "
                                           "lr=0.01 \\(or nan_policy=skip\\)"):
        search(**cfg)
    assert not (out / "checkpoint.pt").exists()
    monkeypatch.undo()
    _poison_state(monkeypatch, 2, "weights")
    with pytest.raises(SldartsError, match="after epoch 2 .*the last good checkpoint .* is kept.*lr=0.01"):
        search(**dict(cfg, resume=True))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for part in ("model", "w_opt", "a_opt") for t in _floats(state[part]))
    monkeypatch.undo()
    # metrics.jsonl deleted: resume is refused rather than finishing with valid_acc null
    (out / "metrics.jsonl").rename(tmp_path / "m")
    with pytest.raises(SldartsError, match="metrics.jsonl lacks epochs"):
        search(**dict(cfg, resume=True))
    (tmp_path / "m").rename(out / "metrics.jsonl")
    # the advice: resume with a lower lr (and nan_policy=skip); both are accepted and recorded
    res = search(**dict(cfg, resume=True, lr=0.01, nan_policy="skip"))
    assert res["config"]["lr"] == 0.01
    hist = [json.loads(x) for x in open(out / "history.jsonl")]
    changes = {"lr": [0.1, 0.01], "nan_policy": ["stop", "skip"]}
    assert hist == [dict(hist[0], epoch=1, step_in_epoch=0, changes=changes)]
    assert yaml.safe_load((out / "config.yaml").read_text())["lr"] == 0.01
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    # epoch 2 of a cosine schedule over 2 epochs from base lr 0.01 down to lr_min 0.001: the mean of the two
    assert rows[2]["lr"] == pytest.approx(0.001 + (0.01 - 0.001) / 2, rel=1e-12)


def _floats(obj):
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _floats(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _floats(v)]
    return []


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_nan_policy_skip_with_every_step_skipped_reports_and_restores_batchnorm(tmp_path, monkeypatch, capsys):
    from sldarts.data.loader import TensorLoader as TL

    real = TL.batch

    def batch(self, e, k):
        x, y = real(self, e, k)
        return (x * float("nan"), y) if self.stream == 1 and e == 0 else (x, y)

    monkeypatch.setattr(TL, "batch", batch)
    res = search(**dict(TINY, out=str(tmp_path / "r"), nan_policy="skip", progress="lines", log_every=1))
    assert "skipped epoch 1 step 2" in capsys.readouterr().err  # progress lines with nothing to average
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in _floats(state["model"]))  # running stats not poisoned
    assert res["arch"]


# -- 7. the user's mistakes in the user's words -----------------------------------------------------------

USER = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from sldarts.nn import Choice

    class Net(nn.Module):
        def __init__(self, num_classes, in_channels, out=None, features=4, wants=None):
            super().__init__()
            c = wants or in_channels
            self.pick = Choice({"a": nn.Conv2d(c, 4, 3, padding=1), "b": nn.Conv2d(c, 4, 1)})
            self.head = nn.Linear(features, out or num_classes)

        def forward(self, x):
            return self.head(self.pick(x).mean((2, 3)))

    def good(num_classes, in_channels):
        return Net(num_classes, in_channels)

    def few_logits(num_classes, in_channels):
        return Net(num_classes, in_channels, out=3)

    def bad_linear(num_classes, in_channels):
        return Net(num_classes, in_channels, features=7)

    def rgb(num_classes, in_channels):
        return Net(num_classes, in_channels, wants=3)

    def broken_build(num_classes, in_channels):
        raise ValueError("no such layer size")

    def labels(bad_train, bad_test):
        def build():
            x = torch.randn(40, 1, 8, 8)
            y = torch.arange(40) % 10
            ty = torch.arange(40) % 10
            if bad_train is not None:
                y[bad_train] = -1
            if bad_test is not None:
                ty[bad_test] = 10
            t = torch.utils.data.TensorDataset
            return t(x, y), t(x, ty)
        return build

    negative = labels(5, None)
    test_out_of_range = labels(None, 7)
""")


@pytest.mark.parametrize("space,dataset,message", [
    ("few_logits", "digits", r"your model \(mine.py:Net\) returns 3 logits for 10 classes on a batch of shape "
                             r"\(32, 1, 8, 8\); make it return \(batch, 10\) logits"),
    ("bad_linear", "digits", r"your code mine.py:Net.forward \(line \d+\) on an input of shape \(32, 1, 8, 8\) raised "
                             r"RuntimeError: mat1 and mat2.*a Linear layer gets 4 features but expects 7"),
    ("rgb", "digits", r"your code mine.py:Net.forward .* the data has 1 channel\(s\) but the layer expects 3"),
    ("broken_build", "digits", r"your code mine.py:broken_build \(line \d+\) raised ValueError: no such layer size"),
    ("good", "mine.py:negative", r"training data: item 5 has label -1, outside the 10 classes 0..9"),
    ("good", "mine.py:test_out_of_range", r"test data: item 7 has label 10, outside the 10 classes"),
    ("exits", "digits", r"importing .*mine.py called sys.exit\(3\)"),
])
def test_user_mistakes_are_one_line_naming_the_users_code(tmp_path, capsys, monkeypatch, space, dataset, message):
    import re

    monkeypatch.chdir(tmp_path)
    Path("mine.py").write_text(USER + ("\nsys.exit(3)\n" if space == "exits" else ""))
    sp = f"mine.py:{space}"  # 'exits': the import fails first
    err = one_line(capsys, 2, ["search", f"space={sp}", f"dataset={dataset}", "epochs=1", "train_samples=40",
                               "batch_size=32" if dataset == "digits" else "batch_size=8", "progress=none",
                               "workers=0", "out=r", "threads=1"])
    assert re.search(message, err), err


def test_array_labels_are_checked_on_every_split():
    info = DatasetInfo("x", 10, 1, (0.5,), (0.5,))
    data = ArrayData(np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 3, 12, 1]))
    with pytest.raises(SldartsError, match="test data: item 2 has label 12, outside the 10 classes"):
        TensorLoader(data, info, 2, "cpu", augment=False, shuffle=False, seed=0, stream=3)


# -- 9, 10. the command line; files outside the run directory ----------------------------------------------

def test_key_value_settings_anywhere_among_the_options(tmp_path, capsys):
    assert parse(["retrain", "RUN", "--recipe", "nb201", "epochs=1"]).items == ["RUN", "epochs=1"]
    assert parse(["search", "out=RUN", "--config", "F", "epochs=1"]).overrides == ["out=RUN", "epochs=1"]
    err = one_line(capsys, 2, ["derive", "RUN", "epochs=1"])
    assert "unrecognized arguments: epochs=1 (key=value settings go to search, retrain and sweep)" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\n")
    err = one_line(capsys, 2, ["search", "out=x", "--config", str(cfg), "lr=nan"])  # read, then validated
    assert "lr=nan" in err


def test_no_file_is_written_through_a_symlink_or_into_a_file(tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    run = tmp_path / "r"
    run.mkdir()
    (run / MARKER).write_text(json.dumps({"files": [MARKER]}))
    (run / "log.txt").symlink_to(outside)
    err = one_line(capsys, 2, ["search", f"out={run}", *kv(TINY)])
    assert "log.txt is a symbolic link" in err and outside.read_text() == "precious\n"
    (run / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(SldartsError, match="symbolic link"):
        append_line(run / "metrics.jsonl", "{}")
    assert outside.read_text() == "precious\n"
    arch = nb201.format_arch(["nor_conv_3x3"] * 6)
    assert "is a file, not a folder" in one_line(capsys, 2, ["plot", "--arch", arch, "--out", f"{outside}/x"])
    from sldarts.export import export

    with pytest.raises(SldartsError, match="is a directory; name the file to write"):
        export(run, "torchscript", tmp_path)


def test_code_a_run_directory_names_is_announced_before_it_is_imported(tmp_path, capsys, monkeypatch):
    from sldarts.cells import run_space

    monkeypatch.chdir(tmp_path)
    Path("named.py").write_text("import sys\nprint('IMPORTED', file=sys.stderr)\n" + USER)
    run_space("named.py:good", tmp_path / "run")
    run_space("named.py:good", tmp_path / "run")  # said once
    err = capsys.readouterr().err
    assert err.index("sldarts: importing named.py (space: named.py:good in ") < err.index("IMPORTED")
    assert err.count("sldarts: importing") == 1


def test_a_run_from_before_a_key_existed_resumes_and_overwrite_keeps_unmarked_folders(tmp_path):
    """A key added later ran at its default in an older run (resume compares it so); overwrite removes a
    claimed folder only if it is a run of its own (what that run wrote) or a dashboard's."""
    from sldarts.config import load_config
    from sldarts.rundir import OWN, claim, prepare_run_dir

    run = tmp_path / "r"
    run.mkdir()
    cfg = load_config(None, {"out": str(run), "method": "setn"})
    old = {k: v for k, v in cfg.to_dict().items() if k != "setn_select"}  # an older sldarts had no such key
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    claim(run, [*OWN, "stage1", "tensorboard"])
    out, resuming = prepare_run_dir(cfg.replace(resume=True), run)
    unlock_run_dir(out)
    assert resuming
    (run / "config.yaml").write_text(yaml.safe_dump({**old, "setn_select": "top"}))
    with pytest.raises(SldartsError, match="setn_select='top' there, 'sample' now"):
        prepare_run_dir(cfg.replace(resume=True), run)
    for d in ("stage1", "tensorboard"):
        (run / d).mkdir()
        (run / d / "notes.txt").write_text("mine")
    out, _ = prepare_run_dir(cfg.replace(overwrite=True), run)
    unlock_run_dir(out)
    assert (run / "stage1" / "notes.txt").read_text() == "mine" and not (run / "tensorboard").exists()
