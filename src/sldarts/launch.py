"""Sweep points as cluster jobs through submitit: Slurm, or submitit's local executor (the same code path,
testable without a cluster).

Every point runs ``sldarts search ... resume=auto``, so a job that Slurm preempts or times out is requeued
by submitit (``checkpoint`` hands back the same callable) and picks up from the run's last checkpoint, and
re-running the same sweep command skips finished points, reattaches to jobs still queued or running (their
ids are kept in ``SWEEP_DIR/jobs.json``) and submits the others again, which then resume.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sldarts.errors import SldartsError

LAUNCHERS = ("local", "submitit-local", "slurm")
JOBS = "jobs.json"


@dataclass
class SlurmOptions:
    """What each point's job asks for (Slurm), and the time limit (both executors). With ``gpus_per_job`` K > 1
    the job starts K tasks, one per GPU, which join one DDP search through submitit's distributed environment."""

    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int = 2
    time_limit_min: int = 60
    array_parallelism: int = 16
    account: str | None = None
    qos: str | None = None
    mem: str | None = None  # e.g. 64G (Slurm --mem)
    constraint: str | None = None
    additional: dict[str, str] | None = None  # any other sbatch option: slurm_additional_parameters


def _submitit():
    try:
        import submitit

        return submitit
    except ImportError:
        raise SldartsError('--launcher slurm|submitit-local needs submitit: pip install -e ".[slurm]" in the '
                           'sldarts clone') from None


try:  # submitit is an optional extra; without it PointJob is never built (_submitit says what to install)
    from submitit.helpers import Checkpointable as _Requeueable
except ImportError:  # pragma: no cover
    _Requeueable = object  # type: ignore[assignment,misc]


class PointJob(_Requeueable):  # type: ignore[misc,valid-type]
    """One sweep point, run in the job's own process. On preemption or time-out submitit calls
    ``checkpoint``, which (inherited) resubmits this same callable: the point resumes (resume=auto)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __call__(self) -> int:
        from sldarts.cli import main

        try:
            import submitit

            if submitit.JobEnvironment().num_tasks > 1:  # K tasks of one job: one DDP search
                submitit.helpers.TorchDistributedEnvironment().export()
        except (ImportError, RuntimeError):  # not inside a submitit job (a direct call)
            pass
        code = main(self.argv)
        if code != 0:
            raise RuntimeError(f"the sweep point exited with {code}; see the job's log")
        return code


class _Job:
    """A submitted or reattached job: whether it is still queued or running."""

    def __init__(self, launcher: str, folder: Path, job_id: str, job: Any = None) -> None:
        self.launcher, self.folder, self.job_id, self.job = launcher, folder, job_id, job

    def alive(self) -> bool:
        if self.job is not None:  # submitted by this process
            return not self.job.done()
        if self.launcher == "submitit-local":  # a local job's id is its process id
            return _process_alive(int(self.job_id))
        return not _submitit().SlurmJob(self.folder, self.job_id).done(force_check=True)


def _process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not reaped by its orphaned parent, does not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust the signal


def _executor(launcher: str, folder: Path, opts: SlurmOptions):
    submitit = _submitit()
    if launcher == "submitit-local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=opts.time_limit_min)
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = dict(timeout_min=opts.time_limit_min, cpus_per_task=opts.cpus_per_job,
                                  gpus_per_node=opts.gpus_per_job, slurm_array_parallelism=opts.array_parallelism,
                                  name="sldarts", tasks_per_node=max(opts.gpus_per_job, 1), nodes=1)
    for key in ("partition", "account", "qos", "mem", "constraint"):
        if getattr(opts, key):
            params[f"slurm_{key}"] = getattr(opts, key)
    if opts.additional:
        params["slurm_additional_parameters"] = dict(opts.additional)
    ex.update_parameters(**params)
    return ex


def run_jobs(sweep_dir: Path, todo: list[tuple[str, list[str]]], launcher: str, opts: SlurmOptions,
             log=print, poll_s: float = 1.0) -> list[str]:
    """Submit (or reattach to) one job per point and wait for all; returns the names that did not finish."""
    folder = sweep_dir / ".submitit"
    state_file = sweep_dir / JOBS
    saved: dict[str, dict[str, str]] = json.loads(state_file.read_text()) if state_file.exists() else {}
    jobs: dict[str, _Job] = {}
    to_submit = []
    for name, argv in todo:
        rec = saved.get(name)
        if rec and rec.get("launcher") == launcher and _Job(launcher, folder, rec["job_id"]).alive():
            jobs[name] = _Job(launcher, folder, rec["job_id"])
            log(f"reattached {name} (job {rec['job_id']})")
        else:
            to_submit.append((name, argv))
    if to_submit:
        ex = _executor(launcher, folder, opts)
        if launcher == "slurm":  # one job array
            with ex.batch():
                submitted = [(name, ex.submit(PointJob(argv))) for name, argv in to_submit]
        else:
            submitted = [(name, ex.submit(PointJob(argv))) for name, argv in to_submit]
        for name, job in submitted:
            jobs[name] = _Job(launcher, folder, str(job.job_id), job)
            saved[name] = {"launcher": launcher, "job_id": str(job.job_id)}
            log(f"submitted {name} (job {job.job_id})")
        state_file.write_text(json.dumps(saved, indent=1) + "\n")
    while any(j.alive() for j in jobs.values()):
        time.sleep(poll_s)
    failed = [name for name in jobs if not (sweep_dir / name / "result.json").exists()]
    for name in jobs:
        log(("FAILED " if name in failed else "finished ") + name)
    return failed
