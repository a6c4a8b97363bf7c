"""The configuration keys and CLI flags as data: one source for ``--help`` and the generated docs pages.

Every key's type, default and allowed values come from the dataclass fields of :mod:`sldarts.config`, its
one-line help from the field's ``metadata["help"]``; every command and flag from :func:`sldarts.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str
    allowed: str
    help: str


def _type_name(hint: typing.Any) -> str:
    parts = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    names = [getattr(p, "__name__", str(p)) for p in parts if p is not type(None)]
    return " or ".join(names) + (" (may be empty)" if type(None) in parts else "")


def _allowed(meta: typing.Mapping[str, typing.Any]) -> str:
    choices = meta.get("choices")
    if choices is not None:
        return ", ".join(choices() if callable(choices) else choices)
    if "range" in meta:
        lo, hi, lo_open = meta["range"]
        if lo is not None and hi is not None:
            return f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        if lo is not None:
            return f"{'>' if lo_open else '>='} {lo:g}"
        return f"<= {hi:g}"
    return ""


def _default(value: typing.Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    return f"{value:g}" if isinstance(value, float) else str(value)


def keys(schema: type) -> list[Key]:
    """One :class:`Key` per field of a config dataclass, in declaration order, the run options last."""
    from sldarts.config import RunOptions

    hints = typing.get_type_hints(schema)
    tail = {f.name for f in dataclasses.fields(RunOptions)}
    fields = sorted(dataclasses.fields(schema), key=lambda f: f.name in tail)  # stable: order kept within each
    return [Key(f.name, _type_name(hints[f.name]), _default(f.default), _allowed(f.metadata),
                f.metadata.get("help", "")) for f in fields]


def search_keys() -> list[Key]:
    from sldarts.config import SearchConfig

    return keys(SearchConfig)


def retrain_keys() -> list[Key]:
    from sldarts.config import RetrainConfig

    return keys(RetrainConfig)


def help_epilog(rows: list[Key], note: str = "") -> str:
    """Every key for ``--help``: ``name=default``, then its help and allowed values."""
    lines = ["keys (key=value on the command line or key: value in --config YAML; shown with defaults):"]
    for k in rows:
        allowed = f" [{k.allowed}]" if k.allowed else ""
        lines.append(f"  {k.name}={k.default}")
        lines.append(f"      {k.help}{allowed}")
    if note:
        lines.append(note)
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def keys_markdown(rows: list[Key]) -> str:
    out = ["| key | type | default | allowed | help |", "| --- | --- | --- | --- | --- |"]
    for k in rows:
        out.append(f"| `{k.name}` | {k.type} | `{_cell(k.default)}` | {_cell(k.allowed)} | {_cell(k.help)} |")
    return "\n".join(out)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    out = ["| argument | default | help |", "| --- | --- | --- |"]
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        name = ", ".join(a.option_strings) if a.option_strings else (a.metavar or a.dest)
        if a.choices and not isinstance(a, argparse._SubParsersAction):
            name += " {" + ",".join(map(str, a.choices)) + "}"
        default = "" if a.default in (None, False, argparse.SUPPRESS) or not a.option_strings else f"`{a.default}`"
        if a.nargs in ("*", "+"):
            name += " ..." if a.nargs == "*" else " ... (one or more)"
        out.append(f"| `{_cell(str(name))}` | {default} | {_cell(a.help or '')} |")
    return out


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """Every command and flag of ``sldarts``, from its argparse parser (``sldarts.cli.build_parser()``: the
    CLI imports this module for its key lists, so the parser is passed in rather than imported)."""
    helps = {}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
    out = []
    for name, sub in _subparsers(parser).items():
        out += [f"## `sldarts {name}`", "", helps.get(name) or "", "", "```text", sub.format_usage().strip(), "```",
                "", *_flag_rows(sub), ""]
        if name == "search":
            out += ["Every [search key](config.md#search) is accepted as `key=value`.", ""]
        if name == "retrain":
            out += ["Every [retrain key](config.md#retrain) is accepted as `key=value`.", ""]
    return "\n".join(out)
