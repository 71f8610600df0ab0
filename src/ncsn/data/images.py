"""Image datasets: readers for the embedded digits, MNIST, CIFAR-10, CelebA and image folders.

:func:`get_dataset` is the single entry point. Every dataset is an :class:`ImageDataset`
whose items are ``float32`` tensors ``(C, H, W)`` in ``[0, 1]`` with no augmentation (see
:mod:`ncsn.data.transforms` for dequantisation, flips and the logit transform), and whose
``get_batch(indices)`` returns a ``(B, C, H, W)`` batch:

* in-memory datasets (``digits``, ``mnist``, ``cifar10``) keep ``uint8`` pixels and convert
  only the requested rows, so a random batch per training step is cheap;
* lazily read datasets (``celeba``, ``folder``) decode each image with PIL on access.

Splits (``train``): ``True`` the training split, ``False`` the test split, ``None`` all images.

* ``digits``: scikit-learn's bundled 8x8 digits (offline), 17 grey levels (value / 16); train
  = the first 1,500 of a fixed permutation (``RandomState(0)``), test = the other 297; labels.
* ``mnist``: the IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` under ``root``
  or ``root/MNIST/raw``; 60,000 / 10,000 images, 28x28; labels.
* ``cifar10``: ``cifar-10-python.tar.gz`` (read without extracting) or ``cifar-10-batches-py/``;
  ``data_batch_1..5`` / ``test_batch``, 50,000 / 10,000 images, 32x32x3; labels.
* ``celeba``: ``img_align_celeba/`` or ``img_align_celeba.zip`` (under ``root`` or
  ``root/celeba``); train / test = partitions 0 / 2 of ``list_eval_partition.txt`` when
  present, else every split is all images; default 32x32.
* ``folder``: every png/jpg/jpeg/bmp/webp under ``root`` (recursive, sorted); if ``root`` has
  both ``train/`` and ``test/`` subdirectories they are the splits, else every split is all
  images; default 32x32, RGB or (``channels=1``) grey.

``image_size`` resizes with PIL's bilinear filter. CelebA follows NCSN's preprocessing
(Song & Ermon 2019, Sec. 5): centre crop 140x140 of the 178x218 aligned faces, then resize
to 32x32 (NCSNv2, Song & Ermon 2020, uses the same crop at 64x64). Folder images are centre-cropped to a square first. Corrupt or truncated files
raise :class:`~ncsn.errors.UserError` naming the file.

CIFAR-10's batches are pickles; they are read with a restricted unpickler that only
rebuilds plain containers and numpy arrays and refuses any other global, so a crafted
file cannot run code.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ncsn.errors import UserError

__all__ = [
    "DATASET_NAMES", "IMAGE_EXTENSIONS", "CELEBA_CROP", "ImageDataset", "InMemoryImageDataset",
    "LazyImageDataset", "get_dataset", "default_root", "read_idx", "restricted_unpickle",
]

DATASET_NAMES = ("digits", "mnist", "cifar10", "celeba", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CELEBA_CROP = 140  # NCSN's centre crop of the 178x218 aligned CelebA faces
DIGITS_N_TRAIN = 1500  # digits split: first 1,500 of a fixed permutation (seed 0) train, the other 297 test
_NATIVE = {"digits": (1, 8), "mnist": (1, 28), "cifar10": (3, 32), "celeba": (3, 32), "folder": (3, 32)}


# --------------------------------------------------------------------------------------------
# Dataset classes


class ImageDataset(Dataset):
    """Images as ``float32`` ``(C, H, W)`` tensors in ``[0, 1]``.

    Attributes: ``name``, ``channels``, ``image_size``, ``n_levels`` (grey levels of the
    stored pixels: value ``v`` in ``0..n_levels-1`` reads as ``v / (n_levels - 1)``),
    ``split`` (``"train"``, ``"test"`` or ``"all"``), ``labels`` (``LongTensor`` or ``None``)
    and ``source`` (where the data was read from).
    """

    def __init__(self, name: str, channels: int, image_size: int, n_levels: int, split: str,
                 source: str, labels: torch.Tensor | None = None):
        self.name = name
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.n_levels = int(n_levels)
        self.split = split
        self.source = source
        self.labels = labels

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The images at ``indices`` as one ``(B, C, H, W)`` ``float32`` tensor."""
        idx = _as_index(indices)
        if idx.numel() == 0:
            return torch.empty((0, self.channels, self.image_size, self.image_size))
        return torch.stack([self[i] for i in idx.tolist()])

    def fingerprint(self, n: int | None = None) -> str:
        """A sha256 that changes whenever the first ``n`` images (default: all) or their reading changes."""
        n = len(self) if n is None else min(n, len(self))
        digest = hashlib.sha256(f"{self.name}|{self.split}|{self.channels}|{self.image_size}|{self.n_levels}|{n}"
                                .encode())
        self._hash_content(digest, n)
        return digest.hexdigest()

    def _hash_content(self, digest, n: int) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape=({self.channels}, {self.image_size}, {self.image_size}), n_levels={self.n_levels})")


