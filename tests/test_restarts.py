"""Restarts without a person: resume=auto on every state of a run directory, and torchrun --max-restarts
bringing a job back after one rank is killed with kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_reliability import final_state

from sldarts.config import load_config
from sldarts.errors import SldartsError
from sldarts.search_run import SearchRun, search

RUN = dict(epochs=2, train_samples=96, channels=4, cells=1, batch_size=32, eval_samples=32, progress="none",
           deterministic=True, threads=1)


def test_resume_auto_on_empty_half_finished_and_finished_directories(tmp_path):
    out = tmp_path / "r"
    full = search(out=str(tmp_path / "full"), **RUN)
    res = search(out=str(out), resume="auto", **RUN)  # empty: starts
    assert res["arch"] == full["arch"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    mtime = (out / "result.json").stat().st_mtime_ns
    again = search(out=str(out), resume="auto", **RUN)  # finished: returns the result, runs nothing
    assert again["arch"] == res["arch"] and (out / "result.json").stat().st_mtime_ns == mtime
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in final_state(tmp_path / "full").items())
    # half-finished: stopped (as by SIGTERM) after its first step, with a mid-epoch checkpoint
    half = tmp_path / "half"
    run = SearchRun(load_config(None, dict(out=str(half), resume="auto", **RUN)))
    run.stop.request_stop()
    with pytest.raises(SldartsError, match="stopped by signal"):
        run.run()
    assert torch.load(half / "checkpoint.pt", weights_only=True)["step_in_epoch"] == 1
    resumed = search(out=str(half), resume="auto", **RUN)
    assert resumed["arch"] == full["arch"]
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in final_state(half).items())  # bit-identical
    assert [json.loads(x)["epoch"] for x in open(half / "metrics.jsonl")] == [0, 1, 2]


def _rank_pid(agent: int, rank: int) -> int | None:
    """The process of ``rank`` among the torchrun agent's descendants (from its environment)."""
    todo, seen = [agent], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                pass
    for pid in seen[1:]:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b" ".join(env):
            return pid
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=2",
           f"--master-port={port}", "-m", "sldarts", "search", *args]
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the ranks
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc")
def test_torchrun_restarts_a_killed_rank_and_ends_like_an_uninterrupted_run(tmp_path):
    args = ["epochs=3", "train_samples=192", "channels=4", "cells=1", "batch_size=32", "eval_samples=32",
            "deterministic=true", "threads=1", "progress=lines", "log_every=1", "resume=auto", "device=cpu"]
    ref = _torchrun([*args, f"out={tmp_path / 'ref'}"], _free_port(), tmp_path / "ref.log")
    assert ref.wait(300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    out = tmp_path / "run"
    p = _torchrun([*args, f"out={out}"], _free_port(), tmp_path / "run.log")
    t0 = time.time()
    while not ((out / "checkpoint.pt").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert p.poll() is None and time.time() - t0 < 120, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.02)
    victim = _rank_pid(p.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)  # one rank dies mid-run; the agent restarts both
    assert p.wait(300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    err = (tmp_path / "run.log").read_text()
    a = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert torch.equal(a["arch.cell"], b["arch.cell"])
    assert json.load(open(tmp_path / "ref" / "result.json"))["arch"] == json.load(open(out / "result.json"))["arch"]
    assert "resuming after epoch" in (out / "log.txt").read_text() and "restart" in err.lower()
