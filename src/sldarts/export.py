"""Use what a search found: load the trained network of a run, export it, predict with it.

A *retrain* run holds a trained evaluation network; a *search* of a user model (``space=pkg.mod:build``)
holds the searched weights, which :func:`sldarts.fix` turns into the fixed network. A search of a built-in
space holds only a supernet: it is retrained first. Exports hold the network in evaluation mode, logits
only (no auxiliary head, no drop path), with a dynamic batch size, and load without ``sldarts``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from sldarts import checkpoint as ckpt
from sldarts.errors import SldartsError

FORMATS = ("torchscript", "onnx", "pt2")
PROGRAM = "model.pt2"  # a search of a model passed as a Python object: the fixed network, self-contained


@dataclass
class Loaded:
    """A run's trained network (eval mode) and the preprocessing it was trained with."""

    model: nn.Module
    shape: list[int]  # one input, (C, H, W)
    mean: list[float] = field(default_factory=list)  # of pixels in [0, 1]; empty: no normalisation
    std: list[float] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)  # result.json's "input": the recorded preprocessing

    def preprocess(self, image: Any) -> Tensor:
        """A PIL image as the model's input, exactly as the run's data was: the shorter side resized and a
        centre crop (runs that recorded ``crop``; older ones: resized to (H, W)), its channels, normalised
        as the loaders do it; (1, C, H, W)."""
        import numpy as np
        from PIL import Image

        from sldarts.data.readers import center_crop

        c, h, w = self.shape
        image = image.convert("L" if c == 1 else "RGB")
        if self.spec.get("crop") == "center" and h == w:
            image = center_crop(image, h, float(self.spec.get("crop_pct", 1.0)))
        else:
            image = image.resize((w, h), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image, dtype=np.uint8).reshape(h, w, c).copy()).permute(2, 0, 1).float()
        if self.mean:  # (x - 255 mean) / (255 std): the loaders' arithmetic, so predictions match evaluation
            x = (x - torch.tensor(self.mean).view(c, 1, 1) * 255.0) / (torch.tensor(self.std).view(c, 1, 1) * 255.0)
        else:
            x = x / 255.0
        return x[None]