def _as_index(indices) -> torch.Tensor:
    idx = torch.as_tensor(indices)
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    return idx.reshape(-1).to(device="cpu", dtype=torch.long)


class InMemoryImageDataset(ImageDataset):
    """Images held as one ``uint8`` tensor ``(N, C, H, W)`` of values ``0..n_levels-1``."""

    def __init__(self, name: str, images: torch.Tensor, n_levels: int, split: str, source: str,
                 labels: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be a uint8 (N, C, S, S) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        super().__init__(name, images.shape[1], images.shape[2], n_levels, split, source, labels)
        self.images = images.contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index].to(torch.float32).div_(self.n_levels - 1)

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Rows ``indices`` converted to ``float32`` in ``[0, 1]`` (only those rows are converted)."""
        rows = self.images.index_select(0, _as_index(indices))
        return rows.to(torch.float32).div_(self.n_levels - 1)

    def _hash_content(self, digest, n: int) -> None:
        digest.update(self.images[:n].numpy().tobytes())


class LazyImageDataset(ImageDataset):
    """Images decoded with PIL on access from a directory or a zip archive.

    Each image is converted to RGB (or L), centre-cropped (to ``crop`` x ``crop``, or to
    the largest centred square when ``crop`` is ``None``) and resized to ``image_size``
    with the bilinear filter. ``num_workers > 0`` decodes the images of ``get_batch``
    in that many threads (PIL releases the GIL while decoding).
    """

    def __init__(self, name: str, reader: "_DirectoryReader | _ZipReader", keys: Sequence[str], channels: int,
                 image_size: int, crop: int | None, split: str, num_workers: int = 0):
        if not keys:
            raise UserError(f"{name}: no images found in {reader.location}")
        super().__init__(name, channels, image_size, 256, split, str(reader.location))
        self.reader = reader
        self.keys = list(keys)
        self.crop = crop
        self.num_workers = int(num_workers)
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> torch.Tensor:
        key = self.keys[index]
        raw = self.reader.read(key)
        where = self.reader.describe(key)
        image = _decode(raw, where, "L" if self.channels == 1 else "RGB")
        image = _centre_crop(image, self.crop, where)
        return _to_tensor(_resize(image, self.image_size))

    def get_batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        idx = _as_index(indices).tolist()
        if self.num_workers <= 0 or len(idx) < 2:
            return super().get_batch(idx)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix=f"ncsn-{self.name}")
        return torch.stack(list(self._pool.map(self.__getitem__, idx)))

    def _hash_content(self, digest, n: int) -> None:
        """Each file's name and stamp (size and mtime, or a zip member's CRC): no image is decoded."""
        digest.update(f"{self.crop}|{self.reader.location}".encode())
        for key in self.keys[:n]:
            digest.update(f"{key}|{self.reader.stamp(key)}\n".encode())

    def __getstate__(self):  # picklable for DataLoader workers: no thread pool
        state = self.__dict__.copy()
        state["_pool"] = None
        return state


# --------------------------------------------------------------------------------------------
# Image decoding and geometry


def _decode(raw: bytes, where: str, mode: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
        if image.mode == "P":  # palette images (possibly with transparency) go through RGBA
            image = image.convert("RGBA")
        return image.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image {where}: {err}") from None


def _centre_crop(image: Image.Image, crop: int | None, where: str) -> Image.Image:
    """The centred ``crop x crop`` square (``None``: side ``min(W, H)``); offsets ``(W - c) // 2``, ``(H - c) // 2``."""
    width, height = image.size
    side = min(width, height) if crop is None else crop
    if side > width or side > height:
        raise UserError(f"image {where} is {width}x{height}, smaller than the {side}x{side} centre crop")
    left, top = (width - side) // 2, (height - side) // 2
    if side == width == height:
        return image
    return image.crop((left, top, left + side, top + side))


