"""Score functions: calling conventions shared by objectives, samplers and models.

A *score function* maps ``x`` (shape ``(N, ...)``) to an estimate of
``grad_x log p(x)`` of the same shape. It is either unconditional, ``s(x)``, or
noise-conditional, ``s(x, sigma)``, where ``sigma`` is a tensor of shape ``(N,)``
holding each sample's noise level (samplers and objectives always pass that
shape; models also accept a Python float). A function whose noise level has a
default, ``s(x, sigma=None)``, says the level is optional: it gets one when there
is one and is called as ``s(x)`` when there is none.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

ScoreFn = Callable[..., torch.Tensor]


@functools.lru_cache(maxsize=256)
def _arity(fn) -> tuple[int, bool]:
    """How many positional parameters ``fn`` has (2 for ``*args``), and whether the second has a default."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 2, False
    positional = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return 2, False
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(p)
    return len(positional), len(positional) >= 2 and positional[1].default is not inspect.Parameter.empty


def _arity_of(score_fn: ScoreFn) -> tuple[int, bool]:
    target = score_fn.forward if isinstance(score_fn, torch.nn.Module) else score_fn
    try:
        return _arity(target)
    except TypeError:  # unhashable callable
        return _arity.__wrapped__(target)


def takes_sigma(score_fn: ScoreFn) -> bool:
    """True when ``score_fn`` accepts a noise level as second positional argument."""
    return _arity_of(score_fn)[0] >= 2


def sigma_optional(score_fn: ScoreFn) -> bool:
    """True when ``score_fn``'s noise level (its second positional parameter) has a default."""
    return _arity_of(score_fn)[1]


def needs_sigma(score_fn: ScoreFn, sigma) -> bool:
    """Whether ``score_fn`` is to be given ``sigma``: it takes one and there is one; an error when one is
    required (no default) and there is none."""
    if not takes_sigma(score_fn):
        return False
    if sigma is None:
        if sigma_optional(score_fn):
            return False
        raise TypeError("this score function is noise-conditional: pass sigma (or give its sigma a default)")
    return True


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

    An unconditional ``s(x)`` ignores ``sigma``; ``s(x, sigma=default)`` without ``sigma`` is
    called as ``s(x)``; a noise-conditional ``s(x, sigma)`` called without ``sigma`` is an error.
    """
    if needs_sigma(score_fn, sigma):
        return score_fn(x, sigma_vector(sigma, x))
    return score_fn(x)


def per_sample(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(N,)`` tensor so it broadcasts against ``x`` of shape ``(N, ...)``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))
