"""Benchmark the supernet step: `python benchmarks/bench_search.py [sldarts bench options]`.

The same as `sldarts bench`; kept here so the benchmarks folder is the one place to look.
"""

import sys

from sldarts.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
