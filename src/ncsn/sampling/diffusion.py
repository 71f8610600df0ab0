"""Samplers of the reverse diffusion: DDPM's ancestral sampler and score SDE's predictor-corrector."""

from __future__ import annotations

import torch

import math

from ncsn.sampling._common import (Callback, ProgressBar, bound_score, check_choice, check_positive, check_scales,
                                   check_steps, decreasing_levels, level_vectors)
from ncsn.score import ScoreFn

VARIANCES = ("beta", "posterior")


def ddpm_ancestral(eps_fn, x: torch.Tensor, betas, variance: str = "beta", clip_x0: float | None = None,
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   progress: bool = False) -> torch.Tensor:
    r"""DDPM's ancestral sampler (Ho, Jain & Abbeel 2020, Algorithm 2), from x_T = ``x`` to x_0.

    With alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s, for t = T-1, ..., 0 (zero-based):

    .. math:: x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,
              \epsilon_\theta(x_t, t)\Big) + \sigma_t z,

    with z ~ N(0, I) except at the last step (t = 0), which adds no noise. ``variance`` picks
    sigma_t^2 = beta_t (``"beta"``) or the posterior's beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    (``"posterior"``); Ho et al. found both similar. ``clip_x0=c`` instead forms the predicted
    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clips it to [-c, c] and takes the mean of
    q(x_{t-1} | x_t, x0) (equal to the mean above without clipping). ``eps_fn(x, t)`` gets ``t``
    as an ``(N,)`` long tensor of timesteps in [0, T). ``callback(k, 0, x)`` runs after reverse step
    k = 0..T-1 (timestep T-1-k). No host synchronisation per step: the coefficients are Python
    floats computed once.
    """
    check_choice("variance", variance, VARIANCES)
    betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    if betas.ndim != 1 or betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("betas must be a non-empty 1-D sequence of values in (0, 1)")
    if clip_x0 is not None:
        clip_x0 = check_positive("clip_x0", clip_x0)
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
        with ProgressBar(T, "DDPM", progress) as bar:
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


PREDICTORS = ("reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "none")


def predictor_corrector(score_fn: ScoreFn, x: torch.Tensor, sigmas, snr: float = 0.16, n_corrector: int = 1,
                        predictor: str = "reverse_diffusion", corrector: str = "langevin", denoise: bool = True,
                        scales=None, generator: torch.Generator | None = None, callback: Callback | None = None,
                        progress: bool = False) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Algorithms 2-5).

    Levels i = 1..L are Gaussian kernels N(a_i x0, s_i^2 I): ``sigmas`` holds the s_i (strictly
    decreasing) and ``scales`` the a_i (default all 1: NCSN's VE process; DDPM's VP process has
    a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t)); level L+1 is the data (a = 1, s = 0). The forward
    step from level i+1 to level i is x_i = r_i x_{i+1} + g_i z with

        r_i = a_i / a_{i+1},   g_i^2 = s_i^2 - r_i^2 s_{i+1}^2     (VE: r = 1, g^2 = sigma_i^2 - sigma_{i+1}^2;
                                                                VP: r = sqrt(1 - beta_t), g^2 = beta_t).

    At each level, ``n_corrector`` corrector steps, then one predictor step to level i+1:

    * ``corrector="langevin"`` (Algorithms 4, 5): with z ~ N(0, I) and the signal-to-noise rule
      eps = 2 r_i^2 (snr ||z|| / ||s(x, s_i)||)^2, x <- x + eps s(x, s_i) + sqrt(2 eps) z. As in the
      paper's code the norms are averaged over the batch: per sample, a point where the score
      nearly vanishes (a mode, in few dimensions) would get an unbounded step.
    * ``predictor="reverse_diffusion"`` (eq. 46-47): x <- (2 - r_i) x + g_i^2 s(x, s_i) + g_i z, the
      reverse SDE discretised like the forward one.
    * ``predictor="ancestral"``: x <- (x + g_i^2 s(x, s_i)) / r_i + g_i (s_{i+1} / s_i) z, the posterior
      q(x_{i+1} | x_i, x0) with x0 from Tweedie's formula (DDPM's sampler with beta~ for VP).
    * ``"none"`` skips the step (``predictor="none"``: annealed Langevin with the SNR rule).

    ``denoise=True`` (score_sde's ``noise_removal``) adds no noise in the last predictor step, whose
    mean is returned (for VE the Tweedie step x + s_L^2 s(x, s_L)); with ``predictor="none"`` it
    ends with Tweedie's step. Network evaluations: L (n_corrector + [predictor]) (+1 when only
    denoising). ``callback(level, step, x)`` runs after every update (corrector steps 0..n-1, then
    the predictor). No host synchronisation per step.
    """
    levels = decreasing_levels(sigmas)
    a = check_scales(scales, len(levels)) + [1.0]
    s = levels + [0.0]
    snr = check_positive("snr", snr)
    n_corrector = check_steps("n_corrector", n_corrector)
    check_choice("predictor", predictor, PREDICTORS)
    check_choice("corrector", corrector, CORRECTORS)
    if corrector == "none":
        n_corrector = 0
    score = bound_score(score_fn)
    L = len(levels)
    ratio = [a[i] / a[i + 1] for i in range(L)]
    g2 = [s[i] ** 2 - ratio[i] ** 2 * s[i + 1] ** 2 for i in range(L)]
    if any(v <= 0 for v in g2):
        raise ValueError("the levels' noise must grow with the level: s_i^2 > (a_i / a_{i+1})^2 s_{i+1}^2")
    step_factor = [2.0 * r * r * snr * snr for r in ratio]
    with torch.no_grad():
        x = x.detach().clone()
        z = torch.empty_like(x)
        vecs = level_vectors(levels, x)
        with ProgressBar(L, "predictor-corrector", progress) as bar:
            for i in range(L):
                for step in range(n_corrector):
                    grad = score(x, vecs[i])
                    z.normal_(generator=generator)
                    ratio_sq = (z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()).square()
                    eps = step_factor[i] * ratio_sq  # a 0-d tensor: no host synchronisation
                    x.add_(eps * grad).add_((2.0 * eps).sqrt() * z)
                    if callback is not None:
                        callback(i, step, x)
                last = i == L - 1
                if predictor != "none":
                    grad = score(x, vecs[i])
                    if predictor == "reverse_diffusion":
                        x = (2.0 - ratio[i]) * x + g2[i] * grad
                        noise_std = math.sqrt(g2[i])
                    else:
                        x = (x + g2[i] * grad) / ratio[i]
                        noise_std = math.sqrt(g2[i]) * s[i + 1] / s[i]
                    if noise_std > 0 and not (last and denoise):
                        x.add_(z.normal_(generator=generator), alpha=noise_std)
                    if callback is not None:
                        callback(i, n_corrector, x)
                elif last and denoise:
                    x = (x + s[i] ** 2 * score(x, vecs[i])) / a[i]
                bar.update()
    return x
