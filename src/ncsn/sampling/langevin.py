"""Langevin samplers: plain, annealed (NCSN's Algorithm 1), inpainting, consistent annealing."""

from __future__ import annotations

import math

import torch

from ncsn.sampling._common import (Callback, ProgressBar, bound_score, check_positive, check_steps, decreasing_levels,
                                   level_vectors, tweedie_denoise, without_sigma)
from ncsn.score import ScoreFn, needs_sigma, sigma_vector

def langevin(score_fn: ScoreFn, x: torch.Tensor, step_size: float, n_steps: int, noise: bool = True,
             generator: torch.Generator | None = None, sigma=None, callback: Callback | None = None) -> torch.Tensor:
    r"""Langevin dynamics, ``n_steps`` times:

    .. math:: x \leftarrow x + \delta\, s(x) + \sqrt{2\delta}\, z, \qquad z \sim \mathcal{N}(0, I),

    with :math:`\delta` = ``step_size``. In the NCSN paper's notation
    (:math:`x \leftarrow x + \frac{\epsilon}{2} \nabla_x \log p(x) + \sqrt{\epsilon}\, z`) step_size = eps/2.
    ``noise=False`` gives gradient ascent on log p. A noise-conditional score is evaluated at
    ``sigma`` (scalar or ``(N,)``), which is then required unless the function gives its sigma a
    default (``s(x, sigma=0.0)`` without ``sigma`` is called as ``s(x)``). ``callback(0, step, x)`` runs after
    each step (``x`` is the working tensor: clone it to keep it).
    """
    step_size = check_positive("step_size", step_size)
    n_steps = check_steps("n_steps", n_steps)
    if needs_sigma(score_fn, sigma):
        score, sigma_vec = score_fn, sigma_vector(sigma, x)
    else:  # unconditional, or its sigma is optional and none was given
        score, sigma_vec = without_sigma(score_fn), None
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
    sigma_vecs = level_vectors(levels, x)
    var_last = levels[-1] ** 2
    z = torch.empty_like(x)
    with ProgressBar(len(levels), desc, progress) as bar:
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
            bar.update()
    return sigma_vecs[-1]


