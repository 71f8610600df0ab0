"""Langevin samplers over a score function ``score_fn(x, sigma)`` (or ``score_fn(x)``).

* :func:`langevin`: plain (unadjusted) Langevin dynamics.
* :func:`annealed_langevin`: Song & Ermon (2019), "Generative Modeling by Estimating Gradients
  of the Data Distribution", Algorithm 1, with the optional final denoising step.
* :func:`annealed_langevin_inpaint`: the same paper's conditional sampler for inpainting
  (its inpainting experiments, Algorithm 2).
* :func:`ddpm_ancestral`: Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models",
  Algorithm 2, over a noise-prediction function ``eps_fn(x, t)``.
* :func:`tweedie_denoise`: E[x0 | x] = (x + s^2 grad log q(x)) / a for a kernel N(a x0, s^2 I).

All randomness comes from the optional ``generator`` (a ``torch.Generator`` on ``x``'s device),
so a run is reproducible. The samplers run under ``torch.no_grad()``; a score that needs
gradients itself (:class:`ncsn.energy.EnergyScore`) switches them on for its own derivative.
The input ``x`` is never modified; the returned tensor is new.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ncsn.score import ScoreFn, per_sample, sigma_vector, takes_sigma

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


class _Bar:
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


def _annealed_steps(score, x: torch.Tensor, levels: list[float], step_lr: float, n_steps_each: int,
                    callback, generator, progress: bool, desc: str, before_level=None, after_step=None):
    """The loop shared by the annealed samplers; ``x`` is updated in place."""
    n = x.shape[0]
    sigma_vecs = [torch.full((n,), s, dtype=x.dtype, device=x.device) for s in levels]
    var_last = levels[-1] ** 2
    z = torch.empty_like(x)
    with _Bar(len(levels), desc, progress) as bar:
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
            x = tweedie_denoise(score, x, last)
        x = torch.where(is_known, known, x)
    return x


def tweedie_denoise(score_fn: ScoreFn, x: torch.Tensor, sigma, scale=1.0) -> torch.Tensor:
    """Tweedie's formula: E[x0 | x] = (x + s^2 grad log q_s(x)) / a for x = a x0 + s z (Efron 2011).

    With a = 1 (NCSN's VE process) this is the final denoising step x + sigma_L^2 s(x, sigma_L)
    (Jolicoeur-Martineau et al. 2021; NCSNv2). ``sigma`` (s) and ``scale`` (a) are scalars or ``(N,)``.
    """
    with torch.no_grad():
        sigma_vec = sigma_vector(sigma, x)
        var = per_sample(sigma_vec, x).square()
        out = x + var * _bound_score(score_fn)(x, sigma_vec)
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            out = out / per_sample(sigma_vector(scale, x), x)
    return out


VARIANCES = ("beta", "posterior")


def ddpm_ancestral(eps_fn, x: torch.Tensor, betas, variance: str = "beta", clip_x0: float | None = None,
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   progress: bool = False) -> torch.Tensor:
    """DDPM's ancestral sampler (Ho, Jain & Abbeel 2020, Algorithm 2), from x_T = ``x`` to x_0.

    With alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s, for t = T-1, ..., 0 (zero-based):

        x_{t-1} = 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps(x_t, t)) + sigma_t z,

    with z ~ N(0, I) except at the last step (t = 0), which adds no noise. ``variance`` picks
    sigma_t^2 = beta_t (``"beta"``) or the posterior's beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    (``"posterior"``); Ho et al. found both similar. ``clip_x0=c`` instead forms the predicted
    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clips it to [-c, c] and takes the mean of
    q(x_{t-1} | x_t, x0) (equal to the mean above without clipping). ``eps_fn(x, t)`` gets ``t``
    as an ``(N,)`` long tensor of timesteps in [0, T). ``callback(k, 0, x)`` runs after reverse step
    k = 0..T-1 (timestep T-1-k). No host synchronisation per step: the coefficients are Python
    floats computed once.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(VARIANCES)}, got {variance!r}")
    betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    if betas.ndim != 1 or betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("betas must be a non-empty 1-D sequence of values in (0, 1)")
    if clip_x0 is not None:
        clip_x0 = _check_positive("clip_x0", clip_x0)
    alphas = 1.0 - betas
    abar = torch.cumprod(alphas, dim=0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    posterior_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    sigmas = (betas if variance == "beta" else posterior_var).sqrt().tolist()
    eps_coef = (betas / (1.0 - abar).sqrt()).tolist()
    inv_sqrt_alpha = alphas.rsqrt().tolist()
    # posterior mean of q(x_{t-1} | x_t, x0): c0 x0 + ct x_t (Ho et al. eq. 7)
    c0 = (betas * abar_prev.sqrt() / (1.0 - abar)).tolist()
    ct = ((1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar)).tolist()
    sqrt_abar, sqrt_1m_abar = abar.sqrt().tolist(), (1.0 - abar).sqrt().tolist()
    T = betas.shape[0]
    with torch.no_grad():
        x = x.detach().clone()
        z = torch.empty_like(x)
        steps = [torch.full((x.shape[0],), t, dtype=torch.long, device=x.device) for t in range(T)]
        with _Bar(T, "DDPM", progress) as bar:
            for k, t in enumerate(range(T - 1, -1, -1)):
                eps = eps_fn(x, steps[t]).to(x.dtype)
                if clip_x0 is None:
                    x = (x - eps_coef[t] * eps) * inv_sqrt_alpha[t]
                else:
                    x0 = ((x - sqrt_1m_abar[t] * eps) / sqrt_abar[t]).clamp_(-clip_x0, clip_x0)
                    x = c0[t] * x0 + ct[t] * x
                if t > 0:
                    x.add_(z.normal_(generator=generator), alpha=sigmas[t])
                if callback is not None:
                    callback(k, 0, x)
                bar.update()
    return x
