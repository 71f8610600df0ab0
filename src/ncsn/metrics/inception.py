"""The Inception-v3 network of FID and Inception Score, in plain PyTorch.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium") and the Inception Score (Salimans et al. 2016, "Improved
Techniques for Training GANs") are defined by one network: the TensorFlow Inception-v3
graph of 2015-12-05 (Szegedy et al. 2016, "Rethinking the Inception Architecture").
Numbers are comparable with the literature only when computed with that graph's weights;
the PyTorch port used by the field is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
(:data:`INCEPTION_URL`, SHA-256 :data:`INCEPTION_SHA256`, 95,628,359 bytes). The module
here reproduces its parameter names and shapes exactly (566 state-dict entries: 94
conv + batch-norm units and the ``fc`` head), so the file loads strictly.

The graph differs from the ImageNet Inception-v3 of other libraries in three places,
all reproduced here:

* the average-pool branch of the 35x35 (``Mixed_5b..d``), 17x17 (``Mixed_6b..e``) and
  first 8x8 (``Mixed_7b``) blocks divides by the number of *valid* pixels under the
  3x3 window (TensorFlow's ``SAME`` padding; ``count_include_pad=False``);
* the pool branch of the last block (``Mixed_7c``) is a 3x3 *max* pool, stride 1;
* the classifier has 1008 outputs (1000 ImageNet classes and 8 unused ones).

Input: images in ``[0, 1]``, resized to 299x299 with bilinear interpolation
(``align_corners=False``, as pytorch-fid does) and scaled to ``[-1, 1]`` (``2x - 1``).

Outputs: ``pool3`` (the 2048-d global average of the last block; FID, KID and
precision/recall use it) and the class logits ``pool3 @ W.T + b`` (1008). The Inception
Score of Salimans et al.'s released code is computed from ``softmax(pool3 @ W.T)``
over all 1008 outputs *without the bias* (it rebuilds the logits from the weights of
the graph's ``softmax/logits/MatMul``); :meth:`FIDInceptionV3.is_probs` gives exactly
that, and it is what :mod:`ncsn.metrics.features` returns as ``probs``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ncsn.checkpoint import load_weights
from ncsn.errors import UserError

__all__ = [
    "INCEPTION_FILE", "INCEPTION_SHA256", "INCEPTION_URL", "INPUT_SIZE", "FIDInceptionV3",
    "default_cache_dir", "file_sha256", "find_cached_weights", "load_fid_inception", "read_state_dict",
]

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
# The file name carries the first 8 hex digits of the file's SHA-256 (torch.hub convention).
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INPUT_SIZE = 299
N_CLASSES = 1008
FEATURE_DIM = 2048
NOT_FOUND = (f"FID Inception weights not found: pass --inception-weights PATH ({INCEPTION_FILE}) "
             f"or run once online")


# --------------------------------------------------------------------------------------------
# Building blocks


class ConvBN(nn.Module):
    """Convolution without bias, batch normalisation (eps 1e-3, as in the graph), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _chain(block: nn.Module, x: torch.Tensor, *names: str) -> torch.Tensor:
    """Apply the sub-modules ``names`` of ``block`` one after the other."""
    for name in names:
        x = getattr(block, name)(x)
    return x


def _avg_pool_valid(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average over the valid pixels of each window (TensorFlow ``SAME`` padding)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool-1x1; 224 + ``pool_features`` channels."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(self, x, "branch5x5_1", "branch5x5_2"),
            _chain(self, x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
            self.branch_pool(_avg_pool_valid(x)),
        ], dim=1)


class ReductionB(nn.Module):
    """35x35 -> 17x17 (``Mixed_6a``): 3x3/2 | 1x1-3x3-3x3/2 | max-pool 3x3/2; 480 + ``c_in`` channels."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            _chain(self, x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class MixedC(nn.Module):
    """17x17 block with 7x7 convolutions factorised into 1x7 and 7x1; 768 channels."""

    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(self, x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
            _chain(self, x, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
            self.branch_pool(_avg_pool_valid(x)),
        ], dim=1)


class ReductionD(nn.Module):
    """17x17 -> 8x8 (``Mixed_7a``): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool 3x3/2; 512 + ``c_in``."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            _chain(self, x, "branch3x3_1", "branch3x3_2"),
            _chain(self, x, *(f"branch7x7x3_{i}" for i in range(1, 5))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], dim=1)


class MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs; 2048 channels. ``pool``: ``"avg"`` or ``"max"``."""

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.branch3x3_1(x)
        dbl = _chain(self, x, "branch3x3dbl_1", "branch3x3dbl_2")
        pooled = (_avg_pool_valid(x) if self.pool == "avg"
                  else F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(mid), self.branch3x3_2b(mid),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], dim=1)

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"


# --------------------------------------------------------------------------------------------
# The network


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the TensorFlow 2015-12-05 graph, as used for FID and the Inception Score.

    ``forward(images)`` takes ``(N, 3, H, W)`` images in ``[0, 1]`` (any size; resized to
    299x299) and returns ``(pool3, logits)``: ``(N, 2048)`` and ``(N, 1008)``. Parameters
    are created on the CPU in ``float32``; inputs are moved to the parameters' device and
    dtype. Randomly initialised: load the weights with :func:`load_fid_inception`.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, pool_features=32)
        self.Mixed_5c = MixedA(256, pool_features=64)
        self.Mixed_5d = MixedA(288, pool_features=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, c7=128)
        self.Mixed_6c = MixedC(768, c7=160)
        self.Mixed_6d = MixedC(768, c7=160)
        self.Mixed_6e = MixedC(768, c7=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, pool="avg")
        self.Mixed_7c = MixedE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, N_CLASSES)
        self.weights_sha256: str | None = None  # set by load_fid_inception
        self.weights_path: str | None = None

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` images -> 299x299 (bilinear, ``align_corners=False``) in ``[-1, 1]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * images - 1.0

    def pool3(self, images: torch.Tensor) -> torch.Tensor:
        """The 2048-d ``pool3`` features of ``[0, 1]`` images."""
        x = self.preprocess(images.to(device=self.fc.weight.device, dtype=self.fc.weight.dtype))
        x = _chain(self, x, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")  # 147x147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73x73
        x = _chain(self, x, "Conv2d_3b_1x1", "Conv2d_4a_3x3")  # 71x71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35x35
        x = _chain(self, x, "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a")  # 17x17
        x = _chain(self, x, "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a")  # 8x8
        x = _chain(self, x, "Mixed_7b", "Mixed_7c")
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pool3(images)
        return features, self.fc(features)

    def is_probs(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities for the Inception Score: ``softmax(pool3 @ W.T)`` over 1008 outputs, no bias.

        This is what Salimans et al. (2016)'s released ``inception_score.py`` computes (and what
        the IS numbers of NCSN and later papers use).
        """
        return torch.softmax(features @ self.fc.weight.T, dim=1)


# --------------------------------------------------------------------------------------------
# Loading the weights


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$NCSN_CACHE``, else ``~/.cache/ncsn``."""
    return Path(os.environ.get("NCSN_CACHE", Path.home() / ".cache" / "ncsn")).expanduser()


def find_cached_weights(cache_dir: str | Path | None = None) -> Path | None:
    """The weights file in ``cache_dir`` (default :func:`default_cache_dir`) or torch.hub's cache, if present."""
    candidates = [Path(cache_dir or default_cache_dir()) / INCEPTION_FILE,
                  Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]  # where pytorch-fid puts it
    return next((p for p in candidates if p.is_file()), None)


def read_state_dict(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)``: a pickle asking for any other object is refused."""
    return load_weights(path, "weights")


def _download(url: str, dest: Path, progress: bool) -> None:
    """Fetch ``url`` to ``dest`` (temp file + rename, checked against :data:`INCEPTION_SHA256`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=INCEPTION_SHA256, progress=progress)


def load_fid_inception(path: str | Path | None = None, cache_dir: str | Path | None = None,
                       download: bool | None = None, device="cpu", verify_checksum: bool = True,
                       progress: bool = True) -> FIDInceptionV3:
    """The FID Inception-v3 with pytorch-fid's weights, in eval mode on ``device``.

    ``path``: the weights file. Without it, the file is looked for in ``cache_dir``
    (default ``$NCSN_CACHE`` or ``~/.cache/ncsn``) and torch.hub's checkpoint folder, and,
    unless ``download`` is ``False``, fetched once from :data:`INCEPTION_URL` (or
    ``$NCSN_INCEPTION_URL``) into ``cache_dir``; when that fails (offline) the error says how
    to pass the file. The file's SHA-256 must equal :data:`INCEPTION_SHA256` (``verify_checksum=False``
    only for files built elsewhere, e.g. tests); it is recorded as ``model.weights_sha256``.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"FID Inception weights not found at {path}")
    else:
        path = find_cached_weights(cache_dir)
        if path is None:
            if download is False:
                raise UserError(NOT_FOUND)
            dest = Path(cache_dir or default_cache_dir()) / INCEPTION_FILE
            url = os.environ.get("NCSN_INCEPTION_URL", INCEPTION_URL)
            try:
                _download(url, dest, progress)
            except Exception as err:  # offline, HTTP error, checksum mismatch, unwritable cache
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"{NOT_FOUND} (download from {url} failed: {reason})") from None
            path = dest
    digest = file_sha256(path)
    if verify_checksum and digest != INCEPTION_SHA256:
        raise UserError(f"{path} is not {INCEPTION_FILE}: its SHA-256 is {digest}, expected {INCEPTION_SHA256}")
    model = FIDInceptionV3()
    try:
        model.load_state_dict(read_state_dict(path), strict=True)
    except RuntimeError as err:  # missing / unexpected keys, wrong shapes
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:]) or str(err)
        raise UserError(f"{path} does not match the FID Inception-v3 architecture: {detail[:300]}") from None
    model.weights_sha256, model.weights_path = digest, str(path)
    return model.eval().requires_grad_(False).to(device)