class LogitsOnly(nn.Module):
    """The network as exported: logits only (DARTS networks return (logits, aux))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


class Exported(nn.Module):
    """A network saved with :func:`torch.export.save` (``model.pt2``), loaded without its Python class: the
    graph was exported in evaluation mode, so train()/eval() only set the flag."""

    def __init__(self, program: Any) -> None:
        super().__init__()
        self.program = program
        self.graph = program.module()

    def train(self, mode: bool = True) -> Exported:
        self.training = mode
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.graph(x)


def save_program(model: nn.Module, shape: list[int] | tuple[int, ...], out: str | Path) -> Path:
    """``model`` in evaluation mode (logits only) as a :func:`torch.export` program with a dynamic batch
    size, saved to ``out``: it loads with ``torch.export.load(out).module()``, no Python class needed."""
    out = Path(out)
    net = LogitsOnly(copy.deepcopy(model)).eval()
    example = torch.zeros(2, *shape)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception as exc:  # data-dependent control flow and the like: torch.export's own message
        raise SldartsError(f"torch.export cannot capture this network ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out))
    return out


def _read(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not (run / "config.yaml").exists():
        raise SldartsError(f"{run} is not a run directory (no config.yaml)")
    if not (run / "result.json").exists() or not (run / "checkpoint.pt").exists():
        raise SldartsError(f"{run} has not finished (no result.json or checkpoint.pt); continue it with resume=true")
    from sldarts.rundir import read_result

    return yaml.safe_load((run / "config.yaml").read_text()) or {}, read_result(run)


def _input(res: dict[str, Any]) -> dict[str, Any]:
    spec = res.get("input")
    if spec is None:
        raise SldartsError("this run was made before sldarts recorded its input (result.json has no 'input'); "
                           "retrain it to export or predict")
    return spec


def load(run_dir: str | Path) -> Loaded:
    """The trained network of a retrain run, or the searched user model fixed with its choices."""
    from sldarts.cells import run_space

    run = Path(run_dir)
    cfg, res = _read(run)
    spec = _input(res)
    if str(res["space"]).startswith("<") and (run / PROGRAM).exists():  # a model passed as a Python object
        model = Exported(torch.export.load(str(run / PROGRAM)))
        return Loaded(model.eval(), spec["shape"], spec.get("mean", []), spec.get("std", []),
                      spec.get("classes", []), spec)
    space = run_space(res["space"], run)
    arch = res[res.get("arch_key", "arch")]
    c = spec["shape"][0]
    if "recipe" in cfg:  # a retrain run: the evaluation network and its weights
        from sldarts.spaces.base import eval_network_for

        model = eval_network_for(space, arch, spec["num_classes"], c, spec["shape"][-1],
                                 dataset=cfg.get("dataset", "cifar10"), channels=cfg.get("channels"),
                                 cells=cfg.get("cells"), auxiliary=cfg.get("auxiliary_weight", 0) > 0)
        state = ckpt.load(run / "checkpoint.pt", "retrain")["model"]
    else:
        from sldarts.config import SearchConfig
        from sldarts.nn import fix
        from sldarts.spaces.model import ModelSpace

        if not isinstance(space, ModelSpace):
            raise SldartsError(f"{run} is a search of the {space.name} space: it holds a supernet, not a trained "
                               f"network; retrain the derived cell (sldarts retrain {run}) and export that run")
        sup = space.supernet(SearchConfig(**{k: v for k, v in cfg.items() if k in SearchConfig.__dataclass_fields__}),
                             spec["num_classes"], c)
        sup.load_state_dict(ckpt.load(run / "checkpoint.pt", "search")["model"])
        model, state = fix(sup.model, arch), None
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise SldartsError(f"{run}: the checkpoint does not fit the network ({str(exc).splitlines()[0]})") from None
    if getattr(model, "aux_head", None) is not None:  # training only: not part of the trained function
        model.aux_head = None
    model.eval()
    return Loaded(model.float().to(memory_format=torch.contiguous_format), spec["shape"], spec.get("mean", []),
                  spec.get("std", []), spec.get("classes", []), spec)


def export(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Write ``out``: TorchScript (``torch.jit.load``; deprecated upstream), ONNX (``onnxruntime``) or a
    :func:`torch.export` program (``pt2``: ``torch.export.load``), with a dynamic batch size."""
    if fmt not in FORMATS:
        raise SldartsError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        name = "model.pt" if fmt == "torchscript" else "model.onnx"
        raise SldartsError(f"--out {out} is a directory; name the file to write, e.g. {out / name}")
    from sldarts.plot import make_parent

    make_parent(out)
    loaded = load(run_dir)
    if fmt == "pt2":
        if isinstance(loaded.model, Exported):
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            torch.export.save(loaded.model.program, str(out))
            return out
        return save_program(loaded.model, loaded.shape, out)
    if fmt == "torchscript" and isinstance(loaded.model, Exported):
        raise SldartsError(f"{run_dir} holds a torch.export program (model.pt2), which TorchScript cannot trace "
                           "with a dynamic batch size; use --format pt2 or onnx")
    net = LogitsOnly(copy.deepcopy(loaded.model)).eval()
    example = torch.zeros(2, *loaded.shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.13, still asked for
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "torchscript":
            torch.jit.trace(net, example).save(str(out))  # the eval path only: no aux head, no drop path
        else:
            _onnx(loaded.model.program if isinstance(loaded.model, Exported) else net, example, out)
    return out


def _onnx(net: Any, example: Tensor, out: Path) -> None:
    """The exporter PyTorch recommends for its version (``dynamo=True``: torch.export), opset 18."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise SldartsError('ONNX export needs onnx, onnxscript and onnxruntime: pip install -e ".[export]" '
                           'in the sldarts clone') from None
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(net, (example,), dynamo=True, opset_version=18, input_names=["input"],
                                output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(out))


def predict(run_dir: str | Path, images: list[str | Path], k: int = 5) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image, with the run's preprocessing."""
    from sldarts.data.readers import _decode_pil

    loaded = load(run_dir)
    out = []
    for path in images:
        p = Path(path)
        if not p.is_file():
            raise SldartsError(f"image {p} does not exist")
        x = loaded.preprocess(_decode_pil(p))
        with torch.no_grad():
            logits = loaded.model(x)
        probs = torch.softmax((logits[0] if isinstance(logits, tuple) else logits).float(), dim=1)[0]
        top = probs.topk(min(k, len(probs)))
        names = [loaded.classes[i] if i < len(loaded.classes) else str(i) for i in top.indices.tolist()]
        out.append({"image": str(p), "top": [{"class": n, "index": i, "probability": round(float(q), 6)}
                                             for n, i, q in zip(names, top.indices.tolist(), top.values, strict=True)]})
    return out
