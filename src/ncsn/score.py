"""Score functions: calling conventions shared by objectives, samplers and models.

A *score function* maps ``x`` (shape ``(N, ...)``) to an estimate of
``grad_x log p(x)`` of the same shape. It is either unconditional, ``s(x)``, or
noise-conditional, ``s(x, sigma)``, where ``sigma`` is a tensor of shape ``(N,)``
holding each sample's noise level (samplers and objectives always pass that
shape; models also accept a Python float).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

ScoreFn = Callable[..., torch.Tensor]


@functools.lru_cache(maxsize=256)
def _n_positional(fn_key) -> int:
    fn = fn_key
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 2
    count = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def takes_sigma(score_fn: ScoreFn) -> bool:
    """True when ``score_fn`` accepts a noise level as second positional argument."""
    target = score_fn.forward if isinstance(score_fn, torch.nn.Module) else score_fn
    try:
        return _n_positional(target) >= 2
    except TypeError:  # unhashable callable
        return _n_positional.__wrapped__(target) >= 2


def sigma_vector(sigma, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or ``(N,)`` noise level to a ``(N,)`` tensor on ``x``'s device/dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


def call_score(score_fn: ScoreFn, x: torch.Tensor, sigma=None) -> torch.Tensor:
    """Evaluate ``score_fn`` at ``x``, passing ``sigma`` (as an ``(N,)`` tensor) when it takes one.

    An unconditional ``s(x)`` ignores ``sigma``; a noise-conditional ``s(x, sigma)``
    called without ``sigma`` is an error.
    """
    if takes_sigma(score_fn):
        if sigma is None:
            raise TypeError("this score function is noise-conditional: pass sigma")
        return score_fn(x, sigma_vector(sigma, x))
    return score_fn(x)


def per_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(N,)`` tensor so it broadcasts against ``x`` of shape ``(N, ...)``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))
