"""Downloads (ncsn.data.download) against a local HTTP server on 127.0.0.1: mirrors, 404s, checksums."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _image_fixtures import cifar_arrays, cifar_batch_py3, cifar_tarball_bytes, mnist_gz_files  # noqa: E402

from ncsn.data import download  # noqa: E402
from ncsn.data.images import get_dataset  # noqa: E402
from ncsn.errors import UserError  # noqa: E402


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves ``tmp_path / "www"`` on a free port; yields (base URL, served directory, request log)."""
    monkeypatch.setenv("no_proxy", "*")  # never route 127.0.0.1 through a proxy
    monkeypatch.delenv("NCSN_MNIST_MIRROR", raising=False)
    monkeypatch.delenv("NCSN_CIFAR10_URL", raising=False)
    www = tmp_path / "www"
    www.mkdir()
    handler = type("Handler", (_QuietHandler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, handler.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _md5(raw: bytes) -> str:
    return hashlib.md5(raw).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_published_checksum_table():
    assert download.MNIST_FILES == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    assert download.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert download.CIFAR10_URLS[0].endswith("www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    assert len(download.MNIST_MIRRORS) >= 2


def test_download_file_ok_and_checksum_mismatch(server, tmp_path):
    url, www, _ = server
    payload = bytes(range(256)) * 1000
    (www / "blob.bin").write_bytes(payload)
    out = tmp_path / "out"
    dest = download.download_file([f"{url}/blob.bin"], out / "blob.bin", _md5(payload), progress=False)
    assert dest.read_bytes() == payload and _leftovers(out) == []

    with pytest.raises(UserError, match=r"could not download other.bin: .*checksum mismatch \(MD5 "
                                        + _md5(payload) + ", expected 0{32}\\)"):
        download.download_file([f"{url}/blob.bin"], out / "other.bin", "0" * 32, progress=False)
    assert not (out / "other.bin").exists() and _leftovers(out) == []


def test_download_file_all_mirrors_fail(server, tmp_path):
    url, _, _ = server
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UserError) as info:
        download.download_file([f"{url}/nope.gz", f"{dead}/nope.gz"], tmp_path / "nope.gz", "0" * 32,
                               progress=False, timeout=5)
    message = str(info.value)
    assert f"{url}/nope.gz: HTTP 404" in message and f"{dead}/nope.gz: " in message
    assert not (tmp_path / "nope.gz").exists() and _leftovers(tmp_path) == []


def test_mnist_404_and_bad_mirror_fall_back_to_next(server, tmp_path, monkeypatch):
    url, www, requests = server
    files, arrays = mnist_gz_files(seed=1)
    (www / "empty").mkdir()  # first mirror: 404 for everything
    (www / "corrupt").mkdir()  # second mirror: wrong bytes for one file
    (www / "corrupt" / "train-images-idx3-ubyte.gz").write_bytes(b"tampered")
    (www / "good").mkdir()
    for name, raw in files.items():
        (www / "good" / name).write_bytes(raw)
    checksums = {name: _md5(raw) for name, raw in files.items()}
    root = tmp_path / "mnist"
    mirrors = [f"{url}/empty/", f"{url}/corrupt", f"{url}/good/"]
    paths = download.download_mnist(root, mirrors=mirrors, progress=False, checksums=checksums)
    assert [p.read_bytes() for p in paths] == list(files.values()) and _leftovers(root) == []
    assert requests[:3] == ["/empty/train-images-idx3-ubyte.gz", "/corrupt/train-images-idx3-ubyte.gz",
                            "/good/train-images-idx3-ubyte.gz"]
    assert len(requests) == 3 * 4

    # valid files already there are not fetched again
    download.download_mnist(root, mirrors=mirrors, progress=False, checksums=checksums)
    assert len(requests) == 12

    # get_dataset(download=True) with the mirror from the environment and the table patched
    monkeypatch.setattr(download, "MNIST_FILES", checksums)
    monkeypatch.setenv("NCSN_MNIST_MIRROR", f"{url}/empty,{url}/good")
    data = get_dataset("mnist", root=tmp_path / "fresh", train=False, download=True, progress=False)
    assert torch.equal(data.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert data.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == sorted(files)


def test_cifar10_download_through_env_url(server, tmp_path, monkeypatch):
    url, www, _ = server
    arrays = cifar_arrays(n_per_batch=2, seed=4)
    tarball = cifar_tarball_bytes({name: cifar_batch_py3(d, y) for name, (d, y) in arrays.items()})
    (www / "c10.tgz").write_bytes(tarball)
    monkeypatch.setenv("NCSN_CIFAR10_URL", f"{url}/missing.tgz, {url}/c10.tgz")

    with pytest.raises(UserError, match="cifar-10-python.tar.gz: .*missing.tgz: HTTP 404.*checksum mismatch"):
        get_dataset("cifar10", root=tmp_path / "c", download=True, progress=False)
    assert not (tmp_path / "c" / "cifar-10-python.tar.gz").exists() and _leftovers(tmp_path / "c") == []

    monkeypatch.setattr(download, "CIFAR10_MD5", _md5(tarball))
    data = get_dataset("cifar10", root=tmp_path / "c", train=False, download=True, progress=False)
    assert (tmp_path / "c" / "cifar-10-python.tar.gz").read_bytes() == tarball
    assert np.array_equal(data.images.reshape(2, -1).numpy(), arrays["test_batch"][0])


def test_train_classifier_and_eval_fetch_mnist_with_download_flag(server, tmp_path, monkeypatch, capsys):
    from ncsn.cli import main

    url, www, requests = server
    files, arrays = mnist_gz_files(seed=2, n_train=20, n_test=10)
    for name, raw in files.items():
        (www / name).write_bytes(raw)
    monkeypatch.setattr(download, "MNIST_FILES", {name: _md5(raw) for name, raw in files.items()})
    monkeypatch.setenv("NCSN_MNIST_MIRROR", url)
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "mnist_classifier.pt"
    common = ["--device", "cpu", "--no-progress"]

    # without --download: a one-line error that names the flag, and nothing fetched
    assert main(["train-classifier", "--dataset", "mnist", "--data-root", str(tmp_path / "a"), "--out", str(weights),
                 "--epochs", "1", *common]) == 2
    assert "--download" in capsys.readouterr().err and requests == []

    assert main(["train-classifier", "--dataset", "mnist", "--data-root", str(tmp_path / "a"), "--out", str(weights),
                 "--epochs", "1", "--download", *common]) == 0
    assert weights.exists() and sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(files)

    fake = tmp_path / "fake.npz"
    np.savez(fake, samples=np.random.default_rng(0).random((10, 1, 28, 28), dtype=np.float32))
    assert main(["eval", "--fake", str(fake), "--dataset", "mnist", "--data-root", str(tmp_path / "b"),
                 "--classifier", str(weights), "--metrics", "fid", "--download", "--out", str(tmp_path / "e.json"),
                 *common]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(files)
    assert len(requests) == 8
