"""Langevin samplers over a score function ``score_fn(x, sigma)`` (or ``score_fn(x)``).

* :func:`langevin`: plain (unadjusted) Langevin dynamics.
* :func:`annealed_langevin`: Song & Ermon (2019), "Generative Modeling by Estimating Gradients
  of the Data Distribution", Algorithm 1, with the optional final denoising step.
* :func:`annealed_langevin_inpaint`: the same paper's conditional sampler for inpainting
  (its inpainting experiments, Algorithm 2).

All randomness comes from the optional ``generator`` (a ``torch.Generator`` on ``x``'s device),
so a run is reproducible. The samplers run under ``torch.no_grad()``; a score that needs
gradients itself (:class:`ncsn.energy.EnergyScore`) switches them on for its own derivative.
The input ``x`` is never modified; the returned tensor is new.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ncsn.score import ScoreFn, sigma_vector, takes_sigma

Callback = Callable[[int, int, torch.Tensor], None]


def _check_steps(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _check_positive(name: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and positive, got {value}")
    return value


def _levels(sigmas) -> list[float]:
    """The noise levels as Python floats (one host transfer), checked to decrease strictly."""
    sigmas = torch.as_tensor(sigmas).detach()
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence of noise levels, got shape {tuple(sigmas.shape)}")
    values = sigmas.tolist()
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError("sigmas must be finite and positive")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L)")
    return values


def _bound_score(score_fn: ScoreFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``score_fn`` as a two-argument function, its arity resolved once (not per step)."""
    if takes_sigma(score_fn):
        return score_fn
    return lambda x, _sigma: score_fn(x)


def langevin(score_fn: ScoreFn, x: torch.Tensor, step_size: float, n_steps: int, noise: bool = True,
             generator: torch.Generator | None = None, sigma=None, callback: Callback | None = None) -> torch.Tensor:
    """Langevin dynamics: x <- x + step_size s(x) + sqrt(2 step_size) z, z ~ N(0, I), ``n_steps`` times.

    In the NCSN paper's notation (x <- x + eps/2 grad log p + sqrt(eps) z) step_size = eps/2.
    ``noise=False`` gives gradient ascent on log p. A noise-conditional score is evaluated at
    ``sigma`` (scalar or ``(N,)``), which is then required. ``callback(0, step, x)`` runs after
    each step (``x`` is the working tensor: clone it to keep it).
    """
    step_size = _check_positive("step_size", step_size)
    n_steps = _check_steps("n_steps", n_steps)
    score = _bound_score(score_fn)
    if takes_sigma(score_fn):
        if sigma is None:
            raise TypeError("this score function is noise-conditional: pass sigma")
        sigma_vec = sigma_vector(sigma, x)
    else:
        sigma_vec = None
    noise_scale = math.sqrt(2.0 * step_size)
    with torch.no_grad():
        x = x.detach().clone()
        z = torch.empty_like(x) if noise else None
        for step in range(n_steps):
            x.add_(score(x, sigma_vec), alpha=step_size)
            if noise:
                x.add_(z.normal_(generator=generator), alpha=noise_scale)
            if callback is not None:
                callback(0, step, x)
    return x


def _annealed_steps(score, x: torch.Tensor, levels: list[float], step_lr: float, n_steps_each: int,
                    callback, generator, progress: bool, desc: str, before_level=None, after_step=None):
    """The loop shared by the annealed samplers; ``x`` is updated in place."""
    n = x.shape[0]
    sigma_vecs = [torch.full((n,), s, dtype=x.dtype, device=x.device) for s in levels]
    var_last = levels[-1] ** 2
    z = torch.empty_like(x)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(levels), desc=desc, unit="level", dynamic_ncols=True)
    try:
        for i, (sigma, sigma_vec) in enumerate(zip(levels, sigma_vecs)):
            alpha = step_lr * sigma * sigma / var_last
            half_alpha, noise_scale = 0.5 * alpha, math.sqrt(alpha)
            if before_level is not None:
                before_level(x, sigma)
            for step in range(n_steps_each):
                x.add_(score(x, sigma_vec), alpha=half_alpha)
                x.add_(z.normal_(generator=generator), alpha=noise_scale)
                if after_step is not None:
                    after_step(x)
                if callback is not None:
                    callback(i, step, x)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return sigma_vecs[-1]


