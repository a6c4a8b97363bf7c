"""Run under torchrun: one search or retrain over the ranks, then each rank saves its final state.

python -m torch.distributed.run --nproc-per-node=2 tests/ddp_worker.py search|retrain DUMP_DIR key=value ...
"""

import os
import sys

import torch

from sldarts.config import load_config, load_retrain_config, parse_overrides
from sldarts.evaluate.retrain import RetrainRun
from sldarts.search_run import SearchRun

kind, dump, *items = sys.argv[1:]
overrides = parse_overrides(items)
if kind == "search":
    run = SearchRun(load_config(None, overrides))
else:
    run = RetrainRun(load_retrain_config(None, overrides))
if os.environ.get("SLDARTS_TEST_STOP"):  # as if SIGTERM had reached every rank before the first step
    run.stop.request_stop()
try:
    run.run()
except Exception as exc:  # the CLI's one-line error, so the test can read it
    print(f"sldarts: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
rank = int(os.environ.get("RANK", "0"))
torch.save({k: v.detach().cpu() for k, v in run.model.state_dict().items()}, os.path.join(dump, f"rank{rank}.pt"))
