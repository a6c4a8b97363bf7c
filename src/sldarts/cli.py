"""Command line: parse, call the API, print. No logic lives here.

Every :class:`SldartsError` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from sldarts.errors import SldartsError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other error
        raise SldartsError(f"{self.prog}: {message} (see {self.prog} --help)")

    def format_help(self) -> str:  # an epilog given as a function (every config key) is built only when asked
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _keys_epilog(kind: str):
    def build() -> str:
        from sldarts import reference

        if kind == "search":
            return reference.help_epilog(reference.search_keys())
        return reference.help_epilog(reference.retrain_keys(), "the recipe (--recipe) sets the defaults of "
                                     "the training keys; those shown are darts-cifar's")
    return build


def _search(args: argparse.Namespace) -> int:
    from sldarts.config import load_config, parse_overrides
    from sldarts.search_run import search

    cfg = load_config(args.config, parse_overrides(args.overrides))
    result = search(cfg)
    if args.json or not sys.stdout.isatty():  # a terminal reads the closing lines; pipes and scripts get JSON
        print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return 0


def _derive(args: argparse.Namespace) -> int:
    from sldarts.cells import derive

    d = derive(args.run_dir, args.derive)
    arch = d[d["arch_key"]]
    print(arch if isinstance(arch, str) else json.dumps(arch))
    if args.derive:
        print(json.dumps({k: d[k] for k in ("param_free_ratio", "min_margin", "margins") if k in d}),
              file=sys.stderr)
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from sldarts.config import load_retrain_config, parse_overrides
    from sldarts.evaluate.retrain import retrain

    runs = [a for a in args.items if "=" not in a]
    overrides = parse_overrides([a for a in args.items if "=" in a])
    if len(runs) > 1:
        raise SldartsError(f"retrain takes one run directory, got {' '.join(runs)}")
    for key in ("genotype", "arch", "recipe"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if runs:
        overrides["source_run"] = runs[0]
    result = retrain(load_retrain_config(args.config, overrides))
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    return 0


def _complexity(args: argparse.Namespace) -> int:
    from sldarts.evaluate.complexity import complexity_of

    print(json.dumps(complexity_of(args.run_dir, args.genotype, args.arch, args.space, args.dataset, args.channels,
                                   args.layers)))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from sldarts.cells import resolve_cell
    from sldarts.plot import plot_cells

    for path in plot_cells(*resolve_cell(args.run_dir, args.genotype, args.arch, args.space), args.out):
        print(path)
    return 0


def _lookup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sldarts.cells import resolve_cell
    from sldarts.lookup import export_csv, open_benchmark, table3

    if args.export_csv:
        if args.target:
            raise SldartsError("--export-csv writes the whole table: give no ARCH_STRING|RUN_DIR with it")
        if not args.benchmark:
            raise SldartsError("--export-csv needs the official files: --benchmark NATS_DIR (or a NATS-tss "
                               ".pickle.pbz2, or a NAS-Bench-201 .pth)")
        n = export_csv(open_benchmark(args.benchmark, trust=args.trust), args.export_csv)
        print(f"wrote {n} cells to {args.export_csv}")
        return 0
    if not args.target:
        raise SldartsError("lookup needs an ARCH_STRING or a RUN_DIR (or --export-csv OUT)")
    is_run = Path(args.target).is_dir()
    space, target = resolve_cell(args.target if is_run else None, None, None if is_run else args.target)
    if not space.benchmark:
        raise SldartsError(f"{args.target} searched the {space.name} space; look-ups need a NAS-Bench-201 run")
    bench = open_benchmark(args.benchmark, trust=args.trust)
    row = bench.query(target)
    if args.table:
        rows = [("this cell", row)] + ([("optimal", bench.optimal())] if args.optimal else [])
        print(table3(rows))
    else:
        out = dict(row)
        if args.optimal:
            out["optimal"] = bench.optimal()
        print(json.dumps(out, indent=1))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from sldarts.sweep import run_sweep

    gpus = args.gpus.split(",") if args.gpus else None
    log = (lambda m: None) if args.print else (lambda m: print(m, file=sys.stderr, flush=True))
    slurm = None
    if args.launcher != "local":
        from sldarts.launch import SlurmOptions

        extra = {}
        for item in args.slurm_param or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SldartsError(f"--slurm-param {item!r} is not KEY=VALUE (an sbatch option, e.g. reservation=r1)")
            extra[key.strip()] = value
        slurm = SlurmOptions(args.partition, args.gpus_per_job, args.cpus_per_job, args.time_limit,
                             args.array_parallelism, args.account, args.qos, args.mem, args.constraint, extra or None)
    if args.print:  # stdout holds only the commands; the grid goes to stderr
        log = lambda m: print(m, file=sys.stderr, flush=True) if m.startswith("grid:") else None  # noqa: E731
    run_sweep(args.config, args.items, args.out, args.parallel, gpus, args.print, log=log, launcher=args.launcher,
              slurm=slurm, gpus_per_point=args.gpus_per_point)
    if not args.print:
        from sldarts.report import report

        print(report(args.out))
    return 0


def _data(args: argparse.Namespace) -> int:
    from sldarts.data import download as dl

    if args.action == "download":
        if args.name not in dl.DOWNLOADABLE:
            raise SldartsError(f"{args.name} has no direct download: sldarts data info {args.name} says where to "
                               "get it")
        if not args.root:
            raise SldartsError("data download needs --root DIR (the data_root of later searches)")
        folder = dl.download(args.name, args.root, progress=True)
        print(f"{args.name}: complete in {folder}; search with dataset={args.name} data_root={args.root}")
    elif args.action == "info":
        for name in [args.name] if args.name else list(dl.SOURCES):
            print(dl.info(name))
    else:
        if not args.name:
            raise SldartsError("data check needs the data root: sldarts data check DIR")
        print("\n".join(dl.check(args.name)))
    return 0


def _configs(args: argparse.Namespace) -> int:
    from sldarts.shipped import configs_dir, describe

    print(f"shipped configs ({configs_dir()}); use --config NAME:")
    print("\n".join(describe()))
    return 0


def _report(args: argparse.Namespace) -> int:
    from sldarts.lookup import ENV, open_benchmark
    from sldarts.report import report

    bench = None  # NB201 sweeps under a budget: looked-up accuracies and the benchmark's Pareto front
    if args.benchmark or os.environ.get(ENV):
        bench = open_benchmark(args.benchmark or None)
    print(report(args.sweep_dir, bench))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from sldarts.analyze import analyze

    for path in analyze(args.run_dirs, args.out):
        print(path)
    return 0


def _export(args: argparse.Namespace) -> int:
    from sldarts.export import export

    print(export(args.run_dir, args.format, args.out))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from sldarts.export import predict

    for row in predict(args.run_dir, args.images, args.top):
        print(row["image"])
        for t in row["top"]:
            print(f"  {t['probability']:.4f}  {t['class']}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sldarts.bench import dump, run_bench, table
    from sldarts.spaces import SPACES

    spaces = args.space.split(",") if args.space else list(SPACES)
    if args.cells:
        from sldarts.spaces import get_space
        from sldarts.spaces.model import ModelSpace

        own = [s for s in spaces if isinstance(get_space(s), ModelSpace)]
        if own:
            raise SldartsError(f"--cells {args.cells} sizes the built-in spaces' supernets; {own[0]} builds its own "
                               "model: drop --cells or bench it on its own")
    methods = tuple(args.methods.split(",")) if args.methods else ()
    modes = args.modes.split(",") if args.modes else ([] if methods else ["single", "bilevel1", "bilevel2"])
    res = run_bench(spaces, modes, args.batch_size, args.device, args.repeats, args.image, args.channels,
                    args.cells, progress=lambda s: print(s, file=sys.stderr), rss=args.rss, methods=methods)
    if args.out:
        dump(res, args.out)
    print(table(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sldarts import __version__

    p = _Parser(prog="sldarts", description="Single-level differentiable architecture search (and DARTS).")
    p.add_argument("--version", action="version", version=f"sldarts {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("search", help="search a cell (YAML config plus key=value overrides)",
                       epilog=_keys_epilog("search"), formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", help="YAML file of settings, or a shipped config's name (sldarts configs)")
    s.add_argument("--json", action="store_true", help="print the result as JSON also on a terminal (always when "
                   "standard output is a pipe or file)")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. space=darts optim=bilevel order=2")
    s.set_defaults(func=_search)
    d = sub.add_parser("derive", help="print the derived architecture of a run directory")
    d.add_argument("run_dir")
    d.add_argument("--derive", choices=["argmax", "argmax-no-none"],
                   help="derive again from the last recorded weights by this rule (margins on stderr)")
    d.set_defaults(func=_derive)
    r = sub.add_parser("retrain", help="retrain a derived cell with a recipe (darts-cifar, pdarts-imagenet, nb201)",
                       epilog=_keys_epilog("retrain"), formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--genotype", help="a built-in DARTS cell name (e.g. DARTS_V2) or a genotype JSON file")
    r.add_argument("--arch", help="an NB201 arch string")
    r.add_argument("--recipe", help="darts-cifar (default), pdarts-imagenet or nb201")
    r.add_argument("--config", help="YAML file of settings")
    r.add_argument("items", nargs="*", metavar="[RUN_DIR] key=value", help="a search run directory and overrides")
    r.set_defaults(func=_retrain)
    c = sub.add_parser("complexity", help="parameters and multiply-adds of an evaluation network")
    c.add_argument("run_dir", nargs="?", help="a search run directory (instead of --genotype / --arch)")
    c.add_argument("--space", help="the space of --arch / --genotype: a name or pkg.mod:build (default: "
                   "darts for --genotype, nb201 for --arch)")
    c.add_argument("--genotype")
    c.add_argument("--arch", help="an architecture of --space (an NB201 arch string by default)")
    c.add_argument("--dataset", help="cifar10 (default), cifar100, imagenet, imagenet16-120 or digits")
    c.add_argument("--channels", type=int, help="C (default 36 CIFAR / 48 ImageNet / 16 NB201)")
    c.add_argument("--layers", type=int, help="cells (default 20 CIFAR / 14 ImageNet / 5 per stage NB201)")
    c.set_defaults(func=_complexity)
    pl = sub.add_parser("plot", help="draw the cells of a run, a genotype or an arch string (DOT + PNG/PDF)")
    pl.add_argument("run_dir", nargs="?")
    pl.add_argument("--genotype")
    pl.add_argument("--arch")
    pl.add_argument("--space", help="the space of --arch (default nb201)")
    pl.add_argument("--out", required=True, help="path prefix: writes PREFIX_<cell>.dot/.png/.pdf")
    pl.set_defaults(func=_plot)
    lk = sub.add_parser("lookup", help="NAS-Bench-201 accuracies of an arch string or a run's derived cell")
    lk.add_argument("target", nargs="?", metavar="ARCH_STRING|RUN_DIR")
    lk.add_argument("--benchmark", help="CSV table, NATS-tss file/folder or NAS-Bench-201 .pth "
                    "(default $SLDARTS_NB201, else the table shipped in the package)")
    lk.add_argument("--trust", action="store_true", help="allow a pickled benchmark file to load any Python "
                    "object (runs code; only for files from a source you trust)")
    lk.add_argument("--export-csv", metavar="OUT", help="write the full table (every cell, every column) "
                    "of the --benchmark official files to OUT")
    lk.add_argument("--table", action="store_true", help="print the paper's Table 3 layout")
    lk.add_argument("--optimal", action="store_true", help="also give the best accuracies in the benchmark")
    lk.set_defaults(func=_lookup)
    sw = sub.add_parser("sweep", help="run a grid of searches x seeds (key=a,b,c) and report mean ± std")
    sw.add_argument("--config", help="sweep YAML (base / grid / variants) or a plain search config, or a "
                    "shipped one's name (sldarts configs)")
    sw.add_argument("items", nargs="*", metavar="key=a,b,c", help="grid axes (commas) and fixed settings")
    sw.add_argument("--out", default="sweeps", help="the sweep directory (re-run to resume; default ./sweeps)")
    sw.add_argument("--parallel", type=int, default=1, help="concurrent processes (per GPU with --gpus)")
    sw.add_argument("--gpus", help="comma-separated GPU ids, e.g. 0,1 (several searches may share one)")
    sw.add_argument("--print", action="store_true", help="print one command per unfinished point instead")
    sw.add_argument("--launcher", default="local", choices=["local", "submitit-local", "slurm"],
                    help="local process pool (default), or one submitit job per point (Slurm, or submitit's local "
                    "executor)")
    sw.add_argument("--gpus-per-point", type=int, default=1, help="local: run each point under torchrun with K "
                    "processes on K of --gpus (on CPU without --gpus: K gloo processes)")
    sw.add_argument("--partition", help="Slurm partition")
    sw.add_argument("--gpus-per-job", type=int, default=0, help="Slurm: GPUs per point; K > 1 starts K tasks that "
                    "form one DDP search")
    sw.add_argument("--cpus-per-job", type=int, default=2, help="Slurm: CPUs per task")
    sw.add_argument("--account", help="Slurm account (sbatch --account)")
    sw.add_argument("--qos", help="Slurm quality of service (sbatch --qos)")
    sw.add_argument("--mem", help="Slurm memory per node, e.g. 64G (sbatch --mem)")
    sw.add_argument("--constraint", help="Slurm node features, e.g. a100 (sbatch --constraint)")
    sw.add_argument("--slurm-param", action="append", metavar="KEY=VALUE", help="any other sbatch option "
                    "(slurm_additional_parameters), repeatable")
    sw.add_argument("--time-limit", type=int, default=60, help="minutes per job; a timed-out job is requeued")
    sw.add_argument("--array-parallelism", type=int, default=16, help="Slurm: points running at once")
    sw.set_defaults(func=_sweep)
    cf = sub.add_parser("configs", help="list the configs and sweeps shipped in the package (--config NAME)")
    cf.set_defaults(func=_configs)
    da = sub.add_parser("data", help="download CIFAR-10/100 (MD5-verified), say where other data sets come "
                        "from, check a data root")
    da.add_argument("action", choices=["download", "info", "check"])
    da.add_argument("name", nargs="?", metavar="NAME|DIR", help="download/info: cifar10, cifar100, imagenet16-120, "
                    "imagenet or nats-bench (info: all if omitted); check: the data root")
    da.add_argument("--root", help="download: the folder to put the data set in (later data_root=)")
    da.set_defaults(func=_data)
    rp = sub.add_parser("report", help="mean ± std table of a sweep (writes report.md and report.csv)")
    rp.add_argument("sweep_dir")
    rp.add_argument("--benchmark", help="NB201 benchmark for a budget sweep's accuracy vs cost (default "
                    "$SLDARTS_NB201)")
    rp.set_defaults(func=_report)
    an = sub.add_parser("analyze", help="figures (p_i, gradient correlation, dL/dp) and a report of runs")
    an.add_argument("run_dirs", nargs="+")
    an.add_argument("--out", required=True, help="folder for the PNG/PDF figures and report.md")
    an.set_defaults(func=_analyze)
    ex = sub.add_parser("export", help="a retrain run (or a searched user model) as TorchScript, ONNX or torch.export")
    ex.add_argument("run_dir")
    ex.add_argument("--format", required=True, help="torchscript, onnx or pt2 (torch.export)")
    ex.add_argument("--out", required=True, help="the file to write")
    ex.set_defaults(func=_export)
    pr = sub.add_parser("predict", help="top-5 classes of images with a run's trained network")
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--top", type=int, default=5)
    pr.set_defaults(func=_predict)
    b = sub.add_parser("bench", help="time and measure supernet steps, reference vs optimised")
    b.add_argument("--space", help="a registered space (default: every one) or pkg.mod:build of a user model")
    b.add_argument("--modes", help="registered strategies, comma-separated (default single,bilevel1,bilevel2, "
                   "none with --methods)")
    b.add_argument("--methods", "--method", help="method presets to time against the first named, e.g. "
                   "darts,gdas,pcdarts")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--device", default="cpu")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--image", type=int, default=32, help="input side in pixels")
    b.add_argument("--channels", type=int, default=16)
    b.add_argument("--cells", type=int, default=0, help="cells of the supernet (0: the space's default)")
    b.add_argument("--rss", action="store_true", help="CPU: also the peak RSS of a fresh process per row")
    b.add_argument("--out", help="write the JSON result here")
    b.set_defaults(func=_bench)
    return p


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, taking ``key=value`` settings anywhere among the options (``retrain RUN --recipe R epochs=1``):
    argparse stops filling a positional list at the first option, so the rest are added here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    items = next((n for n in ("overrides", "items") if isinstance(getattr(args, n, None), list)), None)
    stray = [a for a in extra if items is None or a.startswith("-") or "=" not in a]
    if stray:
        hint = "" if items else " (key=value settings go to search, retrain and sweep)"
        parser.error(f"unrecognized arguments: {' '.join(stray)}{hint}")
    if extra:
        getattr(args, items).extend(extra)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
        return args.func(args)
    except SldartsError as exc:
        print(f"sldarts: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sldarts: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line, the traceback on request
        if os.environ.get("SLDARTS_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"sldarts: internal error: {type(exc).__name__}: {msg} (run with SLDARTS_DEBUG=1 for the "
              "traceback and report it)", file=sys.stderr)
        return 1
