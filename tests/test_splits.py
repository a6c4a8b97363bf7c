"""Splits that mean what they say, and one image pipeline: valid_acc never reads test files, a folder
without a split gets a stratified held-out validation split, streamed and in-memory images are equal."""

import json

import numpy as np
import torch
from PIL import Image

import sldarts
from sldarts.config import SearchConfig
from sldarts.data import build_search_data
from sldarts.data.readers import holdout

TINY = dict(space="nb201", channels=4, cells=1, epochs=1, batch_size=8, workers=0, progress="none")


def _jpegs(root, classes=("a", "b", "c"), per_class=6, size=(24, 20), seed=0, value=None):
    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (np.full((size[1], size[0], 3), value, np.uint8) if value is not None else
                   (rng.integers(0, 60, (size[1], size[0], 3)) + 90 * k).astype(np.uint8))
            Image.fromarray(arr).save(root / c / f"{i}.jpg", quality=95)


def test_holdout_is_stratified_and_the_same_for_every_call():
    y = np.repeat([0, 1, 2], [10, 20, 3])
    keep, held = holdout(y, 0.1)
    assert sorted(np.bincount(y[held]).tolist()) == [1, 1, 2]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(y)
    assert np.array_equal(holdout(y, 0.1)[1], held)


def test_valid_acc_never_touches_the_test_split(tmp_path, monkeypatch):
    """A poisoned test split (one colour per class, the opposite of train's) next to the data: every image
    decoded while valid_acc is measured is logged, and none is a test file; test_acc is measured once."""
    from sldarts.data import readers
    from sldarts.search_run import SearchRun

    monkeypatch.setenv("SLDARTS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    _jpegs(root / "train", per_class=5)
    for k, c in enumerate("cba"):
        _jpegs(root / "test", classes=(c,), per_class=2, value=90 * k)
    opened, phase = [], {"now": ""}
    decode = readers._decode_pil
    monkeypatch.setattr(readers, "_decode_pil", lambda p: (opened.append((phase["now"], str(p))), decode(p))[1])
    measure = SearchRun.measure

    def measured(self):
        phase["now"] = "valid"
        try:
            return measure(self)
        finally:
            phase["now"] = ""

    monkeypatch.setattr(SearchRun, "measure", measured)
    res = sldarts.search(**TINY, dataset="imagefolder", data_root=str(root), cache_limit_mb=0,
                         out=str(tmp_path / "run"))
    valid_reads = [p for ph, p in opened if ph == "valid"]
    assert len(valid_reads) == 2 * 3 and not any("/test/" in p for p in valid_reads)  # epochs 0 and 1
    assert sum("/test/" in p for _, p in opened) == 6 and "test_acc" in res  # once, at the end
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["valid_held_out"]) == 3 and split["test"].endswith("test")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "valid 3 from" in log and "test 6 from" in log and "measured once at the end" in log
    assert "centre crop 20x20 (image_size=0: the first image's shorter side), streamed" in log


def test_streamed_and_in_memory_give_the_same_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("SLDARTS_CACHE", str(tmp_path / "cache"))
    _jpegs(tmp_path / "one", per_class=4, size=(30, 22))
    base = dict(TINY, dataset="imagefolder", data_root=str(tmp_path / "one"), image_size=16, valid_split=0.25)
    mem = build_search_data(SearchConfig(**base), torch.device("cpu"))
    streamed = build_search_data(SearchConfig(**base, cache_limit_mb=0), torch.device("cpu"))
    assert type(mem.eval).__name__ == "TensorLoader" and type(streamed.eval).__name__ == "StreamLoader"
    (xm, ym), (xs, ys) = next(iter(mem.eval.epoch(0))), next(iter(streamed.eval.epoch(0)))
    assert xm.shape == xs.shape == (3, 3, 16, 16)
    assert torch.equal(ym, ys) and torch.equal(xm.contiguous(), xs.contiguous())
    assert mem.input_spec()["size"] == 16 and mem.input_spec()["crop"] == "center"
    assert json.dumps(mem.split) == json.dumps(streamed.split)


