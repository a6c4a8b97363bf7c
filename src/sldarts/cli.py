"""Command line: parse, call the API, print. No logic lives here.

Every :class:`SldartsError` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sldarts.errors import SldartsError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other error
        raise SldartsError(f"{self.prog}: {message} (see {self.prog} --help)")


def _search(args: argparse.Namespace) -> int:
    from sldarts.config import load_config, parse_overrides
    from sldarts.search_run import search

    cfg = load_config(args.config, parse_overrides(args.overrides))
    result = search(cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return 0


def _derive(args: argparse.Namespace) -> int:
    from sldarts.search_run import derive

    d = derive(args.run_dir)
    arch = d.get("arch", d.get("genotype"))
    print(arch if isinstance(arch, str) else json.dumps(arch))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sldarts.bench import dump, run_bench, table

    spaces = [args.space] if args.space else ["nb201", "darts"]
    modes = args.modes.split(",")
    res = run_bench(spaces, modes, args.batch_size, args.device, args.repeats, args.image, args.channels,
                    progress=lambda s: print(s, file=sys.stderr))
    if args.out:
        dump(res, args.out)
    print(table(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sldarts", description="Single-level differentiable architecture search (and DARTS).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("search", help="search a cell (YAML config plus key=value overrides)")
    s.add_argument("--config", help="YAML file of settings (see configs/)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. space=darts optim=bilevel order=2")
    s.set_defaults(func=_search)
    d = sub.add_parser("derive", help="print the derived architecture of a run directory")
    d.add_argument("run_dir")
    d.set_defaults(func=_derive)
    b = sub.add_parser("bench", help="time and measure supernet steps, reference vs optimised")
    b.add_argument("--space", choices=["nb201", "darts"])
    b.add_argument("--modes", default="single,bilevel1,bilevel2")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--device", default="cpu")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--image", type=int, default=32, help="input side in pixels")
    b.add_argument("--channels", type=int, default=16)
    b.add_argument("--out", help="write the JSON result here")
    b.set_defaults(func=_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SldartsError as exc:
        print(f"sldarts: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sldarts: interrupted", file=sys.stderr)
        return 130
