"""Bring your own model, space and data (tests/userspace.py, outside the package) through every command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import userspace
from PIL import Image
from test_distributed import two_rank_search
from test_reliability import final_state, killed_and_resumed

import sldarts
from sldarts.cli import main
from sldarts.config import SearchConfig
from sldarts.errors import SldartsError
from sldarts.nn import Choice, ChosenInputs, InputChoice, fix
from sldarts.spaces import SPACES, get_space
from sldarts.spaces.model import ChoiceSupernet

USER = str(Path(userspace.__file__).resolve())
SPACE, DATA = f"space={USER}:build", f"dataset={USER}:digits"
TINY = dict(epochs=1, train_samples=128, batch_size=32, eval_samples=64, progress="none", workers=0, threads=1)


@pytest.mark.parametrize("optim,order", [("single", 1), ("bilevel", 1), ("bilevel", 2)])
@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_user_model_searches_with_every_strategy_and_activation(tmp_path, optim, order, activation):
    model = userspace.build(10, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, valid = userspace.digits()
    res = sldarts.search(model=model, train_data=train, valid_data=valid, optim=optim, order=order,
                         activation=activation, out=str(tmp_path / "run"), **TINY)
    ch = res["choices"]
    assert set(ch) == {"block", "b3", "merge"} and res["arch_key"] == "choices"
    assert ch["block"] in ("conv3", "conv5", "skip", "pool") and ch["b3"] in ("conv1", "skip")
    assert len(ch["merge"]) == 2 and ch["merge"] == sorted(ch["merge"]) and set(ch["merge"]) <= {0, 1, 2}
    assert 0.0 <= res["param_free_ratio"] <= 1.0
    assert res["config"]["lr"] == 0.025  # the user space's default, not NB201's (resolved after the overrides)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # searched in place
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    alphas = [torch.tensor(rows[i]["alphas"]["block"]) for i in (0, -1)]
    assert not torch.equal(*alphas)  # α moved
    if activation == "sigmoid":  # every candidate starts at weight 1/n
        assert torch.allclose(torch.tensor(rows[0]["weights"]["block"]), torch.full((4,), 0.25))
        assert torch.allclose(torch.tensor(rows[0]["weights"]["merge"]), torch.full((3,), 1 / 3))


def test_alpha_is_a_parameter_of_the_search_never_of_the_weight_optimiser():
    net = ChoiceSupernet(userspace.build(10, 1))
    alphas, weights = {id(a) for a in net.alphas()}, {id(w) for w in net.weights()}
    assert len(alphas) == 3 and not alphas & weights  # b1 and b2 share one α ("block")
    assert len(weights) + len(alphas) == len(list(net.parameters()))
    assert not any(n.startswith("arch") for n, _ in net.model.named_parameters())  # the user's model holds none
    assert net.param_free_ratio({"block": "skip", "b3": "conv1", "merge": [0, 1]}) == 0.5


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_fix_gives_the_hand_written_network_and_the_supernet_function(tmp_path):
    model = userspace.build(10, 1)
    train, valid = userspace.digits()
    res = sldarts.search(model=model, train_data=train, valid_data=valid, out=str(tmp_path / "run"), **TINY)
    choices = {"block": "conv5", "b3": "conv1", "merge": [0, 2]}  # and the searched one below
    for ch in (choices, res["choices"]):
        fixed = fix(model, ch)
        assert not any(isinstance(m, (Choice, InputChoice)) for m in fixed.modules())
        hand = userspace.HandNet(ch["block"], ch["b3"], ch["merge"])
        assert sum(p.numel() for p in fixed.parameters()) == sum(p.numel() for p in hand.parameters())
        # the supernet with one-hot weights on the chosen candidates computes the same function
        sup = ChoiceSupernet(model).eval()
        onehot = {}
        for label, ms in sup.groups.items():
            m = ms[0]
            idx = [m.names.index(ch[label])] if isinstance(m, Choice) else ch[label]
            onehot[label.replace(".", "/")] = torch.zeros(len(sup.arch[label.replace(".", "/")])).index_fill(
                0, torch.tensor(idx), 1.0)
        x = torch.randn(5, 1, 8, 8)
        with torch.no_grad():
            assert torch.allclose(sup(x, weights=onehot), fixed.eval()(x), atol=1e-6)
        scripted = torch.jit.script(fixed)  # plain modules only: exportable, no α, no sldarts state
        assert torch.allclose(scripted(x), fixed(x), atol=1e-6)
    reset = fix(model, choices, reset=True)
    assert not torch.equal(reset.b1.weight, model.b1.candidates["conv5"].weight)
    assert isinstance(fix(model, choices).merge, ChosenInputs)
    with pytest.raises(SldartsError, match="not a candidate"):
        fix(model, {**choices, "block": "conv7"})
    with pytest.raises(SldartsError, match="no entry for 'b3'"):
        fix(model, {"block": "conv3", "merge": [0, 1]})


def test_cli_search_derive_fix_complexity_plot_retrain_by_import_path(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["search", SPACE, DATA, "epochs=2", "train_samples=128", "batch_size=32", "eval_samples=64",
            "progress=none", "workers=0", f"out={run}"]
    assert main(args) == 0
    res = json.loads((run / "result.json").read_text())
    assert res["space"].endswith("userspace.py:build") and set(res["choices"]) == {"block", "b3", "merge"}
    capsys.readouterr()
    assert main(["derive", str(run)]) == 0
    assert json.loads(capsys.readouterr().out) == res["choices"]
    assert main(["complexity", str(run)]) == 0
    cx = json.loads(capsys.readouterr().out)
    ch = res["choices"]
    hand = userspace.HandNet(ch["block"], ch["b3"], ch["merge"])
    assert cx["params"] == sum(p.numel() for p in hand.parameters()) == res["complexity"]["params"]
    assert main(["plot", str(run), "--out", str(tmp_path / "fig" / "c")]) == 0
    dot = (tmp_path / "fig" / "c_choices.dot").read_text()
    assert all(json.dumps(v) in dot or str(v) in dot for v in (ch["block"], ch["b3"]))
    assert main(["retrain", str(run), "epochs=1", "batch_size=32", "train_samples=64", "eval_samples=32",
                 "progress=none", "workers=0", f"out={tmp_path / 'rt'}"]) == 0
    rt = json.loads((tmp_path / "rt" / "result.json").read_text())
    assert rt["recipe"] == "plain" and rt["choices"] == ch and rt["params"] == cx["params"]
    assert rt["config"]["dataset"].endswith("userspace.py:digits")  # the search's data, not CIFAR-10


def test_own_search_space_class_by_import_path_and_entry_point(tmp_path, capsys, monkeypatch):
    for optim, order, act in (("single", 1, "sigmoid"), ("bilevel", 2, "softmax")):
        res = sldarts.search(space=f"{USER}:chain", dataset="digits", optim=optim, order=order, activation=act,
                             out=str(tmp_path / f"{optim}{order}"), **TINY)
        assert len(res["ops"]) == 3 and set(res["ops"]) <= set(userspace.OPS)
        assert res["complexity"]["params"] == sum(
            p.numel() for p in userspace.ChainNet(res["ops"], 10, 1).parameters())  # at the searched shape
    assert SearchConfig(space=f"{USER}:chain").lr == 0.05  # the space's default
    capsys.readouterr()
    assert main(["complexity", "--space", f"{USER}:chain", "--arch", '["conv3", "skip", "pool"]']) == 0
    assert json.loads(capsys.readouterr().out)["params"] == sum(
        p.numel() for p in userspace.ChainNet(["conv3", "skip", "pool"], 10, 3).parameters())
    # a package's entry point registers the space under its own name
    dist = tmp_path / "site" / "myspaces-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myspaces\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sldarts.spaces]\nchain = userspace:chain\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(SPACES, "_entry_points_read", False)
    assert get_space("chain") is userspace.chain and "chain" in SPACES.names()
    assert SearchConfig(space="chain").num_cells == 3


def test_sigkill_and_resume_of_a_user_model_is_bit_identical(tmp_path):
    args = ["search", SPACE, DATA, "epochs=3", "train_samples=192", "batch_size=32", "eval_samples=32",
            "deterministic=true", "threads=1", "progress=lines", "log_every=1", "workers=0", "optim=bilevel"]
    full, part = killed_and_resumed(args, tmp_path)
    assert full["choices"] == part["choices"]
    assert any(k.startswith("arch.") for k in final_state(tmp_path / "part"))


def test_one_and_two_process_searches_of_a_user_model_agree_on_alpha(tmp_path):
    common = [SPACE, DATA, "epochs=2", "train_samples=128", "batch_size=32", "eval_samples=64", "progress=none",
              "device=cpu", "threads=1", "workers=0"]
    a, _ = two_rank_search(tmp_path, 29531, *common)
    one = subprocess.run([sys.executable, "-m", "sldarts", "search", *common, f"out={tmp_path / 'one'}"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    single = final_state(tmp_path / "one")
    first = json.loads(open(tmp_path / "one" / "metrics.jsonl").readline())["alphas"]
    for k in (k for k in a if k.startswith("arch.")):
        assert torch.allclose(a[k], single[k], atol=1e-5), k
        assert not torch.allclose(single[k], torch.tensor(first[k[5:]]), atol=1e-4), k  # α moved


@pytest.mark.parametrize("args,message", [
    (["space=not_a_pkg.models:build"], "no module named 'not_a_pkg'"),
    ([f"space={USER}:bulid"], "has no attribute 'bulid' (did you mean 'build'?)"),
    ([f"space={USER}:not_a_model"], "returned a int, not an nn.Module"),
    ([f"space={USER}:no_choice"], "has no sldarts.nn.Choice or InputChoice"),
    ([f"space={USER}:C"], "is a int, not a SearchSpace or a model factory"),
    (["space=missing/file.py:build"], "file missing/file.py does not exist"),
    ([SPACE, f"dataset={USER}:bad_data"], "bad_data[0] returned (list, str)"),
    ([SPACE, f"dataset={USER}:C"], "is a int, not a function returning (train, test)"),
])
def test_bad_user_input_is_one_line(tmp_path, capsys, args, message):
    message = message.replace("bad_data[0]", "train_data[0]")
    assert main(["search", *args, "epochs=1", "progress=none", "workers=0", f"out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sldarts: error:") and message in err, err


def test_choice_constructors_refuse_bad_arguments():
    with pytest.raises(SldartsError, match="non-empty dict of candidates"):
        Choice({})
    with pytest.raises(SldartsError, match="not an nn.Module"):
        Choice({"a": 3})
    with pytest.raises(SldartsError, match="n_chosen <= n_inputs"):
        InputChoice(2, 3)
    with pytest.raises(SldartsError, match="differ"):
        ChoiceSupernet(torch.nn.Sequential(Choice({"a": torch.nn.Identity()}, label="x"),
                                           Choice({"b": torch.nn.Identity()}, label="x")))


def _jpeg(path: Path, w: int, h: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    Image.fromarray(torch.randint(0, 255, (h, w, 3), generator=g, dtype=torch.uint8).numpy()).save(path)


def _folder(root: Path, per_class: int) -> None:
    sizes = [(40, 30), (64, 48), (33, 70), (50, 50)]
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "train" else 4):
                _jpeg(root / split / c / f"{i}.jpg", *sizes[i % 4], seed=i)


def _data_peak_rss(root: Path, cache: Path, limit: int) -> float:
    """Peak RSS of a fresh process that builds the search data of a folder and draws an epoch of each loader
    (in memory: all of its training images, since only the images a run uses are decoded)."""
    code = ("import torch, sldarts.bench as b; from sldarts.config import SearchConfig; "
            "from sldarts.data import build_search_data; "
            f"cfg = SearchConfig(dataset='imagefolder', data_root={str(root)!r}, image_size=96, "
            f"cache_limit_mb={limit}, train_samples={32 if limit == 0 else 0}, eval_samples=8, batch_size=8, "
            "workers=0); "
            "d = build_search_data(cfg, torch.device('cpu')); "
            "[None for loader in (d.train, d.eval) for _ in loader.epoch(0)]; "
            "print(type(d.train).__name__, b.own_peak_rss_mb())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "SLDARTS_CACHE": str(cache), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    kind, mb = r.stdout.split()[-2:]
    assert kind == ("StreamLoader" if limit == 0 else "TensorLoader")
    return float(mb)


def test_mixed_size_image_folder_streams_with_memory_independent_of_its_size(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    _folder(small, 8)
    _folder(big, 2000)  # 4000 training images of mixed sizes: 110 MB decoded at 96x96
    streamed = [_data_peak_rss(d, tmp_path / "cache", 0) for d in (small, big)]
    in_memory = _data_peak_rss(big, tmp_path / "cache", 10_000)
    assert streamed[1] - streamed[0] < 10, streamed  # the folder's size does not reach memory
    assert in_memory - streamed[1] > 100, (in_memory, streamed)  # the check can fail: holding it costs that much
    res = sldarts.search(dataset="imagefolder", data_root=str(big), image_size=96, cache_limit_mb=0, epochs=1,
                         train_samples=16, eval_samples=8, batch_size=8, channels=4, cells=1, workers=0,
                         progress="none", out=str(tmp_path / "run"))
    assert res["config"]["image_size"] == 96 and 0 <= res["valid_acc"] <= 1


def test_darts_search_stem_follows_the_image_size():
    darts = get_space("darts")
    assert darts.supernet(SearchConfig(space="darts", image_size=128, channels=4, cells=3), 10, 3).stem1 is not None
    assert darts.supernet(SearchConfig(space="darts", image_size=32, channels=4, cells=3), 10, 3).stem1 is None
    assert darts.supernet(SearchConfig(space="darts", image_size=128, stem="cifar", channels=4, cells=3),
                          10, 3).stem1 is None
