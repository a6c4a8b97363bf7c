"""Data readers on tiny files in the real formats; loaders' order, sharding and augmentation."""

import pickle

import numpy as np
import pytest
import torch
from datafiles import write_cifar10, write_cifar100, write_image_folder, write_imagenet16

from sldarts.config import SearchConfig
from sldarts.data import build_search_data, load_arrays, split_indices
from sldarts.data.loader import TensorLoader, augment_batch
from sldarts.data.readers import ArrayData, DatasetInfo, read_cifar10, read_imagenet16
from sldarts.errors import SldartsError


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches(tmp_path, protocol):
    w = write_cifar10(tmp_path, protocol=protocol)
    tr, te = read_cifar10(tmp_path)
    assert tr.x.shape == (30, 3, 32, 32) and te.x.shape == (6, 3, 32, 32)
    x0, y0 = w["data_batch_1"]
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, row-major.
    assert tr.x[0, 1, 0, 0] == x0[0, 1024] and tr.x[0, 2, 31, 31] == x0[0, 3071]
    assert tr.y[:6].tolist() == y0
    assert te.y.tolist() == w["test_batch"][1]
    # data_root may also point at the folder itself
    assert read_cifar10(tmp_path / "cifar-10-batches-py")[0].x.shape[0] == 30


def test_cifar100_fine_labels(tmp_path):
    w = write_cifar100(tmp_path)
    tr, te, info = load_arrays("cifar100", tmp_path)
    assert info.num_classes == 100 and tr.y.tolist() == w["train"][1] and te.x.shape == (8, 3, 32, 32)


def test_imagenet16_keeps_the_first_120_classes_and_shifts_labels(tmp_path):
    w = write_imagenet16(tmp_path / "ImageNet16")
    tr, te = read_imagenet16(tmp_path)
    x, y = w["val_data"]
    keep = [i for i, v in enumerate(y) if v <= 120]
    assert te.y.tolist() == [y[i] - 1 for i in keep]
    assert np.array_equal(te.x.reshape(len(keep), -1), x[keep])
    assert te.x.shape[1:] == (3, 16, 16) and tr.y.max() < 120 and tr.y.min() >= 0


def test_image_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLDARTS_CACHE", str(tmp_path / "cache"))
    write_image_folder(tmp_path / "set")
    tr, te, info = load_arrays("imagefolder", tmp_path / "set")
    assert tr.x.shape == (9, 3, 12, 12) and tr.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert info.num_classes == 3
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "set/train/cat/0.png")).transpose(2, 0, 1)
    assert np.array_equal(tr.x[0], first)
    assert list((tmp_path / "cache").glob("*.npz"))  # cached for the next run
    tr2, _, _ = load_arrays("imagefolder", tmp_path / "set")
    assert np.array_equal(tr2.x, tr.x)


def test_missing_and_malformed_data_give_one_clear_error(tmp_path):
    with pytest.raises(SldartsError, match="cifar-10-batches-py"):
        read_cifar10(tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(SldartsError, match="data_batch_3"):
        read_cifar10(tmp_path)


def test_pickles_that_run_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    d = tmp_path / "cifar-10-batches-py"
    write_cifar10(tmp_path)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    with pytest.raises(SldartsError, match="unreadable"):
        read_cifar10(tmp_path)


def test_splits_are_disjoint_and_fixed_across_seeds():
    a = SearchConfig(optim="bilevel", train_samples=100)
    w, h = split_indices(1500, a)
    assert len(w) == 50 and len(h) == 50 and not set(w) & set(h)
    w2, _ = split_indices(1500, a.replace(seed=3))
    assert np.array_equal(w, w2)
    full, none = split_indices(1500, SearchConfig(data_fraction=0.5))
    assert none is None and len(full) == 750


def _loader(n=40, bs=8, **kw):
    x = np.arange(n * 3 * 4 * 4, dtype=np.int64).reshape(n, 3, 4, 4) % 256
    info = DatasetInfo("t", n, 3, (0.0,) * 3, (1 / 255,) * 3, pad=1, flip=True)
    data = ArrayData(x.astype(np.uint8), np.arange(n))  # label = sample id
    return TensorLoader(data, info, bs, "cpu", seed=0, stream=1, **kw)


def test_loader_order_is_a_function_of_epoch_and_shards_cover_the_set():
    a = _loader(augment=False, shuffle=True)
    e0 = torch.cat([y for _, y in a.epoch(0)])
    assert sorted(e0.tolist()) == list(range(40))
    assert torch.equal(e0, torch.cat([y for _, y in _loader(augment=False, shuffle=True).epoch(0)]))
    assert not torch.equal(e0, torch.cat([y for _, y in a.epoch(1)]))
    # resuming mid-epoch yields exactly the remaining batches
    assert torch.equal(torch.cat([y for _, y in a.epoch(0, start=2)]), e0[16:])
    r0, r1 = (_loader(augment=False, shuffle=True, rank=r, world=2) for r in (0, 1))
    i0 = torch.cat([y for _, y in r0.epoch(0)])
    i1 = torch.cat([y for _, y in r1.epoch(0)])
    assert len(i0) == len(i1) == 20 and not set(i0.tolist()) & set(i1.tolist())


def test_augmentation_crops_and_flips_per_sample():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x.repeat(64, 1, 1, 1), pad=1, flip=True, gen=g)
    assert out.shape == (128, 1, 4, 4)
    # every output is a padded-shifted (maybe flipped) window of its input
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    windows = set()
    for b in range(2):
        for dy in range(3):
            for dx in range(3):
                w = padded[b, :, dy:dy + 4, dx:dx + 4]
                windows.add((b, w.flatten().tolist().__repr__()))
                windows.add((b, w.flip(-1).flatten().tolist().__repr__()))
    got = {(i % 2, o.flatten().tolist().__repr__()) for i, o in enumerate(out)}
    assert got <= windows and len(got) > 9  # varied, and always a legal crop


def test_build_search_data_for_each_strategy():
    cfg = SearchConfig(train_samples=100, batch_size=10)
    d = build_search_data(cfg, torch.device("cpu"))
    assert d.arch is None and d.train.num_samples == 100 and d.info.in_channels == 1
    d = build_search_data(cfg.replace(optim="bilevel"), torch.device("cpu"))
    assert d.arch.num_samples == 50 and d.train.num_samples == 50
