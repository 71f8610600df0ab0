"""Fetching MNIST and CIFAR-10 from their public mirrors, checked against the published MD5 sums.

A file is streamed into a temporary file next to its destination while its MD5 is
computed, and renamed into place (atomically, ``os.replace``) only when the checksum
matches; otherwise the temporary file is removed and the next mirror is tried. Nothing
partial is ever left under the final name. Only the standard library's ``urllib`` is used.

Mirrors can be overridden, e.g. to serve the files from a local cache:

* ``NCSN_MNIST_MIRROR``: comma-separated base URLs, tried in order (each + file name);
* ``NCSN_CIFAR10_URL``: comma-separated full URLs of ``cifar-10-python.tar.gz``;

or the ``mirrors`` / ``urls`` arguments of :func:`download_mnist` / :func:`download_cifar10`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from ncsn.errors import UserError

__all__ = [
    "MNIST_MIRRORS", "MNIST_FILES", "CIFAR10_URLS", "CIFAR10_FILE", "CIFAR10_MD5",
    "file_md5", "download_file", "download_mnist", "download_cifar10", "mnist_mirrors", "cifar10_urls",
]

# Base URLs of MNIST (LeCun, Cortes & Burges), tried in order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# File name -> MD5 of the gzipped IDX files as published.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# CIFAR-10, python version (Krizhevsky 2009).
CIFAR10_FILE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_URLS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)

_CHUNK = 1 << 16
_TIMEOUT_S = 60.0


def file_md5(path: str | Path) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _split_env(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [part.strip() for part in value.split(",") if part.strip()] or None


def mnist_mirrors(mirrors: Sequence[str] | None = None) -> list[str]:
    """The MNIST base URLs to try: ``mirrors``, else ``$NCSN_MNIST_MIRROR``, else :data:`MNIST_MIRRORS`."""
    return list(mirrors or _split_env("NCSN_MNIST_MIRROR") or MNIST_MIRRORS)


def cifar10_urls(urls: Sequence[str] | None = None) -> list[str]:
    """The CIFAR-10 tarball URLs to try: ``urls``, else ``$NCSN_CIFAR10_URL``, else :data:`CIFAR10_URLS`."""
    return list(urls or _split_env("NCSN_CIFAR10_URL") or CIFAR10_URLS)


def _fetch_to(url: str, handle, desc: str, progress: bool, timeout: float) -> str:
    """Stream ``url`` into the open binary ``handle``; return the MD5 of what was written."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  disable=not progress, dynamic_ncols=True) as bar:
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                handle.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise http.client.IncompleteRead(b"", total - received)
    return digest.hexdigest()


def download_file(urls: Iterable[str], dest: str | Path, md5: str, progress: bool = True,
                  timeout: float = _TIMEOUT_S) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves a file with MD5 ``md5``.

    Each attempt streams into a temporary file in ``dest``'s directory; only a file
    whose checksum matches is renamed to ``dest``. HTTP errors (e.g. 404), network
    errors and checksum mismatches move on to the next URL; when all fail a
    :class:`UserError` lists what happened at each, and no file is left behind.
    """
    dest = Path(dest)
    urls = list(urls)
    if not urls:
        raise UserError(f"no URL to download {dest.name} from")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create directory {dest.parent}: {err}") from None
    failures = []
    for url in urls:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as err:
            raise UserError(f"cannot write in {dest.parent}: {err}") from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                got = _fetch_to(url, handle, dest.name, progress, timeout)
            if got != md5.lower():
                failures.append(f"{url}: checksum mismatch (MD5 {got}, expected {md5.lower()})")
                continue
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as err:
            failures.append(f"{url}: HTTP {err.code} {err.reason}")
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            failures.append(f"{url}: {type(err).__name__}: {reason}")
        finally:
            tmp.unlink(missing_ok=True)
    raise UserError(f"could not download {dest.name}: " + "; ".join(failures))


def _is_valid(path: Path, md5: str) -> bool:
    return path.is_file() and file_md5(path) == md5.lower()


def download_mnist(root: str | Path, mirrors: Sequence[str] | None = None, progress: bool = True,
                   checksums: dict[str, str] | None = None) -> list[Path]:
    """Download the four gzipped MNIST IDX files into ``root`` (kept when already valid).

    ``checksums`` maps file name to MD5 and defaults to :data:`MNIST_FILES`; each file
    is tried on every mirror in turn (see :func:`mnist_mirrors`).
    """
    root = Path(root)
    bases = mnist_mirrors(mirrors)
    paths = []
    for name, md5 in (checksums or MNIST_FILES).items():
        dest = root / name
        if not _is_valid(dest, md5):
            download_file([base.rstrip("/") + "/" + name for base in bases], dest, md5, progress=progress)
        paths.append(dest)
    return paths


def download_cifar10(root: str | Path, urls: Sequence[str] | None = None, progress: bool = True,
                     md5: str | None = None) -> Path:
    """Download ``cifar-10-python.tar.gz`` into ``root`` (kept when already valid); return its path."""
    dest = Path(root) / CIFAR10_FILE
    md5 = md5 or CIFAR10_MD5
    if not _is_valid(dest, md5):
        download_file(cifar10_urls(urls), dest, md5, progress=progress)
    return dest
