"""Watch runs live: TensorBoard event files read back with TensorBoard's own reader, W&B offline runs and MLflow
file stores hold the same metrics, and a killed, resumed search continues the same logged run."""

import glob
import json
import os
import signal
import sys
import time

import pytest
from test_reliability import cli, wait_for_epoch

from sldarts.cli import main

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")
ARGS = ["search", "train_samples=128", "channels=4", "cells=1", "batch_size=64", "eval_samples=64", "log_every=1",
        "logger=tensorboard,wandb,mlflow"]
STEPS = 2  # 128 images / 64 a batch


def tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    return ea


def mlflow_history(run, key):
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run / "loggers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    return client, run_id, [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def wandb_history(run) -> list[dict]:
    """The history records of every offline W&B run file (the LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data, pos, buf = open(path, "rb").read(), 7, b""
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # block trailer
                pos += 32768 - pos % 32768
                continue
            n, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
            chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
            buf = chunk if kind in (1, 2) else buf + chunk
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf)
                if rec.WhichOneof("record_type") == "history":
                    rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                 for i in rec.history.item})
    return rows


def test_every_dashboard_holds_the_metrics_the_heat_maps_and_the_cell(tmp_path):
    run = tmp_path / "r"
    assert main([*ARGS, "epochs=2", "progress=none", f"out={run}"]) == 0
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    ea = tensorboard(run)
    tags = ea.Tags()
    for tag in ("train_loss", "valid_acc", "param_free_ratio", "min_margin", "margins/3_from_0", "lr",
                "step/train_loss", "step/train_acc"):
        assert tag in tags["scalars"], tag
    assert [(e.step, round(e.value, 6)) for e in ea.Scalars("valid_acc")] == [
        (r["epoch"] * STEPS, round(r["valid_acc"], 6)) for r in rows]
    assert len(ea.Images("alpha/cell")) == 3 and len(ea.Images("cell/cell_cell")) == 1  # one per epoch, the cell
    _, _, hist = mlflow_history(run, "valid_acc")
    assert [(s, round(v, 6)) for s, v in hist] == [(r["epoch"] * STEPS, round(r["valid_acc"], 6)) for r in rows]
    wb = [h for h in wandb_history(run) if "valid_acc" in h]
    assert [(h["_step"], round(h["valid_acc"], 6)) for h in wb] == [(s, round(v, 6)) for s, v in hist]
    assert {k for h in wb for k in h if not k.startswith(("_", "alpha", "cell"))} == set(tags["scalars"])


def test_a_killed_and_resumed_search_continues_the_same_logged_runs(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_SERVICE")]:
        # an in-process W&B run of another test left its service in the environment: the killed child would
        # share it, and that service would hold the run "in use" for the rest of the session
        monkeypatch.delenv(key)
    run = tmp_path / "r"
    args = [*ARGS, "epochs=3", "progress=lines", "deterministic=true", "threads=1", f"out={run}"]
    p = cli(args)
    wait_for_epoch(run, 1, p)
    time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    ids = json.loads((run / "loggers.json").read_text())
    p = cli([*args, "resume=auto"])
    assert p.wait(300) == 0, p.stderr.read()
    assert json.loads((run / "loggers.json").read_text()) == ids
    steps = [e * STEPS for e in range(4)]
    # the same event directory: the resumed session's file opens with the purge marker (SessionLog START at
    # the checkpoint's step + 1), so TensorBoard drops the killed session's events past the checkpoint
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted(glob.glob(str(run / "tensorboard" / "events.*")))
    assert len(files) == 2
    events = [list(EventFileLoader(f).Load()) for f in files]
    purge = [e.step for e in events[1] if e.HasField("session_log") and e.session_log.status == 1]
    assert purge == [json.loads((run / "metrics.jsonl").read_text().splitlines()[1])["epoch"] * STEPS + 1]
    valid = [[e.step for e in evs if e.summary.value and e.summary.value[0].tag == "valid_acc"] for evs in events]
    assert [x for x in valid[0] if x < purge[0]] + valid[1] == steps
    client, run_id, hist = mlflow_history(run, "valid_acc")
    assert sorted({s for s, _ in hist}) == steps and client.get_run(run_id).info.status == "FINISHED"
    offline = glob.glob(str(run / "wandb" / "offline-run-*"))
    assert len(offline) == 2 and all(d.endswith(ids["wandb"]) for d in offline)  # two sessions, one W&B run
    # W&B's service writes its file in batches: what it held when the process was killed is lost (the first
    # session's file may be empty); the resumed session logs on into the same run from the checkpoint
    assert {4, 6} <= {h["_step"] for h in wandb_history(run) if "valid_acc" in h}


def test_a_missing_extra_or_unknown_logger_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    assert main(["search", "epochs=1", "train_samples=64", "channels=4", "cells=1", "progress=none",
                 "logger=wandb", f"out={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[wandb]"' in err
    assert main(["search", "logger=tensorbord", f"out={tmp_path / 'b'}"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err