def test_built_in_spaces_fit_their_stem_to_the_input():
    from sldarts.spaces import get_space

    cfg = SearchConfig(**TINY)
    cfg.input_side = 96
    net = get_space("nb201").supernet(cfg, 3, 3)
    assert net.stem(torch.zeros(2, 3, 96, 96)).shape[-1] == 24  # two stride-2 convs: cells see <= 32 px
    cfg.input_side = 32
    assert len(get_space("nb201").supernet(cfg, 3, 3).stem) == 2  # the benchmark's own stem, unchanged
    darts = dict(TINY, space="darts", cells=2)
    big = SearchConfig(**darts)
    big.input_side = 128
    assert get_space("darts").supernet(big, 3, 3).stem1 is not None
    explicit = SearchConfig(**darts, stem="cifar")
    explicit.input_side = 128
    assert get_space("darts").supernet(explicit, 3, 3).stem1 is None  # an explicit stem= wins
    evalnet = get_space("nb201").eval_network("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", 3, 3,
                                              channels=4, cells=1, side=64)
    assert evalnet(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_the_same_command_twice_gets_a_fresh_directory_unless_out_is_named(tmp_path):
    import pytest
    import yaml

    from sldarts.errors import SldartsError
    from sldarts.rundir import prepare_run_dir

    default = tmp_path / "runs" / "nb201-digits"
    for expect in ("nb201-digits", "nb201-digits-2", "nb201-digits-3"):
        out, resuming = prepare_run_dir(SearchConfig(**TINY), default)
        assert out.name == expect and not resuming
        (out / "config.yaml").write_text(yaml.safe_dump(SearchConfig(**TINY).to_dict()))  # a started run's
    assert prepare_run_dir(SearchConfig(**TINY, resume=True), default)[0] == default  # resume: the named one
    with pytest.raises(SldartsError, match="already holds a run"):
        prepare_run_dir(SearchConfig(**TINY, out=str(default)), default)


def test_in_memory_training_crops_are_random_resized_crops():
    from sldarts.data.loader import resized_crop_batch

    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8).repeat(64, 1, 1, 1)
    full = resized_crop_batch(x, False, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(full, x, atol=1e-4)  # the whole image at its own size: unchanged
    flipped = resized_crop_batch(x, True, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    mirrored = torch.tensor([torch.allclose(f, x[0].flip(-1), atol=1e-4) for f in flipped])
    assert 0 < int(mirrored.sum()) < 64  # about half are flipped
    crops = resized_crop_batch(x, False, torch.Generator().manual_seed(1))
    assert crops.shape == x.shape and crops.min() >= x.min() and crops.max() <= x.max()
    assert len({round(float(c.std()), 3) for c in crops}) > 32  # boxes of different sizes


def test_built_in_sets_never_validate_on_their_test_split(tmp_path, monkeypatch):
    """digits with a poisoned test split (every image white, every label 3): bi-level α batches, w batches and
    valid_acc never read a loader that holds a poisoned image; the test split is read once, at the end, and
    test_acc is then 0 or 1 exactly. valid_split=0 validates on the training images, not on the test split."""
    from sldarts import data as data_mod
    from sldarts.data.loader import TensorLoader
    from sldarts.data.readers import ArrayData, read_digits
    from sldarts.search_run import SearchRun

    train, test = read_digits()
    poison = ArrayData(np.full_like(test.x, 255), np.full_like(test.y, 3))
    assert not (train.x.reshape(len(train.y), -1) == 255).all(1).any()  # no real digit is all white
    monkeypatch.setattr(data_mod, "read_digits", lambda: (train, poison))
    reads, phase = [], {"now": "search"}
    batch = TensorLoader.batch

    def spied(self, epoch, k):
        reads.append((phase["now"], bool((self.x.flatten(1) == 255).all(1).any())))
        return batch(self, epoch, k)

    monkeypatch.setattr(TensorLoader, "batch", spied)
    result = SearchRun.result

    def at_the_end(self, *a):
        phase["now"] = "end"
        return result(self, *a)

    monkeypatch.setattr(SearchRun, "result", at_the_end)
    res = sldarts.search(**TINY, optim="bilevel", train_samples=32, eval_samples=16, out=str(tmp_path / "run"))
    assert reads and not any(poisoned for ph, poisoned in reads if ph == "search")
    assert sum(poisoned for ph, poisoned in reads if ph == "end") == 2  # the test split (capped at 16), once
    assert res["test_acc"] in (0.0, 1.0) and res["valid_acc"] not in (0.0, 1.0)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["valid_held_out"]) == 150 and split["test"] == "digits test"  # 10% of 1500, per class
    first = (tmp_path / "run" / "log.txt").read_text()
    assert ("valid 16 from 0.1 of digits train held out (stratified) (valid_acc), test 16 from digits test "
            "(test_acc, measured once at the end)") in first
    none = build_search_data(SearchConfig(**TINY, valid_split=0, train_samples=16), torch.device("cpu"))
    assert torch.equal(none.eval.x, none.train.x) and (none.test.x == 255).all()
    assert "valid 16 from digits train (valid_split=0: the training images themselves)" in none.note
