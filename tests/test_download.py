"""CIFAR download against a loopback HTTP server: verified, resumable, atomic; what a data root holds."""

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from datafiles import write_cifar10

from sldarts.cli import main
from sldarts.data import download as dl
from sldarts.data.readers import read_cifar10
from sldarts.errors import SldartsError


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny cifar-10-python.tar.gz in the real layout, and the arrays it holds."""
    src = tmp_path_factory.mktemp("src")
    written = write_cifar10(src, n_per_batch=4)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buf.getvalue(), written


@pytest.fixture
def server(archive):
    """Serves the archive at /cifar-10-python.tar.gz, honouring Range; `cut` truncates the next response."""
    body = archive[0]
    state = {"cut": None, "ranges": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            start = 0
            rng = self.headers.get("Range")
            state["ranges"].append(rng)
            if rng:
                start = int(rng.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            data = body[start:]
            if state["cut"] is not None:  # the connection drops part-way
                data, state["cut"] = data[:state["cut"]], None
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-python.tar.gz", state
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_resumes_and_extracts_what_the_reader_reads(tmp_path, archive, server):
    url, state = server
    md5 = hashlib.md5(archive[0]).hexdigest()
    state["cut"] = len(archive[0]) // 2
    with pytest.raises(SldartsError, match="run the same command again to resume"):
        dl.download("cifar10", tmp_path, url=url, md5=md5, progress=False)
    # nothing looks complete: only the .part holds the first half
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz.part"]
    folder = dl.download("cifar10", tmp_path, url=url, md5=md5, progress=False)
    assert state["ranges"] == [None, f"bytes={len(archive[0]) // 2}-"]  # the second request resumed
    assert dl.md5_of(tmp_path / "cifar-10-python.tar.gz") == md5
    assert folder == tmp_path / "cifar-10-batches-py" and not list(tmp_path.glob(".sldarts-extract-*"))
    train, test = read_cifar10(tmp_path)
    np.testing.assert_array_equal(test.x.reshape(len(test.x), -1), archive[1]["test_batch"][0])
    assert len(train.x) == 20
    assert dl.check(tmp_path)[0] == f"cifar10: complete in {folder}"
    (folder / "data_batch_3").unlink()
    assert dl.check(tmp_path)[0] == f"cifar10: incomplete in {folder}, missing data_batch_3"
    assert dl.check(tmp_path)[1] == f"cifar100: absent (sldarts data download cifar100 --root {tmp_path})"


def test_wrong_checksum_is_refused_in_one_line_and_leaves_nothing(tmp_path, server, capsys, monkeypatch):
    url, _ = server
    # the real command, pointed at the loopback server as a mirror: the tiny archive is not the published file
    monkeypatch.setenv(dl.MIRROR_ENV, url.rsplit("/", 1)[0])
    assert main(["data", "download", "cifar10", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not the published c58f30108f718f92721af3b95e74349a" in err
    assert list(tmp_path.iterdir()) == []
    assert main(["data", "download", "imagenet16-120", "--root", str(tmp_path)]) == 2
    assert "sldarts data info imagenet16-120" in capsys.readouterr().err
    assert main(["data", "info", "nats-bench"]) == 0 and "D-X-Y/NATS-Bench" in capsys.readouterr().out


def test_benchmark_script_builds_the_image_folders_from_the_batches(tmp_path):
    import importlib.util
    from pathlib import Path

    from sldarts.data.readers import read_image_folder

    written = write_cifar10(tmp_path / "data", n_per_batch=4)
    spec = importlib.util.spec_from_file_location(
        "cifar10_folder", Path(__file__).resolve().parent.parent / "benchmarks" / "cifar10_folder.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.build(tmp_path / "data", tmp_path / "img") == {"train": 20, "test": 4}
    train, test, classes = read_image_folder(tmp_path / "img")
    assert len(train.x) == 20
    # lossless: the folder holds the batches' own pixels (the reader's order is by class, then file)
    want = {bytes(r) for r in written["test_batch"][0]}
    assert {bytes(x.reshape(-1)) for x in test.x} == want
