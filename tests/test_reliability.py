"""Reliability: real kills and resumes, signals, non-finite numbers, bad input, fuzzed parsers."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datafiles import write_cifar10
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sldarts import checkpoint as ckpt
from sldarts.cli import main
from sldarts.config import SearchConfig, load_config, parse_overrides
from sldarts.data.loader import TensorLoader
from sldarts.data.readers import read_cifar10
from sldarts.errors import SldartsError
from sldarts.search_run import search
from sldarts.spaces import darts, nb201

RUN = ["epochs=3", "train_samples=192", "channels=4", "cells=1", "batch_size=32", "eval_samples=32",
       "deterministic=true", "threads=1", "progress=lines", "log_every=1"]


def cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "sldarts", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def wait_for_epoch(run: Path, epoch: int, proc, timeout=120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        m = run / "metrics.jsonl"
        rows = m.read_text().splitlines() if m.exists() else []
        if len(rows) > epoch and (run / "checkpoint.pt").exists():
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.02)
    raise AssertionError("timed out")


def killed_and_resumed(args: list[str], tmp_path: Path, kills: int = 1, waiter: bool = False) -> tuple[dict, dict]:
    """Run ``args`` to the end, and again killed with kill -9 ``kills`` times (after epoch 1, then after
    epoch 2 of the resumed run, at a varying moment) and resumed to the end: the two results, after checking
    that the final states are bit-identical. ``waiter``: the resuming process is started before the kill and
    waits for the run directory's lock (a requeued job meeting the old one still alive)."""
    full, part = tmp_path / "full", tmp_path / "part"
    p = cli([*args, f"out={full}"])
    assert p.wait(300) == 0, p.stderr.read()
    for k in range(kills):
        p = cli([*args, f"out={part}"] + (["resume=true"] if k else []))
        wait_for_epoch(part, k + 1, p)
        if waiter:  # frozen (SIGSTOP) with its lock held until the second one waits for it
            p.send_signal(signal.SIGSTOP)
            second = cli([*args, f"out={part}", "resume=true", "lock_wait=300"])
            line = second.stderr.readline()
            assert f"in use by pid {p.pid}" in line, line
        else:
            time.sleep(0.02 * (1 + os.getpid() % 5))
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    p = second if waiter else cli([*args, f"out={part}", "resume=true"])
    assert p.wait(300) == 0, p.stderr.read()
    a, b = final_state(full), final_state(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return (json.load(open(full / "result.json")), json.load(open(part / "result.json")))


@pytest.mark.parametrize("kind,extra", [
    ("search", ["optim=single"]), ("search", ["optim=bilevel", "order=1"]), ("search", ["optim=bilevel", "order=2"]),
    ("retrain", []),
])
def test_sigkill_and_resume_twice_is_bit_identical(tmp_path, kind, extra):
    if kind == "retrain":
        write_cifar10(tmp_path / "data", n_per_batch=12)
        args = ["retrain", "--arch", nb201.format_arch(["nor_conv_3x3"] * 6), "recipe=nb201", "dataset=cifar10",
                f"data_root={tmp_path / 'data'}", "epochs=3", "channels=4", "cells=1", "batch_size=16",
                "deterministic=true", "threads=1", "progress=lines", "log_every=1"]
    else:
        args = ["search", *RUN, *extra]
    ra, rb = killed_and_resumed(args, tmp_path, kills=2)  # kill -9 twice, then resume to the end
    key = "arch" if "arch" in ra else "genotype"
    assert ra[key] == rb[key]
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "part" / "metrics.jsonl")] == [0, 1, 2, 3]


def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(tmp_path):
    run = tmp_path / "r"
    p = cli(["search", *RUN, "epochs=50", f"out={run}"])
    wait_for_epoch(run, 1, p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 2
    err = p.stderr.read()
    assert "stopped by signal 15" in err and "resume=true" in err and "Traceback" not in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] >= 1


