"""Pieces shared by the samplers: argument checks, the progress bar, Tweedie's denoising step."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ncsn.score import ScoreFn, per_sample, sigma_vector, takes_sigma

Callback = Callable[[int, int, torch.Tensor], None]


def check_steps(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_positive(name: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and positive, got {value}")
    return value


def decreasing_levels(sigmas) -> list[float]:
    """The noise levels as Python floats (one host transfer), checked to decrease strictly."""
    sigmas = torch.as_tensor(sigmas, dtype=None if torch.is_tensor(sigmas) else torch.float64).detach()
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence of noise levels, got shape {tuple(sigmas.shape)}")
    values = sigmas.tolist()
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError("sigmas must be finite and positive")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L)")
    return values


def bound_score(score_fn: ScoreFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn`` as a two-argument function, its arity resolved once (not per step)."""
    return score_fn if takes_sigma(score_fn) else without_sigma(score_fn)


def without_sigma(score_fn: ScoreFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn`` called as ``score_fn(x)`` from the samplers' two-argument form (the sigma is dropped)."""
    return lambda x, _sigma: score_fn(x)


class ProgressBar:
    """A tqdm bar over ``total`` units when ``enabled`` (the samplers' one progress helper)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step" if total > 100 else "level", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def tweedie_denoise(score_fn: ScoreFn, x: torch.Tensor, sigma, scale=1.0) -> torch.Tensor:
    r"""Tweedie's formula (Efron 2011) for x = a x0 + s z:

    .. math:: \mathbb{E}[x_0 \mid x] = \frac{x + s^2\, \nabla_x \log q_s(x)}{a}.

    With a = 1 (NCSN's VE process) this is the final denoising step x + sigma_L^2 s(x, sigma_L)
    (Jolicoeur-Martineau et al. 2021; NCSNv2). ``sigma`` (s) and ``scale`` (a) are scalars or ``(N,)``.
    """
    with torch.no_grad():
        sigma_vec = sigma_vector(sigma, x)
        var = per_sample(sigma_vec, x).square()
        out = x + var * bound_score(score_fn)(x, sigma_vec)
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            out = out / per_sample(sigma_vector(scale, x), x)
    return out


def level_vectors(levels: list[float], x: torch.Tensor) -> list[torch.Tensor]:
    """Each level as an ``(N,)`` tensor on ``x``'s device (built once, before the loop)."""
    return [torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device) for s in levels]


def check_scales(scales, n: int) -> list[float]:
    """The kernel scales a_i (default 1: the VE process) as Python floats, one per level, in (0, 1]."""
    if scales is None:
        return [1.0] * n
    values = torch.as_tensor(scales, dtype=torch.float64).detach().reshape(-1).tolist()
    if len(values) != n:
        raise ValueError(f"scales must hold one value per level ({n}), got {len(values)}")
    if not all(math.isfinite(a) and 0 < a <= 1 for a in values):
        raise ValueError("scales must lie in (0, 1]")
    return values


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
