"""Use what a search found: load, TorchScript/ONNX export (run with onnxruntime), predict."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from datafiles import write_cifar10, write_image_folder
from test_custom import DATA, SPACE

import sldarts
from sldarts.cli import main
from sldarts.export import load
from sldarts.spaces.nb201 import format_arch

ort = pytest.importorskip("onnxruntime")
ARCH = format_arch(["nor_conv_3x3", "nor_conv_1x1", "skip_connect", "avg_pool_3x3", "nor_conv_3x3", "none"])
QUIET = ["progress=none", "workers=0", "threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A retrain of DARTS_V2 (CIFAR-10 files), one of an NB201 cell (digits), a searched user model."""
    root = tmp_path_factory.mktemp("export")
    write_cifar10(root / "data", n_per_batch=8)
    out = {"darts": root / "darts", "nb201": root / "nb201", "user": root / "user"}
    assert main(["retrain", "--genotype", "DARTS_V2", "dataset=cifar10", f"data_root={root / 'data'}", "epochs=1",
                 "channels=8", "cells=5", "batch_size=16", f"out={out['darts']}", *QUIET]) == 0
    assert main(["retrain", "--arch", ARCH, "dataset=digits", "epochs=1", "channels=4", "cells=1",
                 "train_samples=128", f"out={out['nb201']}", *QUIET]) == 0
    assert main(["search", SPACE, DATA, "epochs=1", "train_samples=64", "batch_size=32", "eval_samples=32",
                 f"out={out['user']}", *QUIET]) == 0
    return out


@pytest.mark.parametrize("kind", ["darts", "nb201", "user"])
def test_torchscript_and_onnx_equal_the_pytorch_model(runs, tmp_path, kind):
    loaded = load(runs[kind])
    assert not loaded.model.training and getattr(loaded.model, "aux_head", None) is None
    assert main(["export", str(runs[kind]), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert main(["export", str(runs[kind]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (1, 7):  # dynamic batch size
        x = torch.randn(batch, *loaded.shape)
        with torch.no_grad():
            ref = loaded.model(x)
            ref = ref[0] if isinstance(ref, tuple) else ref
            assert torch.allclose(scripted(x), ref, atol=1e-4)
        onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert onnx_out.shape == tuple(ref.shape) and np.allclose(onnx_out, ref.numpy(), atol=1e-4)


def test_exports_load_without_sldarts(runs, tmp_path):
    assert main(["export", str(runs["darts"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    code = ("import sys, torch; sys.modules['sldarts'] = None; m = torch.jit.load(sys.argv[1]); "
            "print(tuple(m(torch.zeros(3, 3, 32, 32)).shape))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "(3, 10)", r.stderr


def test_the_user_model_loads_as_the_fixed_network_with_its_searched_weights(runs):
    res = json.loads((runs["user"] / "result.json").read_text())
    loaded = sldarts.load(runs["user"])
    ckpt = torch.load(runs["user"] / "checkpoint.pt", weights_only=True)["model"]
    block = res["choices"]["block"]
    if block in ("conv3", "conv5"):
        assert torch.equal(loaded.model.b1.weight, ckpt[f"model.b1.candidates.{block}.weight"])
    assert loaded.shape == [1, 8, 8] and loaded.classes == [str(i) for i in range(10)] or loaded.classes == []


def test_predict_names_the_image_folders_classes(tmp_path, capsys):
    write_image_folder(tmp_path / "data", classes=("cat", "dog", "emu"), per_class=4, size=16)
    assert main(["retrain", "--arch", ARCH, "dataset=imagefolder", f"data_root={tmp_path / 'data'}", "epochs=1",
                 "channels=4", "cells=1", f"out={tmp_path / 'rt'}", *QUIET]) == 0
    images = sorted((tmp_path / "data" / "test").glob("*/*"))[:3]
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "rt"), *map(str, images)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if not line.startswith(" ")] == list(map(str, images))
    probs = [line.split() for line in out if line.startswith(" ")]
    assert len(probs) == 9 and {c for _, c in probs} == {"cat", "dog", "emu"}  # top-5 of 3 classes: all three
    assert abs(sum(float(p) for p, _ in probs[:3]) - 1.0) < 1e-3


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    search = tmp_path / "s"
    assert main(["search", "epochs=1", "train_samples=64", "channels=4", "cells=1", f"out={search}", *QUIET]) == 0
    not_image = tmp_path / "x.jpg"
    not_image.write_text("not an image")
    cases = [
        (["export", str(search), "--format", "onnx", "--out", str(tmp_path / "a")], "retrain the derived cell"),
        (["export", str(runs["nb201"]), "--format", "tflite", "--out", str(tmp_path / "a")],
         "unknown export format 'tflite'"),
        (["predict", str(runs["nb201"]), str(not_image)], "cannot be decoded"),
        (["predict", str(tmp_path / "nowhere"), str(not_image)], "not a run directory"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
