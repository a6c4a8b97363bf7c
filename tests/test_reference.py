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


def _closing(err: str) -> list[str]:
    lines = err.splitlines()
    last_epoch = max(i for i, x in enumerate(lines) if x.startswith("epoch ") and " loss " in x and "step" not in x)
    return lines[last_epoch + 1:]


def test_the_end_of_a_search_is_short_and_its_next_commands_run_as_printed(tmp_path, monkeypatch, capsys):
    """The first thing a newcomer reads: result first, at most eight lines, every suggested command works."""
    import itertools
    import json
    import shlex

    from sldarts.spaces.nb201 import OPS, format_arch

    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "nb201.csv"  # every cell of the space, as a search may derive any
    bench.write_text("index,arch,cifar10_test,cifar100_test\n" + "".join(
        f"{i},{format_arch(list(ops))},{i % 97},{i % 89}\n" for i, ops in enumerate(itertools.product(OPS, repeat=6))))
    common = ["epochs=1", "train_samples=64", "eval_samples=32", "channels=4", "cells=1", "batch_size=32",
              "progress=lines", "log_every=100"]
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)  # a terminal: no JSON unless --json
    assert main(["search", *common, "out=runs/a", f"benchmark={bench}"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    tail = _closing(err)
    assert 3 <= len(tail) <= 8 and tail[0].startswith("result: |")
    assert any("NAS-Bench-201 test accuracy" in x for x in tail[:3])
    nxt = [x for x in tail if x.startswith("next: ")][0][len("next: "):].split(" | ")
    assert any(c.startswith("sldarts lookup runs/a") for c in nxt)
    # a user model: the suggestion includes an export that runs as printed
    assert main(["search", *common, "out=runs/u", f"space={USER}:build", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["arch_key"] == "choices"  # --json prints it on a terminal too
    tail_u = _closing(err)
    assert len(tail_u) <= 8
    nxt += [x for x in tail_u if x.startswith("next: ")][0][len("next: "):].split(" | ")
    assert any(c.startswith("sldarts export runs/u") for c in nxt)
    done = set()  # each kind of command once (the user run's `analyze` is the built-in run's)
    for command in nxt:
        argv = shlex.split(command)
        if argv[1] not in done:
            assert argv[0] == "sldarts" and main(argv[1:]) == 0, command
            done.add(argv[1])
    # (with standard output a pipe the JSON is printed without --json: tests/test_run.py::test_cli_search_and_derive)


USER = str(__import__("pathlib").Path(__file__).with_name("userspace.py"))


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_licence_citation_and_install_advice():
    import re

    import cffconvert
    import yaml

    import sldarts

    assert 'license = {text = "MIT"}' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = (ROOT / "CITATION.cff").read_text()
    cffconvert.Citation(cff).validate()  # raises on a file the CFF 1.2.0 schema rejects
    meta = yaml.safe_load(cff)
    assert meta["version"] == sldarts.__version__ and meta["license"] == "MIT"
    assert meta["preferred-citation"]["authors"][0]["family-names"] == "Hou"
    # no error message advises installing a name no index publishes: extras only from a clone (-e ".[x]")
    advice = [f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / "src").rglob("*.py")
              for m in re.findall(r".{0,30}sldarts\[.{0,20}", p.read_text())]
    assert not advice, advice


def test_the_docs_reference_pages_list_every_key_and_command():
    """The pages the docs build generates (docs/hooks/reference.py) hold every key of both dataclasses and every
    subcommand; `mkdocs build --strict` in .ci/run checks their links."""
    import importlib.util

    from sldarts.cli import build_parser

    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs" / "hooks" / "reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.config_page()
    search, retrain = page.split("\n## Retrain\n")
    for part, schema in ((search, SearchConfig), (retrain, RetrainConfig)):
        rows = [line for line in part.splitlines() if line.startswith("| `")]
        assert [r.split("`")[1] for r in rows] == [k.name for k in reference.keys(schema)]
        assert len(rows) == len(dataclasses.fields(schema))
    cli = hook.cli_page()
    for name in reference._subparsers(build_parser()):
        assert f"## `sldarts {name}`" in cli
    assert "| `--json` |" in cli and "| `--benchmark` |" in cli
