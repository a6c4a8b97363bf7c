"""Use what a search found: load the trained network of a run, export it, predict with it.

A *retrain* run holds a trained evaluation network; a *search* of a user model (``space=pkg.mod:build``)
holds the searched weights, which :func:`sldarts.fix` turns into the fixed network. A search of a built-in
space holds only a supernet: it is retrained first. Exports hold the network in evaluation mode, logits
only (no auxiliary head, no drop path), with a dynamic batch size, and load without ``sldarts``.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from sldarts import checkpoint as ckpt
from sldarts.errors import SldartsError

FORMATS = ("torchscript", "onnx")


@dataclass
class Loaded:
    """A run's trained network (eval mode) and the preprocessing it was trained with."""

    model: nn.Module
    shape: list[int]  # one input, (C, H, W)
    mean: list[float] = field(default_factory=list)  # of pixels in [0, 1]; empty: no normalisation
    std: list[float] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)

    def preprocess(self, image: Any) -> Tensor:
        """A PIL image as the model's input: resized to (H, W), to its channels, normalised; (1, C, H, W)."""
        import numpy as np
        from PIL import Image

        c, h, w = self.shape
        image = image.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
        arr = np.asarray(image, dtype=np.float32).reshape(h, w, c) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)
        if self.mean:
            x = (x - torch.tensor(self.mean).view(c, 1, 1)) / torch.tensor(self.std).view(c, 1, 1)
        return x[None]


class LogitsOnly(nn.Module):
    """The network as exported: logits only (DARTS networks return (logits, aux))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out


def _read(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not (run / "config.yaml").exists():
        raise SldartsError(f"{run} is not a run directory (no config.yaml)")
    if not (run / "result.json").exists() or not (run / "checkpoint.pt").exists():
        raise SldartsError(f"{run} has not finished (no result.json or checkpoint.pt); continue it with resume=true")
    return yaml.safe_load((run / "config.yaml").read_text()) or {}, json.loads((run / "result.json").read_text())


def _input(res: dict[str, Any]) -> dict[str, Any]:
    spec = res.get("input")
    if spec is None:
        raise SldartsError("this run was made before sldarts recorded its input (result.json has no 'input'); "
                           "retrain it to export or predict")
    return spec


def load(run_dir: str | Path) -> Loaded:
    """The trained network of a retrain run, or the searched user model fixed with its choices."""
    from sldarts.spaces import get_space

    run = Path(run_dir)
    cfg, res = _read(run)
    spec = _input(res)
    space = get_space(res["space"])
    arch = res[res.get("arch_key", "arch")]
    c = spec["shape"][0]
    if "recipe" in cfg:  # a retrain run: the evaluation network and its weights
        model = space.eval_network(arch, spec["num_classes"], c, dataset=cfg.get("dataset", "cifar10"),
                                   channels=cfg.get("channels"), cells=cfg.get("cells"),
                                   auxiliary=cfg.get("auxiliary_weight", 0) > 0)
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
                  spec.get("std", []), spec.get("classes", []))


def export(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Write ``out``: TorchScript (``torch.jit.load``) or ONNX (``onnxruntime``), dynamic batch size."""
    if fmt not in FORMATS:
        raise SldartsError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    loaded = load(run_dir)
    net = LogitsOnly(copy.deepcopy(loaded.model)).eval()
    example = torch.zeros(2, *loaded.shape)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in 2.13, still asked for
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "torchscript":
            torch.jit.trace(net, example).save(str(out))  # the eval path only: no aux head, no drop path
        else:
            _onnx(net, example, out)
    return out


def _onnx(net: nn.Module, example: Tensor, out: Path) -> None:
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
