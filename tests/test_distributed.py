"""torchrun (gloo, CPU): one search over 2 processes keeps ranks identical and resumes in 1 process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from sldarts.config import SearchConfig, load_config, parse_overrides
from sldarts.search_run import search

WORKER = str(Path(__file__).parent / "ddp_worker.py")
COMMON = ["space=nb201", "cells=1", "channels=4", "train_samples=128", "batch_size=32", "eval_samples=64",
          "progress=none", "device=cpu", "threads=1"]


def torchrun(args, port, env_extra=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}", WORKER,
           *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def two_rank_search(tmp_path, port: int, *args: str) -> tuple[dict, dict]:
    """A 2-process search into tmp_path/run; each rank's final state, checked identical."""
    dump = tmp_path / "dump"
    dump.mkdir()
    r = torchrun(["search", str(dump), *args, f"out={tmp_path / 'run'}"], port)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(dump / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return a, b


def test_two_process_search_keeps_alpha_and_weights_identical(tmp_path):
    a, _ = two_rank_search(tmp_path, 29521, *COMMON, "epochs=2", "optim=single")
    assert "arch.cell" in a
    res = json.load(open(tmp_path / "run" / "result.json"))
    assert res["config"]["batch_size"] == 32  # the global batch, split 16 + 16 over the ranks
    # α moved away from its initial value: the all-reduce carried its gradient
    assert not torch.allclose(a["arch.cell"], torch.full_like(a["arch.cell"], a["arch.cell"][0, 0].item()))


def test_stopped_two_process_search_resumes_in_one_process(tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    out = tmp_path / "run"
    args = ["search", str(dump), *COMMON, "epochs=2", "optim=bilevel", "log_every=1", f"out={out}"]
    r = torchrun(args, 29522, {"SLDARTS_TEST_STOP": "1"})
    assert r.returncode != 0 and "resume=true" in r.stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world"] == 2 and state["epoch"] == 0 and state["step_in_epoch"] == 1
    res = search(SearchConfig(space="nb201", cells=1, channels=4, train_samples=128, batch_size=32, eval_samples=64,
                              progress="none", device="cpu", epochs=2, optim="bilevel", log_every=1, out=str(out),
                              resume=True, threads=1))
    assert res["epochs"] == 2
    rows = [json.loads(line)["epoch"] for line in open(out / "metrics.jsonl")]
    assert rows == [0, 1, 2]


def test_sampling_method_under_torchrun_keeps_ranks_identical(tmp_path):
    # GDAS computes one sampled op per edge: every rank draws the same sample (same seed, same RNG use),
    # and DDP is told that the unsampled ops' weights go unused in a step
    two_rank_search(tmp_path, 29523, *COMMON, "epochs=1", "method=gdas")
    assert json.load(open(tmp_path / "run" / "result.json"))["config"]["impl"] == "reference"


def test_sweep_point_over_two_processes_equals_the_one_process_point(tmp_path, monkeypatch):
    # --gpus-per-point 2 on CPU: each point is one torchrun (gloo) search over 2 processes; with batch norm
    # over the global batch (sync_bn) and augmentation drawn for the global batch, it takes the one-process steps
    from sldarts.sweep import run_sweep

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    items = [*COMMON, "train_samples=64", "epochs=1", "sync_bn=true"]
    run_sweep(None, items, tmp_path / "two", log=lambda m: None, gpus_per_point=2)
    res_one = search(load_config(None, parse_overrides([*items, f"out={tmp_path / 'one'}"])))  # 1 process, here
    two, one = (torch.load(d / "checkpoint.pt", weights_only=True)["model"]["arch.cell"]
                for d in (tmp_path / "two" / "point", tmp_path / "one"))
    assert torch.allclose(two, one, rtol=0, atol=1e-6)
    assert not torch.equal(one, torch.full_like(one, one[0, 0].item()))  # α moved
    assert json.load(open(tmp_path / "two" / "point" / "result.json"))["arch"] == res_one["arch"]
