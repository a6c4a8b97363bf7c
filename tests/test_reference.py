"""The key and CLI reference: every config key carries help, `--help` lists them all, the docs match the code."""

import dataclasses

import pytest

from sldarts import reference
from sldarts.cli import main
from sldarts.config import RetrainConfig, SearchConfig


@pytest.mark.parametrize("schema", [SearchConfig, RetrainConfig])
def test_every_config_key_has_one_line_help(schema):
    missing = [f.name for f in dataclasses.fields(schema) if not f.metadata.get("help")]
    assert not missing, f"config keys without metadata help: {missing}"
    assert all("\n" not in f.metadata["help"] for f in dataclasses.fields(schema))


@pytest.mark.parametrize("command,schema", [("search", SearchConfig), ("retrain", RetrainConfig)])
def test_help_lists_every_key_with_its_default_and_help(command, schema, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    fields = dataclasses.fields(schema)
    for f in fields:
        default = reference._default(f.default)
        assert f"  {f.name}={default}\n      {f.metadata['help']}" in text, f.name
    assert len(reference.keys(schema)) == len(fields)
