"""NAS-Bench-201 look-ups: each benchmark format, the right number for the right key."""

import json

import pytest
from fakebench import CELLS, truth, write_csv, write_nats_file, write_nats_simple, write_nb201_pth

from sldarts.cli import main
from sldarts.errors import SldartsError
from sldarts.lookup import open_benchmark

FORMATS = {"csv": lambda d: write_csv(d / "nb201.csv"), "nats-file": write_nats_file,
           "nats-simple": write_nats_simple, "nb201-pth": write_nb201_pth}


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


PAPER_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def test_shipped_table_is_the_default(capsys, monkeypatch):
    monkeypatch.delenv("SLDARTS_NB201", raising=False)
    bench = open_benchmark(None)
    assert len(bench.archs()) == 15625 and len(set(bench.archs())) == 15625
    # the paper's Table 3 row and NAS-Bench-201's optimum (NB201 paper / NATS-Bench, 200 epochs)
    assert main(["lookup", PAPER_CELL]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["index"], row["cifar10"]["test"], row["cifar100"]["test"], row["imagenet16-120"]["test"]) == (
        9930, 94.3633, 73.5133, 46.3444)
    best = bench.optimal()
    assert round(best["cifar10"]["test"], 2) == 94.37 and round(best["imagenet16-120"]["test"], 2) == 47.31


class _Payload:
    """A benchmark 'record' whose unpickling creates a file: what a crafted benchmark would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(tmp_path, fmt, marker):
    import bz2
    import pickle

    import torch

    if fmt == "nats-file":
        path = tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2"
        with bz2.BZ2File(path, "wb") as f:
            pickle.dump({"meta_archs": CELLS, "arch2infos": _Payload(marker), "evaluated_indexes": []}, f)
    elif fmt == "nats-simple":  # a clean meta file, one cell's file crafted
        path = write_nats_simple(tmp_path)
        with bz2.BZ2File(path / "000001.pickle.pbz2", "wb") as f:
            pickle.dump({"200": _Payload(marker)}, f)
    else:
        path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
        torch.save({"meta_archs": CELLS, "arch2infos": _Payload(marker), "evaluated_indexes": []}, path)
    return path


@pytest.mark.parametrize("fmt", ["nats-file", "nats-simple", "nb201-pth"])
def test_crafted_benchmark_runs_nothing_unless_trusted(tmp_path, capsys, monkeypatch, fmt):
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path, fmt, marker)
    monkeypatch.setenv("SLDARTS_NB201", str(path))  # the path may come from the environment, a config, a sweep
    for argv in (["lookup", CELLS[1]], ["lookup", CELLS[1], "--benchmark", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "trust=true" in err and "would run code" in err, err
        assert not marker.exists()
    with pytest.raises(SldartsError):  # trusted: the payload runs (proof that the file is a real attack)
        open_benchmark(path, trust=True).query(CELLS[1])
    assert marker.exists()


def test_search_refuses_a_crafted_benchmark_from_its_config(tmp_path, tiny):
    from sldarts import search

    marker = tmp_path / "pwned"
    with pytest.raises(SldartsError, match="trust=true"):
        search(benchmark=str(_crafted(tmp_path, "nats-file", marker)), **tiny)
    assert not marker.exists()


def test_export_csv_writes_the_full_table_from_official_files(tmp_path, capsys):
    import csv

    out = tmp_path / "full.csv"
    assert main(["lookup", "--export-csv", str(out), "--benchmark", str(write_nats_simple(tmp_path))]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["arch"] for r in rows] == CELLS and not (tmp_path / "full.csv.part").exists()
    table = open_benchmark(out)  # the written table reads back to the official numbers, every split
    for i, arch in enumerate(CELLS):
        got = table.query(arch)
        assert all(got[d][s] == pytest.approx(truth(i)[d][s]) for d in truth(i) for s in ("valid", "test"))
    assert float(rows[0]["cifar10_valid_ori_test"]) == pytest.approx(1.0)
    assert main(["lookup", "--export-csv", str(out)]) == 2 and "--benchmark NATS_DIR" in capsys.readouterr().err


def test_missing_and_unknown_benchmarks(tmp_path, monkeypatch):
    monkeypatch.delenv("SLDARTS_NB201", raising=False)
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


def test_search_records_lookups_every_epoch(tmp_path, tiny, monkeypatch):
    # no benchmark file: a search on a data set the benchmark measured reads the shipped table
    from datafiles import write_cifar10

    from sldarts import search

    monkeypatch.delenv("SLDARTS_NB201", raising=False)
    write_cifar10(tmp_path / "data")
    res = search(cells=1, dataset="cifar10", data_root=str(tmp_path / "data"), **tiny)
    rows = [json.loads(line) for line in open(f"{tiny['out']}/metrics.jsonl")]
    assert all("benchmark" in r for r in rows)
    assert res["benchmark"] == open_benchmark(None).query(res["arch"])


def test_official_nats_files_load_without_trust_and_agree_with_the_shipped_table():
    from pathlib import Path

    official = open_benchmark(Path(__file__).parent / "data" / "NATS-tss-v1_0-3ffb9-simple")
    shipped = open_benchmark(None)
    for i in (0, 11, 284):  # the cells whose records NATS-Bench ships for its own tests
        arch = official.archs()[i]
        got, want = official.query(arch), shipped.query(arch)
        assert got["index"] == want["index"] == i
        for d, s in (("cifar10", "valid"), ("cifar10", "test"), ("cifar100", "test"), ("imagenet16-120", "test")):
            assert round(got[d][s], 4) == want[d][s], (i, d, s)
        assert got["cifar100"]["valid"] is not None and want["cifar100"]["valid"] is None  # what the files add
    assert official.extra(0) == {"cifar10_valid_ori_test": 81.52, "params_cifar10": 0.129306}
