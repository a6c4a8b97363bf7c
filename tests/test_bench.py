"""The benchmark harness produces its documented JSON shape (timings are never asserted)."""

import json

from sldarts.cli import main


def test_bench_writes_rows_for_each_impl(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--space", "nb201", "--modes", "single,bilevel2", "--batch-size", "4", "--image", "8",
                 "--channels", "4", "--repeats", "1", "--out", str(out)]) == 0
    res = json.load(open(out))
    assert {(r["mode"], r["impl"]) for r in res["rows"]} == {
        ("single", "reference"), ("single", "optimized"), ("bilevel2", "reference"), ("bilevel2", "optimized")}
    assert all(r["median_s"] > 0 and r["peak_mem_mb"] > 0 for r in res["rows"])
    assert "machine" in res and "| nb201 | single | optimized |" in capsys.readouterr().out
