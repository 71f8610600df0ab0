"""Image datasets (ncsn.data.images) on tiny generated files, and the batched transforms."""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _image_fixtures import (CELEBA_BOX, celeba_image, cifar_batch_py3, cifar_tarball_bytes, idx_bytes,  # noqa: E402
                             jpeg_bytes, make_celeba, make_cifar, make_mnist, striped_image, write_idx)

from ncsn.data.images import DATASET_NAMES, get_dataset, read_idx, restricted_unpickle  # noqa: E402
from ncsn.data.transforms import augment, dequantize, inverse_logit_transform, logit_transform, random_flip  # noqa: E402
from ncsn.errors import UserError  # noqa: E402


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_splits_values_and_labels():
    from sklearn.datasets import load_digits

    ref = load_digits()
    full = get_dataset("digits", train=None)
    assert (len(full), full.channels, full.image_size, full.n_levels, full.name) == (1797, 1, 8, 17, "digits")
    x = full.get_batch(torch.arange(len(full)))
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    assert torch.equal(x[:, 0] * 16, torch.from_numpy(ref.images).float())  # value / 16, exactly
    assert torch.equal(full.labels, torch.from_numpy(ref.target).long())

    train, test = get_dataset("digits", train=True), get_dataset("digits", train=False)
    assert (len(train), len(test)) == (1500, 297)
    rows = lambda d: sorted(map(bytes, d.images.reshape(len(d), -1).numpy()))  # noqa: E731
    assert sorted(rows(train) + rows(test)) == rows(full)  # a partition of all images
    assert torch.equal(get_dataset("digits", train=True).images, train.images)  # fixed split
    assert train.labels.bincount(minlength=10).min() > 120  # every class is in the training split


def test_digits_get_batch_matches_getitem_and_resize():
    data = get_dataset("digits")
    idx = torch.tensor([5, 0, 1499, 5])
    batch = data.get_batch(idx)
    assert torch.equal(batch, torch.stack([data[i] for i in idx.tolist()]))
    assert torch.equal(batch * 16, torch.round(batch * 16))  # values on the 17-level grid
    big = get_dataset("digits", image_size=16)
    assert big.image_size == 16 and big.n_levels == 17
    y = big.get_batch(torch.arange(3)) * 16
    assert torch.equal(y, torch.round(y)) and y.max() <= 16 and y.min() >= 0
    # bilinear upsampling keeps the mean intensity within a grey level of the source
    assert torch.allclose(y.mean((1, 2, 3)), data.get_batch(torch.arange(3)).mean((1, 2, 3)) * 16, atol=1.0)


def test_unknown_name_and_bad_arguments():
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*digits, mnist, cifar10, celeba, folder"):
        get_dataset("imagenet")
    assert DATASET_NAMES == ("digits", "mnist", "cifar10", "celeba", "folder")
    with pytest.raises(UserError, match="image_size must be a positive integer"):
        get_dataset("digits", image_size=0)
    with pytest.raises(UserError, match="dataset digits has 1 channel"):
        get_dataset("digits", channels=3)
    with pytest.raises(UserError, match="train must be True, False or None"):
        get_dataset("digits", train="test")
    with pytest.raises(UserError, match="needs a root"):
        get_dataset("folder")


# ---------------------------------------------------------------------------------------------
# MNIST


def test_mnist_idx_gz_splits_and_labels(tmp_path):
    arrays = make_mnist(tmp_path, n_train=12, n_test=5)
    train = get_dataset("mnist", root=tmp_path, progress=False)
    assert (len(train), train.channels, train.image_size, train.n_levels) == (12, 1, 28, 256)
    x = train.get_batch(torch.arange(12))
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(train.labels, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    test = get_dataset("mnist", root=tmp_path, train=False)
    assert len(test) == 5 and torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    both = get_dataset("mnist", root=tmp_path, train=None)
    assert len(both) == 17 and torch.equal(both.images[12:], test.images)


def test_mnist_torchvision_layout_uncompressed_and_resize(tmp_path):
    arrays = make_mnist(tmp_path, n_train=4, n_test=2, gz=False, folder="MNIST/raw", seed=3)
    data = get_dataset("mnist", root=tmp_path, image_size=32)
    assert data.get_batch(torch.arange(4)).shape == (4, 1, 32, 32)
    ref = np.array(Image.fromarray(arrays["train-images-idx3-ubyte"][2]).resize((32, 32), Image.Resampling.BILINEAR))
    assert torch.equal(data.images[2, 0], torch.from_numpy(ref))


def test_mnist_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="MNIST not found.*--download"):
        get_dataset("mnist", root=tmp_path)
    make_mnist(tmp_path, n_train=3, n_test=2)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    good = gzip.decompress(images.read_bytes())

    images.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + good[4:]))  # labels magic on an images file
    with pytest.raises(UserError, match=r"bad IDX magic in .*train-images-idx3-ubyte.gz"):
        get_dataset("mnist", root=tmp_path)
    images.write_bytes(gzip.compress(b"PK\x03\x04" + good[4:]))
    with pytest.raises(UserError, match="bad IDX magic"):
        get_dataset("mnist", root=tmp_path)
    images.write_bytes(gzip.compress(good[:-10]))
    with pytest.raises(UserError, match=r"size mismatch in IDX file .*\(3, 28, 28\) \(2352 bytes\) but 2342"):
        get_dataset("mnist", root=tmp_path)
    images.write_bytes(gzip.compress(good)[:-20])
    with pytest.raises(UserError, match=r"truncated gzip file .*train-images-idx3-ubyte.gz"):
        get_dataset("mnist", root=tmp_path)
    write_idx(images, np.zeros((4, 28, 28), np.uint8))  # 4 images, 3 labels
    with pytest.raises(UserError, match="has 4 images but .* has 3 labels"):
        get_dataset("mnist", root=tmp_path)


