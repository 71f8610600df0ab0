"""Feature extractors for sample-quality metrics: which network turns images into features and ``p(y|x)``.

FID, KID, precision/recall and density/coverage compare *features* of generated and
real images; the Inception Score uses *class probabilities* of generated ones
(:mod:`ncsn.metrics.maths`). :func:`get_extractor` picks the network for a dataset:

=====================  ==========================================================  ===================
dataset                network                                                      ``name``
=====================  ==========================================================  ===================
digits                 the CNN shipped in ``ncsn/weights/digits_classifier.pt``     ``digits-cnn``
                       (or ``classifier=PATH``; ``inception_weights`` alone picks
                       the Inception instead)
mnist                  a classifier from ``ncsn train-classifier --dataset mnist``  ``mnist-cnn``
                       (``classifier=PATH``), else the FID Inception-v3
cifar10, celeba,       the FID Inception-v3 (pytorch-fid's port of the TF           ``inception-v3-fid``
folder                 2015-12-05 graph, :mod:`ncsn.metrics.inception`)
=====================  ==========================================================  ===================

Digit classifiers give their penultimate activations and softmax over the 10 digits; the
Inception gives ``pool3`` (2048-d) and the IS probabilities ``softmax(pool3 @ W.T)``
over its 1008 outputs. Every extractor carries the SHA-256 of its weights, to be
reported next to the numbers it produces.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ncsn.errors import UserError

__all__ = ["INCEPTION_DATASETS", "FeatureExtractor", "classifier_extractor", "get_extractor",
           "inception_extractor"]

INCEPTION_DATASETS = ("mnist", "cifar10", "celeba", "folder")
_RANGE_TOLERANCE = 1e-3


class FeatureExtractor:
    """A frozen network mapping images ``(N, C, H, W)`` in ``[0, 1]`` to features and class probabilities.

    ``forward(batch)`` maps a ``float32`` batch already on ``device`` (with ``channels``
    channels) to ``(features, probs)``. When ``image_size`` is set, other sizes are resized
    to it (area average when shrinking, bilinear when enlarging) before ``forward``; grey images are
    repeated to 3 channels for 3-channel networks.
    """

    def __init__(self, name: str, forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 network: torch.nn.Module, weights_path: str, weights_sha256: str, channels: int,
                 image_size: int | None = None, device="cpu", batch_size: int = 100,
                 single_thread: bool = False):
        self.name = name
        self.network = network
        self.weights_path = str(weights_path)
        self.weights_sha256 = weights_sha256
        self.channels = channels
        self.image_size = image_size
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._forward = forward
        self._single_thread = single_thread

    def __repr__(self) -> str:
        return (f"FeatureExtractor(name={self.name!r}, weights_sha256={self.weights_sha256[:12]!r}, "
                f"device={str(self.device)!r})")

    def _prepare(self, images) -> torch.Tensor:
        """Check ``images`` and return them as a CPU ``float32`` tensor with the network's channels."""
        x = torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"images must have shape (N, C, H, W) with C in (1, 3), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise UserError("no images to extract features from")
        if not (x.is_floating_point()):
            raise UserError(f"images must be floats in [0, 1], got dtype {x.dtype}")
        x = x.detach()
        if not bool(torch.isfinite(x).all()):
            raise UserError("images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            raise UserError(f"images must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}]")
        if x.shape[1] != self.channels:
            if self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise UserError(f"{self.name} takes {self.channels}-channel images, got {x.shape[1]} channels")
        return x

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_size is None or tuple(x.shape[-2:]) == (self.image_size, self.image_size):
            return x
        size = (self.image_size, self.image_size)
        if min(x.shape[-2:]) > self.image_size:  # shrinking: average over each output pixel's area
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def extract(self, images, batch_size: int | None = None, progress: bool = False) -> dict[str, np.ndarray]:
        """``{"features": (N, D) float64, "probs": (N, K) float64}`` of ``images`` (tensor or array, [0, 1]).

        Batched (``batch_size``, default :attr:`batch_size`), without gradients, in eval mode.
        """
        from tqdm.auto import tqdm

        x = self._prepare(images)
        batch_size = int(batch_size or self.batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.network.eval()
        feats, probs = [], []
        threads = contextlib.nullcontext()
        if self._single_thread:
            from ncsn.models.classifier import single_cpu_thread

            threads = single_cpu_thread(self.device)
        starts = range(0, x.shape[0], batch_size)
        with torch.inference_mode(), threads:
            for start in tqdm(starts, desc=f"features ({self.name})", disable=not progress, dynamic_ncols=True):
                batch = x[start:start + batch_size].to(device=self.device, dtype=torch.float32).clamp(0, 1)
                f, p = self._forward(self._resize(batch))
                feats.append(f.to("cpu", torch.float64).numpy())
                probs.append(p.to("cpu", torch.float64).numpy())
        return {"features": np.concatenate(feats), "probs": np.concatenate(probs)}


def classifier_extractor(path: str | Path | None = None, device="cpu") -> FeatureExtractor:
    """A digit classifier (default: the shipped digits one) as a :class:`FeatureExtractor`.

    Features: the ``feature_dim`` penultimate activations; probs: softmax over the classes.
    """
    from ncsn.models.classifier import load_classifier, shipped_classifier_path

    path = Path(path) if path is not None else shipped_classifier_path()
    model, meta = load_classifier(path, device=device)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = model.features(x)
        return features, torch.softmax(model.head(features), dim=1)

    return FeatureExtractor(f"{meta['dataset']}-cnn", forward, model, str(path), meta["weights_sha256"],
                            channels=int(meta["channels"]), image_size=int(meta["image_size"]), device=device,
                            batch_size=500, single_thread=int(meta["image_size"]) <= 16)


def inception_extractor(weights: str | Path | None = None, device="cpu", cache_dir: str | Path | None = None,
                        download: bool | None = None, progress: bool = True) -> FeatureExtractor:
    """The FID Inception-v3 as a :class:`FeatureExtractor`: ``pool3`` features and IS probabilities.

    Weights from ``weights``, else the cache / a one-time download (see
    :func:`ncsn.metrics.inception.load_fid_inception`).
    """
    from ncsn.metrics.inception import load_fid_inception

    model = load_fid_inception(weights, cache_dir=cache_dir, download=download, device=device, progress=progress)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = model.pool3(x)
        return features, model.is_probs(features)

    return FeatureExtractor("inception-v3-fid", forward, model, model.weights_path, model.weights_sha256,
                            channels=3, image_size=None, device=device, batch_size=50)


def get_extractor(dataset: str, inception_weights: str | Path | None = None, classifier: str | Path | None = None,
                  device="cpu", cache_dir: str | Path | None = None, download: bool | None = None) -> FeatureExtractor:
    """The feature extractor for ``dataset`` (see the module docstring for which network).

    ``classifier``: weights from ``ncsn train-classifier`` (digits or MNIST; must have been
    trained on ``dataset``). ``inception_weights``: ``pt_inception-2015-12-05-6726825d.pth``.
    ``device``: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a :class:`torch.device`.
    """
    from ncsn.data.images import DATASET_NAMES

    if dataset not in DATASET_NAMES:
        raise UserError(f"unknown dataset {dataset!r}; valid names: {', '.join(DATASET_NAMES)}")
    if isinstance(device, str):
        from ncsn.device import resolve_device

        device = resolve_device(device)
    if classifier is not None:
        if dataset not in ("digits", "mnist"):
            raise UserError(f"--classifier gives features for digits and mnist only, not {dataset}")
        extractor = classifier_extractor(classifier, device=device)
        trained_on = extractor.name.removesuffix("-cnn")
        if trained_on != dataset:
            raise UserError(f"classifier {classifier} was trained on {trained_on}, not {dataset}")
        return extractor
    if dataset == "digits" and inception_weights is None:
        return classifier_extractor(None, device=device)
    return inception_extractor(inception_weights, device=device, cache_dir=cache_dir, download=download)
