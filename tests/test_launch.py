"""Sweeps through submitit's local executor, the code path of --launcher slurm without a cluster: a point killed
mid-run is resumed and a running one reattached by re-running the same sweep command; report works on it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit")
# two points: a short one that is killed and resumed, a long one still running when the sweep is re-run
POINTS = ["epochs=6,30", "train_samples=96", "channels=4", "cells=1", "batch_size=32", "eval_samples=32",
          "threads=1"]


def sweep(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "sldarts", "sweep", *POINTS, "--launcher", "submitit-local",
                             "--out", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_tree(pid: int) -> None:
    """kill -9 a process and every descendant (submitit's local job runs its task in a child process)."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        for task in (Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}").exists() else []):
            try:
                todo += [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                pass
    for p in reversed(seen):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_killed_point_resumes_and_running_point_reattaches_on_rerun(tmp_path):
    out = tmp_path / "sweep"
    first = sweep(out)
    t0 = time.time()
    metrics = out / "epochs=6" / "metrics.jsonl"
    while not ((out / "epochs=6" / "checkpoint.pt").exists() and metrics.exists()
               and len(metrics.read_text().splitlines()) >= 2):
        assert first.poll() is None and time.time() - t0 < 120, first.stderr.read()
        time.sleep(0.05)
    jobs = json.loads((out / "jobs.json").read_text())
    kill_tree(int(jobs["epochs=6"]["job_id"]))  # the point's job dies (preempted, node lost)
    first.send_signal(signal.SIGKILL)  # and so does the sweep command that was waiting for it
    first.wait(30)
    again = sweep(out)
    assert again.wait(300) == 0, again.stderr.read()
    err = again.stderr.read()
    assert "submitted epochs=6" in err  # dead: submitted again, and it resumes from its checkpoint
    assert "reattached epochs=30" in err  # still running: waited for, not started twice
    assert "resuming after epoch" in (out / "epochs=6" / "log.txt").read_text()
    assert "resuming" not in (out / "epochs=30" / "log.txt").read_text()
    assert [json.loads(x)["epoch"] for x in open(out / "epochs=6" / "metrics.jsonl")] == list(range(7))
    report = subprocess.run([sys.executable, "-m", "sldarts", "report", str(out)], capture_output=True, text=True)
    assert report.returncode == 0 and "| 6 |" in report.stdout and "| 30 |" in report.stdout


def test_a_finished_sweep_is_skipped_and_missing_submitit_is_one_line(tmp_path, monkeypatch, capsys):
    from sldarts.cli import main

    out = tmp_path / "s"
    assert main(["sweep", "epochs=1", "train_samples=64", "channels=4", "cells=1", "seed=0,1", "--launcher",
                 "submitit-local", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sweep", "epochs=1", "train_samples=64", "channels=4", "cells=1", "seed=0,1", "--launcher",
                 "submitit-local", "--out", str(out)]) == 0
    assert "2 done, 0 to run" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert main(["sweep", "epochs=1", "seed=2,3", "--launcher", "slurm", "--out", str(tmp_path / "t")]) == 2
    assert 'pip install -e ".[slurm]"' in capsys.readouterr().err


def test_slurm_job_of_k_gpus_starts_k_tasks_with_the_passed_through_options(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from sldarts.launch import SlurmOptions, _executor

    (tmp_path / "bin").mkdir()  # submitit looks for srun before it builds a Slurm executor; nothing is submitted
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    ex = _executor("slurm", tmp_path, SlurmOptions("gpu", 4, 8, 120, 16, "proj", "high", "64G", "a100",
                                                   {"reservation": "r1"}))
    p = ex._executor.parameters
    assert (p["ntasks_per_node"], p["gpus_per_node"], p["cpus_per_task"], p["nodes"]) == (4, 4, 8, 1)
    assert (p["partition"], p["account"], p["qos"], p["mem"], p["constraint"]) == ("gpu", "proj", "high", "64G",
                                                                                  "a100")
    assert p["additional_parameters"] == {"reservation": "r1"}