def test_read_idx_roundtrip(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    assert np.array_equal(read_idx(tmp_path / "a"), array)
    with pytest.raises(UserError, match="is a 3-D file, expected 1-D"):
        read_idx(tmp_path / "a", ndim=1)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("layout", ["tarball", "tarball-py2", "directory"])
def test_cifar10_layouts(tmp_path, layout):
    arrays = make_cifar(tmp_path, n_per_batch=3, py2=layout == "tarball-py2", as_dir=layout == "directory")
    train = get_dataset("cifar10", root=tmp_path)
    assert (len(train), train.channels, train.image_size, train.n_levels) == (15, 3, 32, 256)
    expected = np.concatenate([arrays[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert torch.equal(train.images.reshape(15, -1), torch.from_numpy(expected))
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
    pixel = train.get_batch(torch.tensor([4]))[0, :, 7, 11] * 255
    assert torch.equal(pixel.round(), torch.tensor([float(expected[4, c * 1024 + 7 * 32 + 11]) for c in range(3)]))
    assert train.labels.tolist() == sum((arrays[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    test = get_dataset("cifar10", root=tmp_path, train=False)
    assert torch.equal(test.images.reshape(3, -1), torch.from_numpy(arrays["test_batch"][0]))
    assert test.labels.tolist() == arrays["test_batch"][1]
    assert len(get_dataset("cifar10", root=tmp_path, train=None)) == 18


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _RunsCommand(f"touch {marker}")}, protocol=2)
    assert b"system" in evil
    with pytest.raises(UserError, match=r"unsafe or corrupt pickle batch: refusing to load the global (posix|nt)\.system"):
        restricted_unpickle(evil, "batch")
    assert not marker.exists()
    with pytest.raises(UserError, match="refusing to load the global builtins.eval"):
        restricted_unpickle(b"cbuiltins\neval\n(S'1+1'\ntR.", "x")
    # inside the tarball: the error names the member and nothing runs
    batches = {f"data_batch_{k}": cifar_batch_py3(np.zeros((1, 3072), np.uint8), [0]) for k in range(1, 6)}
    batches["data_batch_3"] = evil
    batches["test_batch"] = batches["data_batch_1"]
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_tarball_bytes(batches))
    with pytest.raises(UserError, match=r"cifar-10-python.tar.gz:data_batch_3: refusing .*system"):
        get_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_cifar10_corrupt_files(tmp_path):
    make_cifar(tmp_path, n_per_batch=2)
    tarball = tmp_path / "cifar-10-python.tar.gz"
    good = tarball.read_bytes()
    tarball.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match=r"bad tarball .*cifar-10-python.tar.gz"):
        get_dataset("cifar10", root=tmp_path)
    tarball.write_bytes(b"not a tarball at all")
    with pytest.raises(UserError, match="bad tarball"):
        get_dataset("cifar10", root=tmp_path)
    batch = cifar_batch_py3(np.zeros((2, 3072), np.uint8), [0, 1])
    tarball.write_bytes(cifar_tarball_bytes({"test_batch": batch}))
    with pytest.raises(UserError, match="missing cifar-10-batches-py/data_batch_1, .*data_batch_5"):
        get_dataset("cifar10", root=tmp_path)
    tarball.write_bytes(cifar_tarball_bytes({"test_batch": cifar_batch_py3(np.zeros((2, 100), np.uint8), [0, 1])}))
    with pytest.raises(UserError, match=r"test_batch: 'data' must be a uint8 \(N, 3072\) array, got uint8 \(2, 100\)"):
        get_dataset("cifar10", root=tmp_path, train=False)
    tarball.write_bytes(cifar_tarball_bytes({"test_batch": batch[:-5]}))
    with pytest.raises(UserError, match="corrupt pickle .*test_batch"):
        get_dataset("cifar10", root=tmp_path, train=False)
    tarball.unlink()
    with pytest.raises(UserError, match="CIFAR-10 not found.*--download"):
        get_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# CelebA


@pytest.mark.parametrize("as_zip", [False, True])
def test_celeba_crop_geometry_and_partition(tmp_path, as_zip):
    make_celeba(tmp_path, n=6, as_zip=as_zip, partition=[0, 0, 0, 1, 2, 2])
    train = get_dataset("celeba", root=tmp_path)
    assert (len(train), train.channels, train.image_size, train.n_levels) == (3, 3, 32, 256)
    x = train.get_batch(torch.arange(3))
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    # the whole output comes from the 140x140 centre: red everywhere, no blue margin survives
    assert x[:, 0].min() > 0.9 and x[:, 2].max() < 0.1
    # green codes the image index (20 * k / 255)
    assert torch.allclose(x[:, 1].mean((1, 2)), torch.tensor([0.0, 20.0, 40.0]) / 255, atol=0.02)
    # exactly PIL's crop of the box (19, 39, 159, 179) then bilinear resize
    decoded = Image.open(io.BytesIO(jpeg_bytes(celeba_image(1)))).convert("RGB")
    ref = np.asarray(decoded.crop(CELEBA_BOX).resize((32, 32), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal((x[1] * 255).round().to(torch.uint8), torch.from_numpy(ref.copy()))
    test = get_dataset("celeba", root=tmp_path, train=False, image_size=64)
    assert len(test) == 2 and test[0].shape == (3, 64, 64)
    assert abs(test[1][1].mean().item() - 100 / 255) < 0.02  # 000006.jpg: index 5
    assert len(get_dataset("celeba", root=tmp_path, train=None)) == 6
    grey = get_dataset("celeba", root=tmp_path, channels=1)
    assert grey[0].shape == (1, 32, 32)
    # threads and pickling (DataLoader workers) give the same pixels
    threaded = get_dataset("celeba", root=tmp_path, num_workers=2)
    assert torch.equal(threaded.get_batch(torch.tensor([2, 0, 1])), x[[2, 0, 1]])
    assert torch.equal(pickle.loads(pickle.dumps(threaded))[1], x[1])


def test_celeba_without_partition_and_corrupt_jpeg(tmp_path):
    names = make_celeba(tmp_path, n=4)
    assert len(get_dataset("celeba", root=tmp_path, train=True)) == 4  # no partition file: all images
    path = tmp_path / "img_align_celeba" / names[2]
    path.write_bytes(path.read_bytes()[:400])
    data = get_dataset("celeba", root=tmp_path)
    data[1]
    with pytest.raises(UserError, match=r"cannot decode image .*000003.jpg"):
        data[2]
    (tmp_path / "img_align_celeba.zip").write_bytes(b"garbage")
    with pytest.raises(UserError, match="CelebA not found"):
        get_dataset("celeba", root=tmp_path / "elsewhere")
    other = tmp_path / "z"
    other.mkdir()
    (other / "img_align_celeba.zip").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"bad zip archive .*img_align_celeba.zip"):
        get_dataset("celeba", root=other)
    with zipfile.ZipFile(other / "img_align_celeba.zip", "w") as archive:
        archive.writestr("img_align_celeba/000001.jpg", b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match=r"cannot decode image .*img_align_celeba.zip:img_align_celeba/000001.jpg"):
        get_dataset("celeba", root=other)[0]


# ---------------------------------------------------------------------------------------------
# folder


def test_folder_recursive_modes_square_crop_and_channels(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    striped_image(60, 40).save(tmp_path / "a_wide.png")
    striped_image(30, 50).save(tmp_path / "sub" / "b_tall.BMP")
    striped_image(20, 20).convert("P").save(tmp_path / "sub" / "deeper" / "c_palette.png")
    Image.new("L", (10, 10), 128).save(tmp_path / "d_grey.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    data = get_dataset("folder", root=tmp_path, image_size=16)
    assert (len(data), data.channels, data.image_size, data.n_levels) == (4, 3, 16, 256)
    assert data.keys == ["a_wide.png", "d_grey.webp", "sub/b_tall.BMP", "sub/deeper/c_palette.png"]
    x = data.get_batch(torch.arange(4))
    centre = torch.tensor([200.0, 40.0, 90.0]).view(3, 1, 1) / 255
    for k in (0, 2):  # the green margins are cropped away: uniform centre colour
        assert torch.allclose(x[k], centre.expand(3, 16, 16), atol=1 / 255)
    assert torch.allclose(x[1], torch.full((3, 16, 16), 128 / 255))
    grey = get_dataset("folder", root=tmp_path, image_size=8, channels=1)
    assert grey.get_batch(torch.tensor([0])).shape == (1, 1, 8, 8)
    luma = (299 * 200 + 587 * 40 + 114 * 90) / 1000 / 255  # ITU-R 601-2, PIL's RGB -> L
    assert abs(grey[0].mean().item() - luma) < 1 / 255


def test_folder_splits_and_errors(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for k in range(n):
            striped_image(8, 8).save(tmp_path / split / f"{k}.png")
    assert len(get_dataset("folder", root=tmp_path, train=True)) == 3
    assert len(get_dataset("folder", root=tmp_path, train=False)) == 2
    assert len(get_dataset("folder", root=tmp_path, train=None)) == 5
    with pytest.raises(UserError, match="does not exist"):
        get_dataset("folder", root=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="folder: no images found in .*empty"):
        get_dataset("folder", root=tmp_path / "empty")
    (tmp_path / "train" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UserError, match=r"cannot decode image .*train/9.png"):
        get_dataset("folder", root=tmp_path).get_batch(torch.arange(4))


# ---------------------------------------------------------------------------------------------
# transforms


def test_dequantize_stays_in_bin_and_is_uniform():
    levels = 17
    v = torch.arange(levels, dtype=torch.float32).repeat(2000)
    x = (v / (levels - 1)).view(-1, 1, 1, 1)
    y = dequantize(x, levels, generator=torch.Generator().manual_seed(0))
    frac = y.flatten() * levels - v  # should be u ~ U[0, 1)
    assert frac.min() >= -1e-5 and frac.max() < 1 + 1e-5
    assert (y.flatten() >= v / levels - 1e-7).all() and (y.flatten() < (v + 1) / levels + 1e-7).all()
    n = frac.numel()
    assert abs(frac.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(frac.var().item() - 1 / 12) < 0.005
    again = dequantize(x, levels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, again)
    with pytest.raises(ValueError, match="n_levels must be >= 2"):
        dequantize(x, 1)


def test_random_flip_probability_and_exactness():
    x = torch.arange(6.0).view(1, 1, 1, 6).repeat(4000, 2, 3, 1)
    y = random_flip(x, generator=torch.Generator().manual_seed(1))
    flipped = y[:, 0, 0, 0] == 5
    assert torch.equal(y[flipped], x[flipped].flip(-1)) and torch.equal(y[~flipped], x[~flipped])
    p = flipped.float().mean().item()
    assert abs(p - 0.5) < 4 * math.sqrt(0.25 / 4000)
    assert torch.equal(random_flip(x, generator=torch.Generator().manual_seed(1)), y)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_flip(torch.zeros(3, 4, 4))


def test_logit_transform_values_and_round_trip():
    lam = 1e-6
    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    y = logit_transform(x, lam)
    assert y[500].abs() < 1e-12
    assert torch.isclose(y[0], torch.tensor(math.log(lam / (1 - lam)), dtype=torch.float64))
    assert torch.allclose(y, -y.flip(0), atol=1e-9)  # logit(1 - p) = -logit(p)
    assert (inverse_logit_transform(y, lam) - x).abs().max() < 1e-12
    x32 = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert (inverse_logit_transform(logit_transform(x32)) - x32).abs().max() < 1e-5
    lam2 = 0.05
    p = lam2 + (1 - 2 * lam2) * 0.3
    assert math.isclose(logit_transform(torch.tensor(0.3), lam2).item(), math.log(p / (1 - p)), rel_tol=1e-6)


def test_augment_composes_in_order():
    x = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    x = torch.round(x * 255) / 255
    got = augment(x, 256, random_flip=True, dequant=True, generator=torch.Generator().manual_seed(7), logit=True)
    g = torch.Generator().manual_seed(7)
    expected = logit_transform(random_flip(dequantize(x, 256, generator=g), generator=g))
    assert torch.equal(got, expected)
    assert torch.equal(augment(x, 256, random_flip=False, dequant=False), x)
    assert augment(x.double(), 256).dtype == torch.float64
