"""Configuration: defaults from the paper, overrides, validation messages, shipped configs."""

from pathlib import Path

import pytest

from sldarts.config import SearchConfig, load_config, parse_overrides
from sldarts.errors import SldartsError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


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


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    c = load_config(path)
    assert c.epochs == 50


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed")
    with pytest.raises(SldartsError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(SldartsError, match="mapping"):
        load_config(bad)
