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


def _quickstart(readme: str, heading: str) -> list[str]:
    """The commands of the bash block under a README heading, continuation lines joined, comments dropped."""
    import re

    block = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", readme, re.S).group(1)
    return [c.split("  #")[0].strip() for c in block.replace("\\\n", " ").splitlines()
            if c.strip() and not c.startswith("#")]


SMOKE = ["epochs=1", "train_samples=24", "eval_samples=24", "channels=4", "cells=1", "batch_size=24",
         "progress=lines", "log_every=100"]


def test_readme_quickstarts_run_and_a_search_ends_short_with_next_commands_that_run(tmp_path, monkeypatch, capsys):
    """The README's bash quick-starts run (at smoke size, on tiny data in the real formats); the end of each search
    leads with the result, has at most eight lines after the last epoch line, and every command it suggests runs
    as printed. Lines that need a download are skipped (the download has its own loopback tests)."""
    import itertools
    import json
    import shlex

    from datafiles import write_cifar10, write_image_folder

    from sldarts.spaces.nb201 import OPS, format_arch

    readme = (ROOT / "README.md").read_text()
    monkeypatch.chdir(tmp_path)
    bench = tmp_path / "nb201.csv"  # every cell of the space, as a search may derive any
    bench.write_text("index,arch,cifar10_test,cifar100_test\n" + "".join(
        f"{i},{format_arch(list(ops))},{i % 97},{i % 89}\n" for i, ops in enumerate(itertools.product(OPS, repeat=6))))
    monkeypatch.setenv("SLDARTS_NB201", str(bench))
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the README's commands run in the clone
    write_cifar10(tmp_path / "data", n_per_batch=12)
    folder_split = "valid_split" in {f.name for f in dataclasses.fields(SearchConfig)}
    write_image_folder(tmp_path / "photos_split", classes=("cat", "dog"), per_class=4, size=16)
    if folder_split:  # one folder of class sub-folders
        (tmp_path / "photos_split" / "train").rename(tmp_path / "photos")
    else:  # before valid_split: train/ and test/ sub-folders
        (tmp_path / "photos_split").rename(tmp_path / "photos")
    (tmp_path / "photos" / ("cat" if folder_split else "train/cat") / "0.png").rename(
        tmp_path / "photos" / ("cat" if folder_split else "train/cat") / "001.jpg")

    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)  # a terminal: no JSON unless --json
    suggested: list[str] = []
    commands = _quickstart(readme, "### Reproduce a table") + _quickstart(readme, "### Search your own image folder")
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "sldarts", command
        if argv[1:3] == ["data", "download"]:
            continue
        if argv[1] in ("retrain", "predict") and not folder_split:
            continue  # retraining on the searched images comes with valid_split
        if argv[1] in ("search", "retrain"):
            argv += SMOKE if argv[1] == "search" else ["epochs=1", "train_samples=16", "eval_samples=8", "channels=4",
                                                          "auxiliary_weight=0", "cells=2", "batch_size=8",
                                                          "progress=none"]
        argv = [a.replace("photos/cat/001.jpg", "photos/cat/001.jpg" if folder_split else "photos/train/cat/001.jpg")
                for a in argv]
        assert main(argv[1:]) == 0, command
        out, err = capsys.readouterr()
        if argv[1] == "search":
            assert out == ""
            tail = _closing(err)
            assert 2 <= len(tail) <= 8 and tail[0].startswith("result: "), tail
            suggested += [x for x in tail if x.startswith("next: ")][0][len("next: "):].split(" | ")
            if "nb201" in command:
                assert "NAS-Bench-201 test accuracy" in tail[1]
    # a user model: --json prints the result on a terminal too, and the suggestion includes an export
    assert main(["search", *SMOKE, "out=runs/u", f"space={USER}:build", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["arch_key"] == "choices" and len(_closing(err)) <= 8
    suggested += [x for x in _closing(err) if x.startswith("next: ")][0][len("next: "):].split(" | ")
    assert any(c.startswith("sldarts lookup runs/t3") for c in suggested)
    assert any(c.startswith("sldarts export runs/u") for c in suggested)
    done = set()  # each kind of command once (`analyze` of one run is `analyze` of another)
    for command in suggested:
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
