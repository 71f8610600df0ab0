"""A small CNN digit classifier: the feature network of FID / IS / precision-recall on digits and MNIST.

FID and the Inception Score need a network trained on labelled images of the data's
domain (Heusel et al. 2017 use ImageNet's Inception-v3 for natural images). For the 8x8
digits and 28x28 MNIST, whose images ImageNet networks never saw, the standard stand-in is
a classifier trained on the dataset itself: its penultimate activations are the features
and its softmax the class probabilities ``p(y|x)``.

Architecture (``width`` w, ``feature_dim`` d, each conv 3x3 with padding 1)::

    [conv(c, w) BN ReLU, conv(w, w) BN ReLU] max-pool 2
    [conv(w, 2w) BN ReLU, conv(2w, 2w) BN ReLU] max-pool 2
    global average pool -> linear(2w, d) ReLU = features -> linear(d, n_classes) = logits

The global average pool makes it independent of the input size (8x8 -> 2x2, 28x28 -> 7x7).

Weights files are a plain dict written with :func:`torch.save` and read with
``weights_only=True`` (no code runs on load)::

    {"format": "ncsn-classifier", "version": 1, "arch": {...kwargs...},
     "state_dict": {name: tensor}, "weights_sha256": str, "dataset": str,
     "image_size": int, "channels": int, "test_accuracy": float, ...}

``weights_sha256`` hashes the tensors themselves (:func:`state_dict_sha256`), so it
identifies the weights independently of how the file was pickled, and is checked on load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ncsn.checkpoint import load_weights, save_atomic
from ncsn.device import single_cpu_thread  # noqa: F401  (re-exported)
from ncsn.errors import UserError

__all__ = ["FORMAT", "DigitClassifier", "load_classifier", "save_classifier", "shipped_classifier_path",
           "single_cpu_thread", "state_dict_sha256"]

FORMAT = "ncsn-classifier"
VERSION = 1
_REQUIRED = ("format", "version", "arch", "state_dict", "weights_sha256", "dataset", "image_size", "channels")


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class DigitClassifier(nn.Module):
    """Two conv stages, global average pool, a ``feature_dim`` hidden layer and a linear classifier."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        for name, value in dict(in_channels=in_channels, n_classes=n_classes, width=width,
                                feature_dim=feature_dim).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.arch = dict(in_channels=in_channels, n_classes=n_classes, width=width, feature_dim=feature_dim)
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width), *_conv_bn_relu(2 * width, 2 * width), nn.MaxPool2d(2),
        )
        self.hidden = nn.Linear(2 * width, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)`` (after the ReLU) of images ``(N, C, H, W)``, H, W >= 4."""
        x = x.to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        return F.relu(self.hidden(self.body(x).mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)``."""
        return self.head(self.features(x))


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: name, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_classifier(model: DigitClassifier, path: str | Path, **meta) -> dict:
    """Write ``model`` and ``meta`` (plain values: dataset, image_size, channels, accuracy, ...) atomically.

    Returns the dict written. ``meta`` must hold ``dataset``, ``image_size`` and ``channels``.
    """
    missing = [k for k in ("dataset", "image_size", "channels") if k not in meta]
    if missing:
        raise ValueError(f"save_classifier needs {', '.join(missing)}")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "arch": dict(model.arch), "state_dict": state,
               "weights_sha256": state_dict_sha256(state), **meta}
    save_atomic(payload, path)
    return payload


def load_classifier(path: str | Path, device="cpu") -> tuple[DigitClassifier, dict]:
    """``(model in eval mode on device, metadata)`` from a file written by :func:`save_classifier`.

    Read with ``weights_only=True``; a crafted pickle, a file of another format, or weights
    whose checksum differs from the recorded ``weights_sha256`` raise :class:`UserError`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"classifier weights not found: {path}")
    payload = load_weights(path, "classifier weights")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a classifier weights file (written by `ncsn train-classifier`)")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}")
    if payload["version"] != VERSION:
        raise UserError(f"{path} has classifier format version {payload['version']}, this ncsn reads {VERSION}")
    digest = state_dict_sha256(payload["state_dict"])
    if digest != payload["weights_sha256"]:
        raise UserError(f"{path}: weights checksum {digest[:12]} does not match the recorded "
                        f"{str(payload['weights_sha256'])[:12]} (corrupt or edited file)")
    try:
        model = DigitClassifier(**payload["arch"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (TypeError, ValueError, RuntimeError) as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()) or type(err).__name__
        raise UserError(f"{path}: weights do not fit the classifier architecture: {detail[:300]}") from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.eval().requires_grad_(False).to(device), meta


def shipped_classifier_path() -> Path:
    """The digits classifier shipped with the package (``ncsn/weights/digits_classifier.pt``)."""
    return Path(__file__).resolve().parent.parent / "weights" / "digits_classifier.pt"
