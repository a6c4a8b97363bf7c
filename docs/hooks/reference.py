"""MkDocs hook: the configuration-key and CLI reference pages, generated from the code at every build.

The pages come from :mod:`sldarts.reference` — the source ``sldarts search --help`` prints — so they cannot
fall behind the code: a key added to the dataclasses appears here on the next build, with its help text.
"""

from __future__ import annotations

from mkdocs.structure.files import File


def config_page() -> str:
    from sldarts import reference

    search, retrain = reference.search_keys(), reference.retrain_keys()
    return "\n".join([
        "# Configuration keys",
        "",
        "Generated from the dataclasses in `sldarts/config.py` (the same text as `sldarts search --help` and",
        "`sldarts retrain --help`). Give a key as `key=value` on the command line, as `key: value` in a `--config`",
        "YAML file, or as a keyword of `sldarts.search(...)`. Unknown keys, wrong types and values outside",
        "*allowed* are refused with one line naming the key.",
        "",
        "## Search",
        "",
        f"{len(search)} keys of `SearchConfig`; the run options (seed to logger) are shared with retraining.",
        "",
        reference.keys_markdown(search),
        "",
        "## Retrain",
        "",
        f"{len(retrain)} keys of `RetrainConfig`. The recipe (`--recipe` or `recipe=`) sets the training keys'",
        "defaults (shown: `darts-cifar`'s); every key given explicitly wins. See",
        "[evaluation](../evaluation.md#retrain).",
        "",
        reference.keys_markdown(retrain),
        "",
    ])


def cli_page() -> str:
    from sldarts import reference
    from sldarts.cli import build_parser

    return "# Command line\n\nGenerated from the `argparse` parser of `sldarts` (`sldarts COMMAND --help`).\n\n" + \
        reference.cli_markdown(build_parser())


PAGES = {"reference/config.md": config_page, "reference/cli.md": cli_page}


def on_files(files, config):
    for path, build in PAGES.items():
        old = files.get_file_from_path(path)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, path, content=build()))
    return files