def annealed_langevin(score_fn: ScoreFn, x: torch.Tensor, sigmas, step_lr: float, n_steps_each: int,
                      denoise: bool = False, callback: Callback | None = None,
                      generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level i = 1..L (``sigmas`` strictly decreasing), with alpha_i = step_lr sigma_i^2 / sigma_L^2,
    run ``n_steps_each`` (T) steps of

        x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z,   z ~ N(0, I).

    ``denoise=True`` ends with the Tweedie step x + sigma_L^2 s(x, sigma_L) (Jolicoeur-Martineau et al.
    2021; also used by NCSNv2), which removes the last level's noise. ``callback(level, step, x)`` is
    called after each of the L*T steps with the working tensor (clone what you keep). ``progress``
    shows a bar over levels. The loop does no host synchronisation: step sizes and the per-level
    ``(N,)`` sigma vectors are computed once, and noise is drawn into one reused buffer.
    """
    levels = _levels(sigmas)
    step_lr = _check_positive("step_lr", step_lr)
    n_steps_each = _check_steps("n_steps_each", n_steps_each)
    score = _bound_score(score_fn)
    with torch.no_grad():
        x = x.detach().clone()
        last = _annealed_steps(score, x, levels, step_lr, n_steps_each, callback, generator, progress, "annealed Langevin")
        if denoise:
            x.add_(score(x, last), alpha=levels[-1] ** 2)
    return x


def annealed_langevin_inpaint(score_fn: ScoreFn, x: torch.Tensor, known: torch.Tensor, mask: torch.Tensor, sigmas,
                              step_lr: float, n_steps_each: int, denoise: bool = False,
                              callback: Callback | None = None, generator: torch.Generator | None = None,
                              progress: bool = False) -> torch.Tensor:
    """Inpainting by annealed Langevin dynamics (Song & Ermon 2019, Algorithm 2).

    ``mask`` is 1 where ``known`` holds observed values (broadcastable to ``x``). At each level i
    a fresh perturbation y_i = known + sigma_i z of the observation is drawn and the known
    entries are set to it, then T steps of annealed Langevin (as in :func:`annealed_langevin`)
    update the whole tensor, after each of which the known entries are reset to y_i: the
    unknown entries thus sample p_{sigma_i}(unknown | known perturbed at sigma_i). The result
    (after the optional denoising step on the unknown entries) holds ``known`` exactly where
    ``mask`` is 1.
    """
    levels = _levels(sigmas)
    step_lr = _check_positive("step_lr", step_lr)
    n_steps_each = _check_steps("n_steps_each", n_steps_each)
    if known.shape != x.shape:
        raise ValueError(f"known has shape {tuple(known.shape)}, expected that of x {tuple(x.shape)}")
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to x's {tuple(x.shape)}") from None
    score = _bound_score(score_fn)
    with torch.no_grad():
        known = known.to(dtype=x.dtype, device=x.device)
        is_known = (mask.to(device=x.device) > 0.5).expand(x.shape)
        x = torch.where(is_known, known, x.detach())
        observed = torch.empty_like(x)

        def perturb_known(x_now, sigma):
            torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device, out=observed)
            observed.mul_(sigma).add_(known)
            torch.where(is_known, observed, x_now, out=x_now)

        def reset_known(x_now):
            torch.where(is_known, observed, x_now, out=x_now)

        last = _annealed_steps(score, x, levels, step_lr, n_steps_each, callback, generator, progress,
                               "inpaint", before_level=perturb_known, after_step=reset_known)
        if denoise:
            x.add_(score(x, last), alpha=levels[-1] ** 2)
        x = torch.where(is_known, known, x)
    return x
