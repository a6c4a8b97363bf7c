"""Configuration: defaults from the paper, overrides, validation messages, shipped configs."""

from pathlib import Path

import pytest

from sldarts.config import SearchConfig, load_config, parse_overrides
from sldarts.errors import SldartsError

CONFIGS = sorted((Path(__file__).parent.parent / "src" / "sldarts" / "configs").glob("*.yaml"))


def test_paper_defaults():
    c = SearchConfig()
    assert (c.space, c.optim, c.activation, c.epochs, c.batch_size) == ("nb201", "single", "sigmoid", 50, 64)
    assert c.lr == 0.005 and SearchConfig(space="darts").lr == 0.025
    assert (c.arch_lr, c.arch_beta1, c.arch_beta2, c.arch_wd) == (3e-4, 0.5, 0.999, 0.0)
    assert SearchConfig(activation="softmax").arch_wd == 1e-3
    assert c.num_cells == 5 and SearchConfig(space="darts").num_cells == 8


def test_overrides_are_typed():
    o = parse_overrides(["lr=0.1", "epochs=3", "augment=false", "space=darts", "alpha_init=-1.5"])
    c = load_config(None, o)
    assert c.lr == 0.1 and c.epochs == 3 and c.augment is False and c.alpha_init == -1.5


@pytest.mark.parametrize("overrides,needle", [
    ({"epoch": 3}, "did you mean 'epochs'"),
    ({"activation": "sigmod"}, "did you mean 'sigmoid'"),
    ({"batch_size": 0}, "out of range"),
    ({"batch_size": 1.5}, "wrong type"),
    ({"augment": "maybe"}, "wrong type"),
    ({"train_portion": 0}, "out of range"),
])
def test_bad_values(overrides, needle):
    with pytest.raises(SldartsError, match=needle):
        load_config(None, overrides)


def test_override_syntax_errors():
    with pytest.raises(SldartsError, match="key=value"):
        parse_overrides(["lr"])


INTENT = {  # what each shipped config is for: (space, dataset, optim, order, activation, lr, arch_wd)
    "darts-cifar10-bilevel2.yaml": ("darts", "cifar10", "bilevel", 2, "softmax", 0.025, 1e-3),
    "darts-cifar10-single-sigmoid.yaml": ("darts", "cifar10", "single", 1, "sigmoid", 0.025, 0.0),
    "darts-imagenet-single-sigmoid.yaml": ("darts", "imagenet", "single", 1, "sigmoid", 0.025, 0.0),
    "nb201-analysis-sgd.yaml": ("nb201", "cifar10", "single", 1, "softmax", 0.005, 0.0),
    "nb201-bilevel-softmax.yaml": ("nb201", "cifar10", "bilevel", 1, "softmax", 0.005, 1e-3),
    "nb201-single-sigmoid.yaml": ("nb201", "cifar10", "single", 1, "sigmoid", 0.005, 0.0),
}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_say_what_their_names_say(path):
    c = load_config(path)
    assert (c.space, c.dataset, c.optim, c.order, c.activation, c.lr, c.arch_wd) == INTENT[path.name]
    assert c.epochs == 50 and c.batch_size in (64, 360)  # the paper's search length and batches
    assert c.search_space().name == c.space and c.num_cells == (5 if c.space == "nb201" else 8)
    if c.activation == "sigmoid":  # the paper: no α weight decay under sigmoid
        assert c.arch_wd == 0.0
    if "analysis" in path.name:  # Sec. 4.1: both parameter sets by SGD at lr 0.005
        assert (c.arch_optimizer, c.arch_lr) == ("sgd", 0.005)


def test_shipped_configs_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    from sldarts.cli import main
    from sldarts.shipped import configs_dir, shipped_configs

    repo = Path(__file__).parent.parent
    assert (repo / "configs").resolve() == configs_dir().resolve()  # the repository's configs/ is the package's
    monkeypatch.chdir(tmp_path)
    for path in CONFIGS:  # by bare name, by file name and by the repository-relative path the docs write
        for name in (path.stem, path.name, f"configs/{path.name}"):
            assert load_config(name) == load_config(path)
    names = shipped_configs()
    assert {"table1", "table2", "table3", "table3-methods", "table5-darts-imagenet"} <= set(names)
    assert main(["configs"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == list(names)
    with pytest.raises(SldartsError, match="sldarts configs lists them"):
        load_config("nb201-single-sigmod")


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed")
    with pytest.raises(SldartsError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(SldartsError, match="mapping"):
        load_config(bad)