def _resize(image: Image.Image, size: int) -> Image.Image:
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.array(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255)


def _resize_stack(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a ``uint8`` ``(N, C, H, W)`` stack to ``size x size`` with PIL's bilinear filter."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    n, c = images.shape[:2]
    out = np.empty((n, c, size, size), dtype=np.uint8)
    hwc = images.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        frame = Image.fromarray(np.ascontiguousarray(hwc[i, :, :, 0] if c == 1 else hwc[i]))  # L or RGB
        resized = np.asarray(frame.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = resized[None] if c == 1 else resized.transpose(2, 0, 1)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------
# Readers for lazily decoded images


class _DirectoryReader:
    """Image files under a directory, addressed by their relative POSIX path."""

    def __init__(self, root: Path):
        self.location = root

    def list_images(self) -> list[str]:
        return sorted(p.relative_to(self.location).as_posix() for p in self.location.rglob("*")
                      if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())

    def describe(self, key: str) -> str:
        return str(self.location / key)

    def stamp(self, key: str) -> str:
        """What identifies the file's content without reading it: its size and modification time."""
        try:
            info = (self.location / key).stat()
        except OSError as err:
            raise UserError(f"cannot read image {self.location / key}: {err}") from None
        return f"{info.st_size}|{info.st_mtime_ns}"

    def read(self, key: str) -> bytes:
        try:
            return (self.location / key).read_bytes()
        except OSError as err:
            raise UserError(f"cannot read image {self.location / key}: {err}") from None


class _ZipReader:
    """Image members of a zip archive, opened lazily once per process (safe after fork)."""

    def __init__(self, path: Path):
        self.location = path
        self._zip = None
        self._pid = None
        self._lock = threading.Lock()
        with self._open() as archive:
            self._stamps = {i.filename: f"{i.file_size}|{i.CRC}" for i in archive.infolist()}
        self._names = list(self._stamps)

    def _open(self):
        import zipfile

        try:
            return zipfile.ZipFile(self.location)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise UserError(f"bad zip archive {self.location}: {err}") from None

    def list_images(self) -> list[str]:
        return sorted(n for n in self._names if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not n.endswith("/"))

    def describe(self, key: str) -> str:
        return f"{self.location}:{key}"

    def stamp(self, key: str) -> str:
        """The member's size and CRC-32 from the archive's directory."""
        return self._stamps[key]

    def read(self, key: str) -> bytes:
        import zipfile

        with self._lock:
            if self._zip is None or self._pid != os.getpid():
                self._zip, self._pid = self._open(), os.getpid()
            try:
                return self._zip.read(key)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError) as err:
                raise UserError(f"cannot read {self.describe(key)}: {err}") from None

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_zip=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


# --------------------------------------------------------------------------------------------
# MNIST: IDX files


_IDX_UBYTE = 0x08
_MNIST_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise UserError(f"truncated gzip file {path}: the compressed stream ends early") from None
    except (OSError, zlib.error) as err:
        raise UserError(f"bad gzip file {path}: {err}") from None


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or not), the format of the MNIST files.

    Layout: magic ``00 00 08 D`` (``08``: unsigned byte, ``D``: number of dimensions),
    then ``D`` big-endian ``int32`` sizes, then the data, row-major.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or not 1 <= raw[3] <= 4:
        magic = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        expected = f"0000080{ndim}" if ndim else "000008xx"
        raise UserError(f"bad IDX magic in {path}: {magic} (expected {expected}, an unsigned-byte IDX file)")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise UserError(f"bad IDX magic in {path}: {raw[:4].hex()} is a {dims_n}-D file, expected {ndim}-D "
                        f"(magic 0000080{ndim})")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise UserError(f"truncated IDX file {path}: header needs {header} bytes, file has {len(raw)}")
    shape = struct.unpack(f">{dims_n}i", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if min(shape) < 0 or len(raw) - header != expected:
        raise UserError(f"size mismatch in IDX file {path}: header says shape {shape} ({expected} bytes) "
                        f"but {len(raw) - header} data bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_mnist_file(root: Path, stem: str) -> Path | None:
    names = (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz")
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _mnist_missing(root: Path, parts: Sequence[str]) -> list[str]:
    return [stem for part in parts for stem in _MNIST_STEMS[part] if _find_mnist_file(root, stem) is None]


def _load_mnist(root: Path, parts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, str]:
    images, labels = [], []
    for part in parts:
        image_path = _find_mnist_file(root, _MNIST_STEMS[part][0])
        label_path = _find_mnist_file(root, _MNIST_STEMS[part][1])
        x = read_idx(image_path, ndim=3)
        y = read_idx(label_path, ndim=1)
        if x.shape[0] != y.shape[0]:
            raise UserError(f"size mismatch: {image_path} has {x.shape[0]} images but {label_path} "
                            f"has {y.shape[0]} labels")
        if x.shape[1] != x.shape[2]:
            raise UserError(f"{image_path}: images are {x.shape[1]}x{x.shape[2]}, expected square")
        if y.size and y.max() > 9:
            raise UserError(f"{label_path}: label {int(y.max())} outside 0..9")
        images.append(x)
        labels.append(y)
    if len({x.shape[1:] for x in images}) > 1:
        raise UserError(f"MNIST files under {root} have different image sizes")
    x = torch.from_numpy(np.concatenate(images)[:, None].copy())
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
    return x, y, str(image_path.parent)


# --------------------------------------------------------------------------------------------
# CIFAR-10: pickled batches, read with a restricted unpickler


def _allowed_pickle_globals() -> dict[tuple[str, str], object]:
    import builtins

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3's protocol 2 writes bytes
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    for module in ("builtins", "__builtin__"):
        for name in ("dict", "list", "tuple", "bytes", "bytearray", "str", "int", "float", "bool"):
            allowed[(module, name)] = getattr(builtins, name)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only containers, strings, numbers and numpy arrays; refuses any other global."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_pickle_globals()
        try:
            return _RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing a persistent id")


def restricted_unpickle(raw: bytes, where: str) -> object:
    """Unpickle ``raw`` allowing only plain data and numpy arrays; anything else is a :class:`UserError`.

    ``encoding="bytes"`` reads Python 2 pickles (as CIFAR-10's are) with byte-string keys.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise UserError(f"unsafe or corrupt pickle {where}: {err}") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error) as err:
        raise UserError(f"corrupt pickle {where}: {type(err).__name__}: {err}") from None


_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _find_cifar(root: Path) -> Path | None:
    from ncsn.data.download import CIFAR10_FILE

    if root.is_file():  # the tarball itself
        return root
    for candidate in (root / _CIFAR_DIR, root):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return (root / CIFAR10_FILE) if (root / CIFAR10_FILE).is_file() else None


def _read_cifar_members(path: Path, names: Sequence[str]) -> dict[str, bytes]:
    """The raw bytes of the batch files ``names`` from a directory or the tarball (one pass, no extraction)."""
    if path.is_dir():
        out = {}
        for name in names:
            try:
                out[name] = (path / name).read_bytes()
            except OSError as err:
                raise UserError(f"cannot read CIFAR-10 batch {path / name}: {err}") from None
        return out
    wanted, out = set(names), {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in wanted and member.isfile():
                    out[base] = tar.extractfile(member).read()
                    if len(out) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise UserError(f"bad tarball {path}: {type(err).__name__}: {err}") from None
    missing = sorted(wanted - out.keys())
    if missing:
        raise UserError(f"bad tarball {path}: missing {', '.join(_CIFAR_DIR + '/' + m for m in missing)}")
    return out


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_unpickle(raw, where)
    if not isinstance(batch, dict):
        raise UserError(f"CIFAR-10 batch {where} is a {type(batch).__name__}, expected a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"CIFAR-10 batch {where}: 'data' must be a uint8 (N, 3072) array, got {got}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"CIFAR-10 batch {where}: 'labels' must be a list of integers") from None
    if labels.shape[0] != data.shape[0]:
        raise UserError(f"size mismatch in CIFAR-10 batch {where}: {data.shape[0]} images, {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserError(f"CIFAR-10 batch {where}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(path: Path, parts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    names = [name for part in parts for name in _CIFAR_BATCHES[part]]
    raw = _read_cifar_members(path, names)
    pairs = [_parse_cifar_batch(raw[name], f"{path}/{name}" if path.is_dir() else f"{path}:{name}")
             for name in names]
    x = torch.from_numpy(np.concatenate([p[0] for p in pairs]))
    y = torch.from_numpy(np.concatenate([p[1] for p in pairs]))
    return x, y


# --------------------------------------------------------------------------------------------
# CelebA and folders


def _celeba_reader(root: Path) -> "_DirectoryReader | _ZipReader | None":
    for base in (root, root / "celeba"):
        if (base / "img_align_celeba").is_dir():
            return _DirectoryReader(base / "img_align_celeba")
    for base in (root, root / "celeba"):
        if (base / "img_align_celeba.zip").is_file():
            return _ZipReader(base / "img_align_celeba.zip")
    if root.name == "img_align_celeba" and root.is_dir():
        return _DirectoryReader(root)
    return None


def _celeba_partition(root: Path) -> dict[str, int] | None:
    """``list_eval_partition.txt`` (``000001.jpg 0``) or ``.csv`` (``image_id,partition``): file -> 0/1/2."""
    for base in (root, root / "celeba", root / "Eval"):
        for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
            path = base / name
            if not path.is_file():
                continue
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"cannot read {path}: {err}") from None
            rows = csv.reader(io.StringIO(text)) if name.endswith(".csv") else (ln.split() for ln in text.splitlines())
            partition = {}
            for line_no, row in enumerate(rows, 1):
                if not row or (line_no == 1 and row[0] == "image_id"):
                    continue
                if len(row) != 2 or row[1].strip() not in ("0", "1", "2"):
                    raise UserError(f"{path}, line {line_no}: expected '<file> <0|1|2>', got {' '.join(row)!r}")
                partition[row[0].strip()] = int(row[1])
            return partition
    return None


def _select_celeba(keys: list[str], partition: dict[str, int] | None, split: str) -> list[str]:
    if partition is None or split == "all":
        return keys
    wanted = 0 if split == "train" else 2  # 1 is the validation partition
    return [k for k in keys if partition.get(k.rsplit("/", 1)[-1]) == wanted]


# --------------------------------------------------------------------------------------------
# Registry


def default_root(name: str) -> Path:
    """Where ``name`` is looked for when no root is given: ``$NCSN_DATA/<name>`` (default ``data/<name>``)."""
    return Path(os.environ.get("NCSN_DATA", "data")) / name


def _split_name(train: bool | None) -> str:
    if train is None:
        return "all"
    if isinstance(train, (bool, np.bool_)):
        return "train" if train else "test"
    raise UserError(f"train must be True, False or None (all images), got {train!r}")


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)[:, None]  # values 0..16
    labels = bunch.target.astype(np.int64)
    if split != "all":
        order = np.random.RandomState(0).permutation(len(images))
        keep = np.sort(order[:DIGITS_N_TRAIN] if split == "train" else order[DIGITS_N_TRAIN:])
        images, labels = images[keep], labels[keep]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


def _get_digits(split, size, **_):
    x, y = _load_digits(split)
    return InMemoryImageDataset("digits", _resize_stack(x, size), 17, split, "sklearn.datasets.load_digits", y)


def _get_mnist(split, size, root, download, progress, **_):
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    missing = _mnist_missing(root, parts)
    if missing and download:
        from ncsn.data.download import download_mnist

        download_mnist(root, progress=progress)
        missing = _mnist_missing(root, parts)
    if missing:
        raise UserError(f"MNIST not found: no {', '.join(m + '[.gz]' for m in missing)} in {root} or "
                        f"{root / 'MNIST' / 'raw'}; put the IDX files there, or let ncsn fetch "
                        f"them: --download, or data.download: true in a training config")
    x, y, where = _load_mnist(root, parts)
    return InMemoryImageDataset("mnist", _resize_stack(x, size), 256, split, where, y)


def _get_cifar10(split, size, root, download, progress, **_):
    path = _find_cifar(root)
    if path is None and download:
        from ncsn.data.download import download_cifar10

        path = download_cifar10(root, progress=progress)
    if path is None:
        raise UserError(f"CIFAR-10 not found: no cifar-10-python.tar.gz or {_CIFAR_DIR}/ in {root}; "
                        f"put it there, or let ncsn fetch it: "
                        f"--download, or data.download: true in a training config")
    parts = {"train": ["train"], "test": ["test"], "all": ["train", "test"]}[split]
    x, y = _load_cifar10(path, parts)
    return InMemoryImageDataset("cifar10", _resize_stack(x, size), 256, split, str(path), y)


def _get_celeba(split, size, root, download, channels, num_workers, **_):
    reader = _celeba_reader(root)
    if reader is None:
        hint = " (CelebA has no automatic download)" if download else ""
        raise UserError(f"CelebA not found: no img_align_celeba/ or img_align_celeba.zip in {root} or "
                        f"{root / 'celeba'}{hint}; get the aligned images from the CelebA site")
    keys = [k for k in reader.list_images() if k.lower().endswith((".jpg", ".jpeg", ".png"))]
    keys = _select_celeba(keys, _celeba_partition(root), split)
    return LazyImageDataset("celeba", reader, keys, channels, size, CELEBA_CROP, split, num_workers)


def _get_folder(split, size, root, channels, num_workers, **_):
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a directory")
    folder = root
    if split != "all" and (root / "train").is_dir() and (root / "test").is_dir():
        folder = root / split
    reader = _DirectoryReader(folder)
    return LazyImageDataset("folder", reader, reader.list_images(), channels, size, None, split, num_workers)


_BUILDERS: dict[str, Callable[..., ImageDataset]] = {
    "digits": _get_digits, "mnist": _get_mnist, "cifar10": _get_cifar10,
    "celeba": _get_celeba, "folder": _get_folder,
}


def get_dataset(name: str, root: str | Path | None = None, train: bool | None = True, image_size: int | None = None,
                download: bool = False, progress: bool = True, channels: int | None = None,
                num_workers: int = 0) -> ImageDataset:
    """The image dataset ``name`` (one of :data:`DATASET_NAMES`) as an :class:`ImageDataset`.

    ``root``: where the files are (default :func:`default_root`; unused by ``digits``;
    required by ``folder``). ``train``: ``True`` training split, ``False`` test split,
    ``None`` all images. ``image_size``: side of the square output (default: 8 digits,
    28 mnist, 32 otherwise). ``download``: fetch MNIST / CIFAR-10 into ``root`` when
    missing (with a progress bar if ``progress``). ``channels``: 1 (grey) or 3 (RGB) for
    ``celeba`` and ``folder``; the other datasets accept only their own channel count.
    ``num_workers``: decoding threads for ``celeba`` / ``folder`` batches.
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    split = _split_name(train)
    native_channels, native_size = _NATIVE[name]
    size = native_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    if channels is not None and channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels!r}")
    if channels is not None and channels != native_channels and name not in ("celeba", "folder"):
        raise UserError(f"dataset {name} has {native_channels} channel(s), not {channels}")
    if name == "folder" and root is None:
        raise UserError("dataset folder needs a root directory (data.root)")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise UserError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    root_path = default_root(name) if root is None else Path(root).expanduser()
    return _BUILDERS[name](split=split, size=int(size), root=root_path, download=bool(download),
                           progress=progress, channels=channels or native_channels, num_workers=num_workers)
