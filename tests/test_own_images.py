"""A new user's whole path on a folder of 64x64 JPEGs in class folders, with no split: search with a held-out
validation split, retrain the run with no data keys, predict, export (ONNX and torch.export), all equal."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import sldarts
from sldarts.cli import main

QUIET = ["progress=none", "workers=0", "threads=1"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_search_retrain_predict_export_on_one_folder_of_jpegs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLDARTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for k, c in enumerate(("apple", "kiwi", "plum")):  # one colour per class: learnable in one epoch
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(8):
            arr = np.clip(rng.normal(60 + 70 * k, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "photos" / c / f"{i}.jpg", quality=90)
    assert main(["search", "dataset=imagefolder", "data_root=photos", "valid_split=0.25", "image_size=16",
                 "epochs=1", "channels=4", "cells=1", "batch_size=6", *QUIET]) == 0
    run = next((tmp_path / "runs").iterdir())
    log = (run / "log.txt").read_text()
    assert "valid 6 from 0.25 of photos held out (stratified)" in log and "no test split" in log
    assert "shorter side resized to 16, centre crop 16x16" in log and "16 px input" in log
    split = json.loads((run / "split.json").read_text())
    perm = np.random.RandomState(0)  # 2 of each class's 8, drawn class by class from one fixed generator
    expect = [f"{c}/{i}.jpg" for c in ("apple", "kiwi", "plum") for i in sorted(perm.permutation(8)[:2])]
    assert sorted(split["valid_held_out"]) == sorted(expect)

    assert main(["retrain", str(run), "epochs=1", "channels=4", "cells=1", "lr=0.05", "out=rt", *QUIET]) == 0
    res = json.loads((tmp_path / "rt" / "result.json").read_text())
    cfg = res["config"]
    assert (cfg["dataset"], cfg["data_root"], cfg["image_size"], cfg["recipe"]) == ("imagefolder", "photos", 16,
                                                                                    "nb201")
    assert res["input"]["shape"] == [3, 16, 16] and res["input"]["crop"] == "center"
    rlog = (tmp_path / "rt" / "log.txt").read_text()
    assert f"from {run}: dataset=imagefolder data_root=photos image_size=16" in rlog and "s per epoch" in rlog

    # predict on every validation file agrees with the evaluation accuracy of the same files
    capsys.readouterr()
    files = [f"photos/{f}" for f in split["valid_held_out"]]
    assert main(["predict", "rt", *files, "--top", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    predicted = [lines[i + 1].split()[-1] for i in range(0, len(lines), 2)]
    truth = [f.split("/")[1] for f in files]
    assert np.mean([p == t for p, t in zip(predicted, truth, strict=True)]) == pytest.approx(res["top1"])

    loaded = sldarts.load("rt")
    x = torch.cat([loaded.preprocess(Image.open(f)) for f in files])
    with torch.no_grad():
        want = loaded.model(x)
    want = want[0] if isinstance(want, tuple) else want
    assert main(["export", "rt", "--format", "pt2", "--out", "m.pt2"]) == 0
    assert torch.allclose(torch.export.load("m.pt2").module()(x), want, atol=1e-5)
    assert main(["export", "rt", "--format", "onnx", "--out", "m.onnx"]) == 0
    ort = pytest.importorskip("onnxruntime")
    got = ort.InferenceSession("m.onnx").run(None, {"input": x.numpy()})[0]
    assert np.allclose(got, want.numpy(), atol=1e-4)
