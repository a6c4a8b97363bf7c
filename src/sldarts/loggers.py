"""Watch runs live: every ``metrics.jsonl`` number mirrored to TensorBoard, Weights & Biases or MLflow.

``logger=tensorboard,wandb,mlflow`` (each an optional extra). One step axis for all of them, the global
training step: per-epoch numbers at the step that ends the epoch, the loss and accuracy every ``log_every``
steps, the α weights as a heat map per cell each epoch, the derived cell's diagram at the end. Nothing to
sign into: TensorBoard writes ``RUN_DIR/tensorboard/``, W&B runs offline in ``RUN_DIR/wandb/`` (unless
``WANDB_MODE`` says otherwise), MLflow uses the file store ``RUN_DIR/mlruns``. The ids of the logged runs
are kept in ``RUN_DIR/loggers.json``, so a resumed run continues the same logged run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from sldarts.errors import SldartsError
from sldarts.registry import Registry

STATE = "loggers.json"


def metric_name(name: str) -> str:
    """One spelling every backend accepts (MLflow's is the narrowest): ``margins/3<-0`` -> ``margins/3_from_0``."""
    return re.sub(r"[^A-Za-z0-9_\-./ :]", "_", name.replace("<-", "_from_"))


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics line, nested dicts as ``a/b``; lists and strings (α, arch) are left out."""
    out: dict[str, float] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            out[metric_name(key)] = float(v)
        elif isinstance(v, dict) and k not in ("alphas", "weights", "betas"):
            out.update(flatten(v, f"{key}/"))
    return out


class RunLogger(ABC):
    """One dashboard. ``run_id`` identifies the logged run, so a resumed run can continue it."""

    name = "base"
    extra = ""  # pip extra that installs the backend

    @abstractmethod
    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None, first_step: int) -> None: ...

    @property
    @abstractmethod
    def run_id(self) -> str: ...

    @abstractmethod
    def scalars(self, values: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def image(self, tag: str, rgb: np.ndarray, step: int) -> None: ...

    @abstractmethod
    def finish(self) -> None: ...

    def flush(self) -> None:  # noqa: B027 - most backends write through; TensorBoard buffers
        """After each epoch: what was logged reaches the disk (a kill -9 loses nothing before it)."""


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SldartsError(f'logger {extra} needs its package: pip install -e ".[{extra}]" in the sldarts '
                           'clone') from None


class TensorBoard(RunLogger):
    name = extra = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None, first_step: int) -> None:
        _need("tensorboard", self.extra)
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops the events past its checkpoint, then writes on in the same directory
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_step + 1 if run_id else None)
        self._id = run_id or str(run_dir / "tensorboard")
        if run_id is None:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", 0)

    @property
    def run_id(self) -> str:
        return self._id

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class WandB(RunLogger):
    name = extra = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None, first_step: int) -> None:
        self.wandb = _need("wandb", self.extra)
        os.environ.setdefault("WANDB_MODE", "offline")  # nothing to sign into unless asked for
        os.environ.setdefault("WANDB_SILENT", "true")
        kwargs = dict(project=os.environ.get("WANDB_PROJECT", "sldarts"), dir=str(run_dir),
                      id=run_id or secrets.token_hex(4), resume="allow", config=config, name=run_dir.name,
                      reinit="create_new")
        for attempt in range(30):
            try:
                self.run = self.wandb.init(**kwargs)
                break
            except Exception as exc:  # after kill -9 the dead process's W&B service holds the run for a moment
                if "in use" not in str(exc) or attempt == 29:
                    raise SldartsError(f"wandb could not open run {kwargs['id']}: {str(exc).splitlines()[0]}") \
                        from None
                time.sleep(1.0)

    @property
    def run_id(self) -> str:
        return self.run.id

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(rgb)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class MLflow(RunLogger):
    name = extra = "mlflow"

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None, first_step: int) -> None:
        _need("mlflow", self.extra)
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        # the file store: nothing to run or sign into (MLflow 3 asks to opt in to it)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp = self.client.get_experiment_by_name("sldarts")
            exp_id = exp.experiment_id if exp else self.client.create_experiment("sldarts")
            run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
            for k, v in flatten_params(config).items():
                self.client.log_param(run_id, k, v)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._id = run_id

    @property
    def run_id(self) -> str:
        return self._id

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self._id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.client.log_image(self._id, rgb, key=metric_name(tag), step=step)

    def finish(self) -> None:
        self.client.set_terminated(self._id)


def flatten_params(config: dict[str, Any]) -> dict[str, str]:
    return {metric_name(k): str(v)[:500] for k, v in config.items()}


LOGGERS: Registry[type[RunLogger]] = Registry("logger", group="sldarts.loggers")
for _cls in (TensorBoard, WandB, MLflow):
    LOGGERS.register(_cls)


def names(spec: str) -> list[str]:
    return [n.strip() for n in spec.split(",") if n.strip()]


class Loggers:
    """The dashboards of one run (rank 0 only), as one object the epoch loop calls."""

    def __init__(self, spec: str, run_dir: Path, config: dict[str, Any], resuming: bool, first_step: int,
                 enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.loggers: list[RunLogger] = []
        if not enabled or not names(spec):
            return
        state_file = run_dir / STATE
        saved = json.loads(state_file.read_text()) if resuming and state_file.exists() else {}
        for name in names(spec):
            cls = LOGGERS.get(name)
            self.loggers.append(cls(run_dir, config, saved.get(name), first_step))
        state_file.write_text(json.dumps({lg.name: lg.run_id for lg in self.loggers}, indent=1) + "\n")

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.scalars(values, step)

    def images(self, images: dict[str, np.ndarray], step: int) -> None:
        for tag, rgb in images.items():
            for lg in self.loggers:
                lg.image(tag, rgb, step)

    def flush(self) -> None:
        for lg in self.loggers:
            lg.flush()

    def finish(self) -> None:
        for lg in self.loggers:
            lg.finish()
        self.loggers = []


def heatmaps(weights: dict[str, list], labels) -> dict[str, np.ndarray]:
    """One RGB heat map per α entry (rows: edges or choices, columns: ops); ``labels(key, rows)`` gives
    (row labels, op names). Empty without matplotlib (the numbers are logged all the same)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out = {}
    for key, w in weights.items():
        arr = np.atleast_2d(np.asarray(w, dtype=float))
        rows, cols = labels(key, arr.shape[0])
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * arr.shape[1], 1.0 + 0.35 * arr.shape[0]), dpi=80)
        ax.imshow(arr, cmap="viridis", aspect="auto")
        ax.set_yticks(range(arr.shape[0]), (rows or [str(i) for i in range(arr.shape[0])])[:arr.shape[0]], fontsize=7)
        ax.set_xticks(range(arr.shape[1]), (cols or [str(i) for i in range(arr.shape[1])])[:arr.shape[1]],
                      rotation=45, ha="right", fontsize=7)
        ax.set_title(key, fontsize=8)
        fig.tight_layout()
        fig.canvas.draw()
        out[f"alpha/{metric_name(key)}"] = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
    return out


def png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
