"""Batched image transforms for training on ``(B, C, H, W)`` tensors with values in ``[0, 1]``.

Every random draw comes from an optional :class:`torch.Generator` (on the tensor's device)
so a training step is reproducible; results follow the input's device and dtype.

* Uniform dequantisation (Theis, van den Oord & Bethge 2016, "A note on the evaluation of
  generative models"; Uria et al. 2013): a pixel stored as ``v / (K - 1)`` with ``K`` grey
  levels becomes ``(v + u) / K`` with ``u ~ U[0, 1)``, a continuous density whose
  likelihood bounds the discrete one.
* Random horizontal flips (the augmentation NCSN uses on CIFAR-10 and CelebA).
* The logit transform of RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, Sec. 4.1), also an
  NCSN option: ``y = logit(lam + (1 - 2 lam) x)``.
"""

from __future__ import annotations

import torch

__all__ = ["dequantize", "random_flip", "flip_where", "logit_transform", "inverse_logit_transform", "augment"]


def _check_batch(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")


def _uniform(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return torch.rand(shape, generator=generator, device=like.device, dtype=dtype)


def dequantize(x: torch.Tensor, n_levels: int, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform dequantisation ``(x (K - 1) + u) / K`` with ``u ~ U[0, 1)`` and ``K = n_levels``.

    For ``x = v / (K - 1)`` (``v`` in ``0..K-1``) the result is uniform on the bin
    ``[v / K, (v + 1) / K)`` (Theis et al. 2016). ``K = 256`` gives NCSN's
    ``x * 255/256 + u/256``. ``noise`` supplies ``u`` (drawn from ``generator`` otherwise).
    """
    if int(n_levels) < 2:
        raise ValueError(f"n_levels must be >= 2, got {n_levels}")
    u = _uniform(x.shape, x, generator) if noise is None else noise
    return (x * (n_levels - 1) + u) / n_levels


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of the batch left-right independently with probability 1/2."""
    return _flip_half(x, generator)


def _flip_half(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    _check_batch(x)
    return flip_where(x, torch.rand((x.shape[0],), generator=generator, device=x.device) < 0.5)


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images of the batch where the ``(B,)`` boolean ``mask`` is true."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def logit_transform(x: torch.Tensor, lam: float = 1e-6) -> torch.Tensor:
    """``y = logit(p)`` with ``p = lam + (1 - 2 lam) x`` (RealNVP, Dinh et al. 2017, Sec. 4.1).

    ``lam`` keeps ``p`` inside ``(0, 1)`` so ``x = 0`` and ``x = 1`` map to finite values
    ``-/+ log((1 - lam) / lam)``.
    """
    if not 0.0 < lam < 0.5:
        raise ValueError(f"lam must be in (0, 0.5), got {lam}")
    p = lam + (1.0 - 2.0 * lam) * x
    return torch.log(p) - torch.log1p(-p)


def inverse_logit_transform(y: torch.Tensor, lam: float = 1e-6) -> torch.Tensor:
    """The inverse of :func:`logit_transform`: ``x = (sigmoid(y) - lam) / (1 - 2 lam)``."""
    if not 0.0 < lam < 0.5:
        raise ValueError(f"lam must be in (0, 0.5), got {lam}")
    return (torch.sigmoid(y) - lam) / (1.0 - 2.0 * lam)


def augment(x: torch.Tensor, n_levels: int, random_flip: bool = False, dequant: bool = True,
            generator: torch.Generator | None = None, logit: bool = False, lam: float = 1e-6) -> torch.Tensor:
    """Training-time preprocessing of a batch in ``[0, 1]``: dequantise, flip, then (optionally) logit.

    The draws happen in that order from ``generator``: first the ``(B, C, H, W)``
    dequantisation noise, then the ``(B,)`` flip coins.
    """
    _check_batch(x)
    if dequant:
        x = dequantize(x, n_levels, generator=generator)
    if random_flip:
        x = _flip_half(x, generator)
    if logit:
        x = logit_transform(x, lam=lam)
    return x