def annealed_langevin(score_fn: ScoreFn, x: torch.Tensor, sigmas, step_lr: float, n_steps_each: int,
                      denoise: bool = False, callback: Callback | None = None,
                      generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level i = 1..L (``sigmas`` strictly decreasing), with
    :math:`\alpha_i = \epsilon\, \sigma_i^2 / \sigma_L^2` (:math:`\epsilon` = ``step_lr``), run
    ``n_steps_each`` (T) steps of

    .. math:: x \leftarrow x + \frac{\alpha_i}{2}\, s(x, \sigma_i) + \sqrt{\alpha_i}\, z, \qquad z \sim \mathcal{N}(0, I).

    ``denoise=True`` ends with the Tweedie step x + sigma_L^2 s(x, sigma_L) (Jolicoeur-Martineau et al.
    2021; also used by NCSNv2), which removes the last level's noise. ``callback(level, step, x)`` is
    called after each of the L*T steps with the working tensor (clone what you keep). ``progress``
    shows a bar over levels. The loop does no host synchronisation: step sizes and the per-level
    ``(N,)`` sigma vectors are computed once, and noise is drawn into one reused buffer.
    """
    levels = decreasing_levels(sigmas)
    step_lr = check_positive("step_lr", step_lr)
    n_steps_each = check_steps("n_steps_each", n_steps_each)
    score = bound_score(score_fn)
    with torch.no_grad():
        x = x.detach().clone()
        last = _annealed_steps(score, x, levels, step_lr, n_steps_each, callback, generator, progress, "annealed Langevin")
        if denoise:
            x = tweedie_denoise(score, x, last)
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
    levels = decreasing_levels(sigmas)
    step_lr = check_positive("step_lr", step_lr)
    n_steps_each = check_steps("n_steps_each", n_steps_each)
    if known.shape != x.shape:
        raise ValueError(f"known has shape {tuple(known.shape)}, expected that of x {tuple(x.shape)}")
    try:
        torch.broadcast_shapes(mask.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to x's {tuple(x.shape)}") from None
    score = bound_score(score_fn)
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
            x = tweedie_denoise(score, x, last)
        x = torch.where(is_known, known, x)
    return x


def consistent_eta_range(sigmas) -> tuple[float, float]:
    """The ``eta`` of :func:`consistent_annealing` that keep every level consistent: [1 - min sigma_{i+1}/sigma_i, 1]."""
    return _eta_range(decreasing_levels(sigmas))


def _eta_range(levels: list[float]) -> tuple[float, float]:
    ratios = [b / a for a, b in zip(levels, levels[1:])] or [1.0]
    return 1.0 - min(ratios), 1.0


def ancestral_etas(sigmas) -> list[float]:
    """eta_i = 1 - (sigma_{i+1} / sigma_i)^2: per level, the ``eta`` whose fresh noise matches DDPM's ancestral step."""
    levels = decreasing_levels(sigmas)
    return [1.0 - (b / a) ** 2 for a, b in zip(levels, levels[1:])]


def consistent_annealing(score_fn: ScoreFn, x: torch.Tensor, sigmas, eta: float | None = None, denoise: bool = True,
                         callback: Callback | None = None, generator: torch.Generator | None = None,
                         progress: bool = False) -> torch.Tensor:
    r"""Consistent annealed sampling (Jolicoeur-Martineau et al. 2021, "Adversarial Score Matching and
    Improved Sampling for Image Generation", Algorithm 2).

    Annealed Langevin dynamics (Algorithm 1) takes many steps at each level and still ends a level
    with more or less noise than the next level's sigma, which the network then sees wrongly. CAS
    takes one step per level and keeps the noise on schedule: if x = x0 + sigma_i z, the step
    eta sigma_i^2 s(x, sigma_i) ~ -eta sigma_i z removes a fraction eta of the noise, and fresh noise
    of the size that brings it back to sigma_{i+1} is added:

    .. math:: x \leftarrow x + \eta_i \sigma_i^2\, s(x, \sigma_i) + \beta_i \sigma_{i+1} z, \qquad
              \beta_i = \sqrt{1 - (1 - \eta_i)^2 \sigma_i^2 / \sigma_{i+1}^2}

    for i = 1..L-1 (the paper's eta is epsilon / sigma_L^2 with a constant ratio sigma_i / sigma_{i+1}).
    ``eta`` must lie in :func:`consistent_eta_range`. Its lower end adds no noise: CAS is then DDIM's
    deterministic step, which in the VE form is Euler's step of the probability-flow ODE. 1 is a
    full Tweedie step followed by fresh noise. The step moves x towards E[x0 | x], not to x0, so
    the noise is only on schedule on average and large ``eta`` biases the result (on the paper's
    1/5 : 4/5 mixture, towards the heavier mode). A float ``eta`` is used at every level (the paper's
    constant). The default (``None``) takes each level's :func:`ancestral_etas`, with which CAS is
    exactly the ancestral step (DDPM's, in VE form; :func:`ncsn.sampling.predictor_corrector` with
    ``predictor="ancestral"``) on any levels, and converges as they get denser. ``denoise=True`` ends with Tweedie's step at sigma_L. Network
    evaluations: L - 1 (+1 with ``denoise``); use many levels (:func:`ncsn.sigmas.geometric`) with a
    network conditioned on a continuous level. ``callback(i, 0, x)`` runs after step i. No host
    synchronisation per step.
    """
    levels = decreasing_levels(sigmas)
    if eta is None:
        etas = ancestral_etas(levels)
    else:
        low, high = _eta_range(levels)
        if not (low - 1e-12 <= float(eta) <= high):
            raise ValueError(f"eta must lie in [{low:.4g}, 1] for these sigmas (so each level ends at the next "
                             f"sigma), got {eta}")
        etas = [float(eta)] * (len(levels) - 1)
    beta_sq = [1.0 - ((1.0 - e) * a / b) ** 2 for e, a, b in zip(etas, levels, levels[1:])]
    noise_scales = [math.sqrt(v) * b if v > 1e-12 else 0.0 for v, b in zip(beta_sq, levels[1:])]
    score = bound_score(score_fn)
    with torch.no_grad():
        x = x.detach().clone()
        z = torch.empty_like(x)
        vecs = level_vectors(levels, x)
        with ProgressBar(len(levels), "consistent annealing", progress) as bar:
            for i, noise_scale in enumerate(noise_scales):
                x.add_(score(x, vecs[i]), alpha=etas[i] * levels[i] ** 2)
                if noise_scale > 0:
                    x.add_(z.normal_(generator=generator), alpha=noise_scale)
                if callback is not None:
                    callback(i, 0, x)
                bar.update()
            if denoise:
                x = tweedie_denoise(score, x, vecs[-1])
            bar.update()
    return x
