"""Getting the data sets: CIFAR-10/100 downloaded and verified; where the others come from; what a root holds.

A download is written to ``NAME.part`` and renamed only after its MD5 matches the published one, so a file
with the archive's name is always complete; an interrupted transfer resumes from the ``.part`` (HTTP Range).
The archive is extracted into a temporary folder beside the data set's folder and moved into place whole.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sldarts.errors import SldartsError

MIRROR_ENV = "SLDARTS_DATA_MIRROR"  # a base URL replacing the official host (a mirror holding the same files)


@dataclass(frozen=True)
class Source:
    url: str  # the official URL ("" for data sets with no direct download)
    md5: str  # the MD5 the data set's authors (and torchvision) publish for the archive
    folder: str  # the folder the archive unpacks to, and that the reader looks for under data_root
    files: tuple[str, ...]  # what a complete folder holds
    where: str  # how to get it, for data sets with no direct download


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
SOURCES = {
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                      "cifar-10-batches-py", CIFAR10_FILES, ""),
    "cifar100": Source("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                       "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("train", "test", "meta"), ""),
    "imagenet16-120": Source(
        "", "", "ImageNet16", tuple(f"train_data_batch_{i}" for i in range(1, 11)) + ("val_data",),
        "ImageNet16 is the 16x16 downsampled ImageNet of Chrabaszcz et al. (2017): download Imagenet16_train.zip "
        "and Imagenet16_val.zip from https://image-net.org/download-images (an ImageNet account is needed; "
        "NAS-Bench-201's authors also share the folder, see https://github.com/D-X-Y/AutoDL-Projects). Unzip "
        "both into DATA/ImageNet16/ so that it holds train_data_batch_1 .. train_data_batch_10 and val_data; "
        "sldarts keeps the first 120 classes (dataset=imagenet16-120 data_root=DATA)."),
    "imagenet": Source(
        "", "", "", ("train", "val"),
        "ImageNet-1k (ILSVRC 2012): download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
        "https://image-net.org/download-images (an ImageNet account is needed). Lay it out as DATA/train/<wnid>/"
        "*.JPEG and DATA/val/<wnid>/*.JPEG (the validation images sorted into class folders, as torchvision's "
        "ImageFolder expects); then dataset=imagenet data_root=DATA."),
    "nats-bench": Source(
        "", "", "", (),
        "NATS-Bench topology files (only needed for the columns the shipped table lacks: CIFAR-100 and "
        "ImageNet16-120 valid): NATS-tss-v1_0-3ffb9-simple.tar or NATS-tss-v1_0-3ffb9.pickle.pbz2 from the "
        "Google Drive links in https://github.com/D-X-Y/NATS-Bench (README, 'Preparation and Download'); untar "
        "the -simple archive (tar xf) and pass the folder: benchmark=DIR/NATS-tss-v1_0-3ffb9-simple, or write a "
        "complete table once with sldarts lookup --export-csv nb201-full.csv --benchmark DIR/NATS-tss-v1_0-"
        "3ffb9-simple (needs pip install nats_bench)."),
}
DOWNLOADABLE = ("cifar10", "cifar100")


def info(name: str) -> str:
    """Where data set NAME comes from and the layout sldarts expects."""
    src = _source(name)
    if src.url:
        return (f"{name}: sldarts data download {name} --root DATA fetches {src.url} (MD5 {src.md5}) and "
                f"unpacks DATA/{src.folder}/ ({', '.join(src.files)}); then dataset={name} data_root=DATA")
    return f"{name}: {src.where}"


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise SldartsError(f"unknown data set {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name]


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Append the rest of URL to PART (resuming with a Range request); raise if the transfer stops short."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the .part is whole (the MD5 decides)
            return
        raise SldartsError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SldartsError(f"download of {url} failed: {getattr(exc, 'reason', exc)}; check the network (or "
                           f"set {MIRROR_ENV} to a mirror) and run the same command again") from None
    with resp:
        if have and resp.status != 206:  # the server ignored the Range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        from tqdm import tqdm

        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                            desc=part.name[:-5], disable=not progress or None,
                                                            file=sys.stderr, leave=False) as bar:
            try:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:  # connection reset mid-transfer
                raise SldartsError(f"download of {url} stopped at {f.tell()} bytes ({exc}); run the same "
                                   "command again to resume") from None
            got = f.tell()
    if total is not None and got < total:
        raise SldartsError(f"download of {url} stopped at {got} of {total} bytes; run the same command again "
                           "to resume")


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Unpack ARCHIVE's FOLDER into ROOT through a temporary folder; members outside it are refused."""
    tmp = Path(tempfile.mkdtemp(prefix=".sldarts-extract-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if m.name.startswith("/") or ".." in parts or not (m.isfile() or m.isdir()) or parts[0] != folder:
                    raise SldartsError(f"archive {archive} holds an unexpected member {m.name!r}; delete it and "
                                       "download again")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tar.extractall(tmp)  # noqa: S202
        os.replace(tmp / folder, root / folder)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SldartsError(f"cannot unpack {archive}: {exc}; delete it and download again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def missing(root: Path, name: str) -> list[str] | None:
    """The files data set NAME lacks under ROOT (None: not there at all)."""
    src = _source(name)
    base = root / src.folder if src.folder else root
    if not base.is_dir():
        return None
    gone = [f for f in src.files if not (base / f).exists()]
    return None if len(gone) == len(src.files) else gone


def download(name: str, root: str | Path, *, url: str | None = None, md5: str | None = None,
             progress: bool = True) -> Path:
    """Fetch, verify and unpack data set NAME under ROOT; returns its folder. ``url``/``md5`` replace the
    official ones (a mirror; tests); ``$SLDARTS_DATA_MIRROR`` replaces the official host."""
    src = _source(name)
    if not src.url:
        raise SldartsError(f"{name} has no direct download: sldarts data info {name} says where to get it")
    root = Path(root)
    folder = root / src.folder
    if folder.exists():
        gone = missing(root, name)
        if not gone:
            return folder
        raise SldartsError(f"{folder} exists but lacks {', '.join(gone)}; move it away and run the command again")
    if url is None:
        url = src.url
        if os.environ.get(MIRROR_ENV):
            url = os.environ[MIRROR_ENV].rstrip("/") + "/" + src.url.rsplit("/", 1)[1]
    md5 = md5 or src.md5
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rsplit("/", 1)[1]
    part = archive.with_name(archive.name + ".part")
    if not archive.exists() or md5_of(archive) != md5:
        _fetch(url, part, progress)
        got = md5_of(part)
        if got != md5:
            part.unlink()
            raise SldartsError(f"{url}: MD5 {got} is not the published {md5}; the download was deleted (a "
                               "corrupt transfer or a wrong file): run the command again or use another mirror")
        os.replace(part, archive)
    _extract(archive, root, src.folder)
    return folder


def check(root: str | Path) -> list[str]:
    """One line per data set: complete, incomplete (which files are missing) or absent, under ROOT."""
    root = Path(root)
    if not root.is_dir():
        raise SldartsError(f"{root} is not a folder")
    lines = []
    for name in ("cifar10", "cifar100", "imagenet16-120", "imagenet"):
        gone = missing(root, name)
        src = SOURCES[name]
        where = root / src.folder if src.folder else root
        if gone is None:
            hint = f"sldarts data download {name} --root {root}" if src.url else f"sldarts data info {name}"
            lines.append(f"{name}: absent ({hint})")
        elif gone:
            lines.append(f"{name}: incomplete in {where}, missing {', '.join(gone)}")
        else:
            lines.append(f"{name}: complete in {where}")
    return lines