def _poison(monkeypatch, epoch: int, step: int) -> None:
    real = TensorLoader.batch

    def batch(self, e, k):
        x, y = real(self, e, k)
        if self.stream == 1 and e == epoch and k == step:
            x = x * float("nan")
        return x, y

    monkeypatch.setattr(TensorLoader, "batch", batch)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny, monkeypatch):
    _poison(monkeypatch, epoch=1, step=2)
    cfg = SearchConfig(**dict(tiny, epochs=3, cells=1, log_every=1))
    with pytest.raises(SldartsError, match="non-finite loss or parameters at epoch 2 step 3.*lower|Lower"):
        search(cfg)
    state = torch.load(Path(tiny["out"]) / "checkpoint.pt", weights_only=True)
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in floats)


def test_nan_policy_skip_drops_and_counts_the_batch(tmp_path, tiny, monkeypatch):
    _poison(monkeypatch, epoch=0, step=1)
    res = search(SearchConfig(**dict(tiny, epochs=2, cells=1, nan_policy="skip")))
    rows = [json.loads(x) for x in open(Path(tiny["out"]) / "metrics.jsonl")]
    assert rows[1]["skipped_steps"] == 1 and "skipped_steps" not in rows[2]
    assert res["arch"]


def test_corrupt_and_foreign_checkpoints(tmp_path, tiny, capsys):
    search(SearchConfig(**dict(tiny, cells=1)))
    out = Path(tiny["out"])
    before = (out / "config.yaml").read_text()
    (out / "result.json").unlink()
    (out / "checkpoint.pt").write_bytes(b"garbage")
    args = ["search", *[f"{k}={v}" for k, v in dict(tiny, cells=1).items()], "resume=true"]
    assert main(args) == 2
    assert "corrupt or not a sldarts checkpoint" in capsys.readouterr().err
    torch.save({"state_dict": {}}, out / "checkpoint.pt")  # another program's checkpoint
    assert main(args) == 2
    assert "not a sldarts checkpoint" in capsys.readouterr().err
    ckpt.save(out / "checkpoint.pt", "retrain", {"epoch": 1})
    assert main(args) == 2
    assert "retrain checkpoint" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == before  # nothing in the run directory was damaged


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save(path, "search", {"epoch": 1})

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(SldartsError, match="disk full"):
        ckpt.save(path, "search", {"epoch": 2})
    monkeypatch.undo()
    assert ckpt.load(path, "search")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_checkpoints_load_with_weights_only(tmp_path, tiny):
    search(SearchConfig(**dict(tiny, cells=1)))
    state = torch.load(Path(tiny["out"]) / "checkpoint.pt", weights_only=True)
    assert state["format"] == "sldarts-checkpoint" and "a_opt" in state and "rng" in state


# -- fuzzing ---------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.text(alphabet="|+~_0123456789abcdefghijklmnopqrstuvwxyz", max_size=120))
def test_fuzz_arch_strings(text):
    try:
        ops = nb201.parse_arch(text)
    except SldartsError:
        return
    assert nb201.format_arch(ops) == text.strip()


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers(-3, 9) | st.text(max_size=12) |
                    st.sampled_from(darts.OPS),
                    lambda c: st.lists(c, max_size=9) | st.dictionaries(st.sampled_from(
                        ["normal", "reduce", "normal_concat", "reduce_concat", "x"]), c, max_size=5), max_leaves=40))
def test_fuzz_genotypes(obj):
    try:
        g = darts.check_genotype(obj)
    except SldartsError:
        return
    assert darts.check_genotype(g) == g


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=6))
def test_fuzz_config_overrides(items):
    try:
        load_config(None, parse_overrides(items))
    except SldartsError:
        pass


@FUZZ
@given(st.data())
def test_fuzz_cifar_files(tmp_path, data):
    import tempfile

    root = Path(tempfile.mkdtemp(dir=tmp_path))
    write_cifar10(root, n_per_batch=2)
    target = root / "cifar-10-batches-py" / data.draw(st.sampled_from(["data_batch_1", "test_batch"]))
    raw = bytearray(target.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(raw) - 1)) if raw else 0
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    target.write_bytes(bytes(raw))
    try:
        tr, te = read_cifar10(root)
        assert tr.x.dtype.name == "uint8" and len(tr.x) == len(tr.y)
    except SldartsError:
        pass


def test_mutated_pickles_never_run_code(tmp_path):
    write_cifar10(tmp_path)
    target = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps({"data": os.system, "labels": []}))
    with pytest.raises(SldartsError):
        read_cifar10(tmp_path)
