"""Tiny, valid image-dataset files written into a temporary directory (MNIST IDX, CIFAR-10, CelebA, folders)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CELEBA_W, CELEBA_H = 178, 218
# The 140x140 centre crop of a 178x218 image: left (178-140)//2 = 19, top (218-140)//2 = 39.
CELEBA_BOX = (19, 39, 159, 179)


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic 00 00 08 D, D big-endian int32 sizes, row-major data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    raw = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def mnist_arrays(seed: int, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Random MNIST-like images (28x28 uint8) and labels for the four IDX files, by file stem."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def make_mnist(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 0, gz: bool = True,
               folder: str = "") -> dict[str, np.ndarray]:
    """Random 28x28 MNIST-like IDX files under ``root / folder``; returns the arrays written."""
    arrays = mnist_arrays(seed, n_train, n_test)
    for stem, array in arrays.items():
        write_idx(root / folder / (stem + (".gz" if gz else "")), array, gz=gz)
    return arrays


def mnist_gz_files(seed: int = 0, n_train: int = 6, n_test: int = 3) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """The four gzipped MNIST files as bytes (for serving over HTTP) and their arrays."""
    arrays = mnist_arrays(seed, n_train, n_test)
    return {stem + ".gz": gzip.compress(idx_bytes(a), mtime=0) for stem, a in arrays.items()}, arrays


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def cifar_batch_py3(data: np.ndarray, labels: list[int], protocol: int = 2) -> bytes:
    """A batch pickled by this Python (protocol 2 writes bytes through _codecs.encode)."""
    batch = {b"batch_label": b"testing batch", b"labels": list(labels), b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    return pickle.dumps(batch, protocol=protocol)


def cifar_batch_py2(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch written opcode by opcode as Python 2 + numpy 1.x pickle it (as the published files are).

    Byte strings are BINSTRINGs, the array is ``numpy.core.multiarray._reconstruct`` + BUILD.
    """
    def s(text: bytes) -> bytes:
        return (b"U" + bytes([len(text)]) + text) if len(text) < 256 else (b"T" + struct.pack("<i", len(text)) + text)

    def i(value: int) -> bytes:
        return (b"K" + bytes([value])) if 0 <= value < 256 else (b"J" + struct.pack("<i", value))

    data = np.ascontiguousarray(data, dtype=np.uint8)
    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89" + s(data.tobytes())
             + b"tb")
    label_list = b"](" + b"".join(i(int(v)) for v in labels) + b"e"
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"testing batch") + s(b"labels") + label_list
            + s(b"data") + array + b"u.")


def cifar_arrays(n_per_batch: int = 4, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    return {name: (rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                   [int(v) for v in rng.integers(0, 10, n_per_batch)]) for name in names}


def cifar_tarball_bytes(batches: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """A gzipped tarball laid out as cifar-10-python.tar.gz (members under cifar-10-batches-py/)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, raw in {**batches, **(extra or {})}.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def make_cifar(root: Path, n_per_batch: int = 4, seed: int = 0, py2: bool = False, as_dir: bool = False):
    """Write a tiny CIFAR-10 tarball (or extracted directory) under ``root``; return the arrays."""
    arrays = cifar_arrays(n_per_batch, seed)
    pickler = cifar_batch_py2 if py2 else cifar_batch_py3
    batches = {name: pickler(data, labels) for name, (data, labels) in arrays.items()}
    batches["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
    root.mkdir(parents=True, exist_ok=True)
    if as_dir:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for name, raw in batches.items():
            (folder / name).write_bytes(raw)
    else:
        (root / "cifar-10-python.tar.gz").write_bytes(cifar_tarball_bytes(batches))
    return arrays


# ---------------------------------------------------------------------------------------------
# CelebA and folders


def celeba_image(index: int) -> Image.Image:
    """A 178x218 face stand-in: blue outside the 140x140 centre crop, inside a colour coding ``index``."""
    array = np.zeros((CELEBA_H, CELEBA_W, 3), dtype=np.uint8)
    array[..., 2] = 255
    left, top, right, bottom = CELEBA_BOX
    array[top:bottom, left:right] = (255, 20 * index % 256, 0)
    return Image.fromarray(array)


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def make_celeba(root: Path, n: int = 6, as_zip: bool = False, partition: list[int] | None = None) -> list[str]:
    """``root/img_align_celeba/000001.jpg ...`` (or the zip), and ``list_eval_partition.txt`` if given."""
    names = [f"{k + 1:06d}.jpg" for k in range(n)]
    root.mkdir(parents=True, exist_ok=True)
    if as_zip:
        with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as archive:
            for k, name in enumerate(names):
                archive.writestr(f"img_align_celeba/{name}", jpeg_bytes(celeba_image(k)))
    else:
        folder = root / "img_align_celeba"
        folder.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(names):
            (folder / name).write_bytes(jpeg_bytes(celeba_image(k)))
    if partition is not None:
        (root / "list_eval_partition.txt").write_text("".join(f"{name} {p}\n" for name, p in zip(names, partition)))
    return names


def striped_image(width: int, height: int, centre=(200, 40, 90), side=(0, 255, 0)) -> Image.Image:
    """A ``centre``-coloured central square with ``side``-coloured margins on the long axis."""
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:] = side
    s = min(width, height)
    left, top = (width - s) // 2, (height - s) // 2
    array[top:top + s, left:left + s] = centre
    return Image.fromarray(array)
