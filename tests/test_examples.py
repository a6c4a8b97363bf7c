"""The examples run as shipped (CI runs them): a user's ResNet with choices, NB201 written with the public API."""

import importlib.util
import json
import re
from pathlib import Path

from sldarts.cli import main
from sldarts.config import SearchConfig
from sldarts.nn import Choice, InputChoice
from sldarts.spaces import build_supernet
from sldarts.spaces.model import ChoiceSupernet
from sldarts.spaces.nb201 import parse_arch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet_example_searches_fixes_and_retrains(tmp_path):
    ex = load("resnet_choices")
    out = ex.main(out=str(tmp_path / "run"))  # the shipped settings: 8 search + 3 retrain epochs on digits
    fixed = ex.SmallResNet()
    assert set(out["choices"]) == {"stage1", "stage2", "stage3", "head"}
    assert out["retrained_top1"] > 0.5  # 10 classes: well above chance after 3 epochs
    import sldarts

    plain = sldarts.fix(fixed, out["choices"])
    assert not any(isinstance(m, (Choice, InputChoice)) for m in plain.modules())
    assert out["fixed_params"] == sum(p.numel() for p in plain.parameters())
    rt = json.loads((tmp_path / "run-retrain" / "result.json").read_text())
    assert rt["params"] == out["fixed_params"] and rt["choices"] == out["choices"]


def test_nb201_with_the_public_api_has_the_builtin_weights_and_derives_arch_strings(tmp_path):
    ex = load("nb201_public_api")
    user = ChoiceSupernet(ex.build(10, 3))
    builtin = build_supernet(SearchConfig(), 10, 3)
    n = sum(p.numel() for p in user.weights())
    assert n == sum(p.numel() for p in builtin.weights()) == 1_692_826
    assert [tuple(a.shape) for a in user.alphas()] == [(5,)] * 6  # one decision per edge, shared by 15 cells
    import sldarts

    res = sldarts.search(space=f"{EXAMPLES / 'nb201_public_api.py'}:build", epochs=1, train_samples=128,
                         batch_size=32, eval_samples=32, progress="none", out=str(tmp_path / "run"))
    arch = ex.arch_string(res["choices"])
    assert len(parse_arch(arch)) == 6  # a valid NAS-Bench-201 arch string


def test_bench_times_a_user_model_beside_the_builtin_reference(tmp_path, capsys):
    out = tmp_path / "b.json"
    space = f"nb201,{EXAMPLES / 'nb201_public_api.py'}:build"
    assert main(["bench", "--space", space, "--modes", "single", "--batch-size", "2", "--image", "8",
                 "--channels", "16",
                 "--repeats", "1", "--out", str(out)]) == 0
    rows = json.load(open(out))["rows"]
    assert [r["impl"] for r in rows] == ["reference", "optimized", "generic"]
    line = [x for x in capsys.readouterr().out.splitlines() if "| generic |" in x][0]
    assert line.split("|")[6].strip().endswith("x")  # a ratio against the nb201 reference row


def test_the_readme_snippet_runs_as_it_stands(tmp_path, monkeypatch):
    readme = (EXAMPLES.parent / "README.md").read_text()
    code = re.search(r"### Your own model and data.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace("epochs=5", "epochs=1, progress='none'"), "README", "exec"), scope)
    assert scope["res"]["choices"]["block"] in ("conv3", "conv5", "skip")
    assert not any(isinstance(m, Choice) for m in scope["plain"].modules())
