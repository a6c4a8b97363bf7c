"""The benchmark harness produces its documented JSON shape (timings are never asserted)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sldarts.bench import own_peak_rss_mb
from sldarts.cli import main


def test_bench_writes_rows_for_each_impl(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--space", "nb201", "--modes", "single,bilevel2", "--batch-size", "4", "--image", "8",
                 "--channels", "4", "--cells", "1", "--repeats", "1", "--out", str(out)]) == 0
    res = json.load(open(out))
    assert {(r["mode"], r["impl"]) for r in res["rows"]} == {
        ("single", "reference"), ("single", "optimized"), ("bilevel2", "reference"), ("bilevel2", "optimized")}
    assert all(r["median_s"] > 0 and r["peak_mem_mb"] > 0 for r in res["rows"])
    assert res["machine"]["cells"] == 1 and "| nb201 | single | optimized |" in capsys.readouterr().out
    user = os.path.join(os.path.dirname(__file__), "userspace.py") + ":build"  # a model that builds itself
    assert main(["bench", "--space", f"nb201,{user}", "--cells", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--cells 1 sizes the built-in spaces' supernets; {user} builds its own" in err


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmHWM is Linux's")
def test_child_process_reports_its_own_peak_not_the_parents():
    # ru_maxrss survives exec, so a child of a big parent would report the parent's peak
    held = torch.ones(256 * 2**20)  # 1 GiB touched in this process
    code = "import sldarts.bench as b; print(b.own_peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split()[-1])
    assert held[-1] == 1 and own_peak_rss_mb() >= 1024 and child < 900


def test_bench_times_method_presets_against_the_first(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["bench", "--space", "nb201", "--method", "darts,gdas,pcdarts", "--batch-size", "4", "--image", "8",
                 "--channels", "4", "--cells", "1", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.load(open(out))["rows"]
    assert [(r["mode"], r["impl"], r["layout"]) for r in rows] == [
        ("methods", "darts", "NHWC"), ("methods", "gdas", "NCHW"), ("methods", "pcdarts", "NCHW")]
    table = capsys.readouterr().out
    assert "| nb201 | methods | darts |" in table and "| 1.00x | 1.00x |" in table
