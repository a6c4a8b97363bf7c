"""NAS-Bench-201 look-ups: each benchmark format, the right number for the right key."""

import json

import pytest
from fakebench import CELLS, truth, write_csv, write_nats_file, write_nats_simple, write_nb201_pth

from sldarts.cli import main
from sldarts.errors import SldartsError
from sldarts.lookup import open_benchmark

FORMATS = {"csv": lambda d: write_csv(d / "nb201.csv"), "nats-file": write_nats_file,
           "nats-simple": write_nats_simple, "nb201-pth": write_nb201_pth}


@pytest.mark.filterwarnings("ignore:.*is a pickle")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_returns_the_right_numbers(tmp_path, fmt):
    bench = open_benchmark(FORMATS[fmt](tmp_path))
    for i, arch in enumerate(CELLS):
        got = bench.query(arch)
        want = truth(i)
        assert got["index"] == i
        for d in ("cifar10", "cifar100", "imagenet16-120"):
            for s in ("valid", "test"):
                if fmt == "csv" and s == "valid" and d != "cifar10":
                    assert got[d][s] is None  # the plain table has no such column
                else:
                    assert got[d][s] == pytest.approx(want[d][s]), (d, s)
    best = bench.optimal()
    assert best["cifar10"]["test"] == pytest.approx(truth(len(CELLS) - 1)["cifar10"]["test"])


def test_nb201_pth_warns_that_it_is_a_pickle(tmp_path):
    with pytest.warns(UserWarning, match="pickle"):
        open_benchmark(write_nb201_pth(tmp_path))


def test_missing_and_unknown_benchmarks(tmp_path, monkeypatch):
    monkeypatch.delenv("SLDARTS_NB201", raising=False)
    with pytest.raises(SldartsError, match="no NAS-Bench-201 benchmark"):
        open_benchmark(None)
    with pytest.raises(SldartsError, match="does not exist"):
        open_benchmark(tmp_path / "nope.csv")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(SldartsError, match="unknown format"):
        open_benchmark(tmp_path / "x.txt")
    bench = open_benchmark(write_csv(tmp_path / "b.csv"))
    with pytest.raises(SldartsError, match="not in the benchmark"):
        bench.query("|avg_pool_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_cli_lookup_json_table_and_env(tmp_path, capsys, monkeypatch):
    path = write_csv(tmp_path / "b.csv")
    assert main(["lookup", CELLS[2], "--benchmark", str(path), "--optimal"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cifar10"]["test"] == truth(2)["cifar10"]["test"] and out["optimal"]["cifar100"]["test"] == 35.0
    monkeypatch.setenv("SLDARTS_NB201", str(path))
    assert main(["lookup", CELLS[1], "--table"]) == 0
    table = capsys.readouterr().out
    assert "| this cell | 11.25 | 12.50 | - | 15.00 | - | 17.50 |" in table


def test_search_records_lookups_every_epoch(tmp_path, tiny):
    # A benchmark holding every cell the tiny search could derive is not tiny; give it the whole space.
    import itertools

    from sldarts import search
    from sldarts.config import SearchConfig
    from sldarts.spaces.nb201 import OPS, format_arch

    path = tmp_path / "all.csv"
    with open(path, "w") as f:
        f.write("index,arch,cifar10_valid,cifar10_test,cifar100_test,imagenet16_120_test\n")
        for i, ops in enumerate(itertools.product(OPS, repeat=6)):
            f.write(f"{i},{format_arch(list(ops))},{i % 100},{i % 97},{i % 89},{i % 83}\n")
    res = search(SearchConfig(cells=1, benchmark=str(path), **tiny))
    rows = [json.loads(line) for line in open(f"{tiny['out']}/metrics.jsonl")]
    assert all("benchmark" in r for r in rows)
    assert res["benchmark"]["arch"] == res["arch"]
    assert res["benchmark"]["cifar10"]["test"] == res["benchmark"]["index"] % 97
