"""Likelihood evaluations of generative models.

* :func:`log_likelihood`: the exact log-density of a score model through its probability-flow
  ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Section 4.3 and
  Appendix D.2), with Hutchinson's trace estimator (Grathwohl et al. 2019, FFJORD).

And the variational bound of a denoising diffusion probabilistic model (Ho, Jain & Abbeel 2020,
"Denoising Diffusion Probabilistic Models", eq. 5 and Section 3.3), in nats and bits per dimension:

* :func:`discretized_gaussian_log_likelihood`: the discretised Gaussian decoder of the paper's
  eq. 13, for data scaled to [-1, 1] on a grid of K levels.
* :func:`gaussian_kl`: the KL divergence between two diagonal Gaussians.
* :func:`ddpm_vlb`: the bound L = L_T + sum_{t>1} L_{t-1} + L_0 of an epsilon-predicting model.

Timesteps are zero-based, t = 0..T-1, with ``betas[t]`` the variance of the forward step
that produces x_{t+1} in the paper's one-based notation: the paper's beta_1 is ``betas[0]``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_VARIANCES = ("beta", "posterior")
PROBES = ("rademacher", "gaussian")
TRACES = ("auto", "exact", "hutchinson")
#: ``trace="auto"`` computes the divergence exactly (D backward passes) up to this many dimensions
EXACT_TRACE_MAX_DIM = 8
_LN2 = math.log(2.0)


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate at both ends (Maechler's switch at -ln 2)."""
    return torch.where(a > -_LN2, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _log_ndtr_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo <= hi, without cancellation.

    When the interval lies mostly right of zero, Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi) is
    used instead, so the larger of the two CDF values is never close to 1 while the
    difference is small. Then log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))).
    """
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    return log_b + _log1mexp(torch.clamp(log_a - log_b, max=0.0))


def discretized_gaussian_log_likelihood(x, mean, log_scale, bin_width: float) -> torch.Tensor:
    """Per-element log-probability of the bin around ``x`` under N(mean, exp(log_scale)^2).

    Ho et al. (2020), eq. 13: for data on a grid of K levels scaled to [-1, 1]
    (``bin_width`` = 2 / (K - 1); 8-bit images: K = 256, bin_width = 2/255),

        log p(x) = log( Phi((x + w/2 - mean) / sigma) - Phi((x - w/2 - mean) / sigma) ),

    with w = ``bin_width`` and sigma = exp(``log_scale``), except at the edges of the data
    range: the lowest level (x <= -1 + w/2) takes the whole lower tail, x - w/2 -> -inf,
    and the highest (x >= 1 - w/2) the whole upper tail, x + w/2 -> +inf; over the K grid
    levels the probabilities sum to 1.

    The arguments broadcast against each other. Computed in float64 with the stable
    log-CDF ``torch.special.log_ndtr``; an interior bin's log(Phi(b) - Phi(a)) is evaluated
    on the side of the mean where the two CDFs do not cancel, so a mean many standard
    deviations away still gives a finite (very negative) value. Returns float64.
    """
    bin_width = float(bin_width)
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be finite and positive, got {bin_width}")
    x, mean, log_scale = (torch.as_tensor(v, dtype=torch.float64) if not isinstance(v, torch.Tensor)
                          else v.to(torch.float64) for v in (x, mean, log_scale))
    x, mean, log_scale = torch.broadcast_tensors(x, mean, log_scale)
    inv_scale = torch.exp(-log_scale)
    half = 0.5 * bin_width
    lo = (x - half - mean) * inv_scale
    hi = (x + half - mean) * inv_scale
    lowest = x <= -1.0 + half
    highest = x >= 1.0 - half
    # Edge bins get finite dummy bounds in the interior formula and are overwritten below.
    interior = _log_ndtr_diff(torch.where(lowest | highest, torch.zeros_like(lo), lo),
                              torch.where(lowest | highest, torch.ones_like(hi), hi))
    out = torch.where(lowest, torch.special.log_ndtr(hi), interior)
    return torch.where(highest & ~lowest, torch.special.log_ndtr(-lo), out)


def gaussian_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats.

        KL = 1/2 [ logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1 ],

    the per-dimension term of the Gaussian KL divergences in the DDPM bound
    (Ho et al. 2020, eq. 5). Arguments broadcast; computed in the tensors' common floating dtype
    (Python numbers are converted to it; float64 when no argument is a floating tensor).
    """
    args = (mean1, logvar1, mean2, logvar2)
    tensors = [v for v in args if isinstance(v, torch.Tensor)]
    dtype = torch.float64
    if tensors:
        dtype = tensors[0].dtype
        for v in tensors[1:]:
            dtype = torch.promote_types(dtype, v.dtype)
        if not dtype.is_floating_point:
            dtype = torch.float64
    device = tensors[0].device if tensors else None
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(v, dtype=dtype, device=device) for v in args)
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _check_betas(betas) -> torch.Tensor:
    betas = torch.as_tensor(betas).detach()
    if not (betas.is_floating_point() or betas.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"betas must be real numbers, got dtype {betas.dtype}")
    betas = betas.to(device="cpu", dtype=torch.float64)
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    if not (torch.isfinite(betas).all() and (betas > 0).all() and (betas < 1).all()):
        raise ValueError("betas must all lie in the open interval (0, 1)")
    return betas


def ddpm_vlb(eps_fn: EpsFn, x0: torch.Tensor, betas, bin_width: float, variance: str = "beta",
             generator: torch.Generator | None = None, progress: bool = False,
             batch_timesteps: bool = False) -> dict:
    """The DDPM variational bound on -log p(x0), per sample, in nats and bits/dim.

    Ho et al. (2020), eq. 5, with the epsilon parameterisation of Section 3.2 and the
    discretised decoder of Section 3.3. With zero-based timesteps t = 0..T-1,
    alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s and
    q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I), where x0 is the data and x_t the sample
    after t + 1 forward steps (the paper's x_{t+1}):

    * prior: L_T = KL(q(x_{T-1} | x0) || N(0, I)) (no network evaluation);
    * for t = 1..T-1, with a fresh draw x_t ~ q(x_t | x0):
      L_{t} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), where the forward posterior is
      N(c0 x0 + ct x_t, beta_tilde_t I), c0 = beta_t sqrt(abar_{t-1}) / (1 - abar_t),
      ct = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t),
      beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t) (abar_{-1} = 1), and the model is
      N(mu_theta(x_t, t), sigma_t^2 I) with
      mu_theta(x_t, t) = (x_t - beta_t / sqrt(1 - abar_t) eps_fn(x_t, t)) / sqrt(alpha_t);
    * decoder: L_0 = -log p(x0 | x_1) with x_1 ~ N(sqrt(alpha_0) x0, beta_0 I), the draw of
      timestep 0 (one forward step; the paper's x_1), scored by the discretised Gaussian of
      :func:`discretized_gaussian_log_likelihood` at mean mu_theta(x_1, 0), variance beta_0
      and bins of ``bin_width``.

    ``variance`` fixes the reverse variances sigma_t^2 (Section 3.2): ``"beta"``
    (sigma_t^2 = beta_t) or ``"posterior"`` (sigma_t^2 = beta_tilde_t). For ``"posterior"``
    the decoder's beta_tilde_0 is 0, so the decoder uses beta_0 there too, the paper's
    sigma_1^2 = beta_1. (Ho et al.'s released code instead gives the decoder, in both
    cases, the next step's posterior variance beta_tilde_1 (about 0.55 beta_0 for the
    paper's linear schedule), and clips the predicted x0 to [-1, 1]; neither is done here.)

    Args:
        eps_fn: ``eps_fn(x, t)`` -> predicted noise shaped like ``x``; ``t`` is an
            ``(M,)`` long tensor of timesteps in [0, T) on ``x``'s device. It is called
            under ``torch.no_grad()`` with ``x`` in ``x0``'s dtype.
        x0: data, shape ``(N, ...)``, in [-1, 1] on the grid of spacing ``bin_width``.
        betas: the T forward variances, 1-D, each in (0, 1).
        bin_width: the grid spacing, 2 / (K - 1) for K levels (8-bit data: 2/255).
        variance: ``"beta"`` or ``"posterior"``.
        generator: a ``torch.Generator`` on ``x0``'s device for the forward-process draws;
            the draws are made for t = T-1 down to 0, one ``x0``-shaped draw each.
        progress: show a tqdm bar over the timesteps.
        batch_timesteps: evaluate the network once on all T-1 diffusion timesteps and
            the decoder step stacked along the batch axis (``T * N`` rows) instead of
            once per timestep. Same draws and result; for small models and data.

    Returns:
        a dict of float64 tensors of shape ``(N,)`` on ``x0``'s device: ``total``,
        ``prior`` (L_T), ``diffusion`` (sum of the KL terms L_1..L_{T-1}), ``decoder``
        (L_0), all in nats, and ``bpd`` = total / (D ln 2) with D the number of
        dimensions per sample; ``terms``, shape ``(N, T)``, the decoder term at index 0
        and the KL term of timestep t at index t; and ``nfe`` (int), the network
        evaluations per sample, T.
    """
    betas = _check_betas(betas)
    bin_width = float(bin_width)
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"bin_width must be finite and positive, got {bin_width}")
    if variance not in _VARIANCES:
        raise ValueError(f"variance must be one of {_VARIANCES}, got {variance!r}")
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise ValueError("x0 must be a floating-point tensor")
    if x0.ndim < 2 or x0.shape[0] < 1 or x0[0].numel() < 1:
        raise ValueError(f"x0 must have shape (N, ...) with N >= 1 and at least one dimension per sample, "
                         f"got {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 must be finite")
    if x0.abs().max().item() > 1.0 + 1e-6:
        raise ValueError(f"x0 must lie in [-1, 1], got values up to {x0.abs().max().item():.4g} in magnitude")

    device, model_dtype = x0.device, x0.dtype
    n, dims = x0.shape[0], x0[0].numel()
    T = betas.numel()
    f64 = dict(dtype=torch.float64, device=device)

    alphas = 1.0 - betas
    log_abar = torch.cumsum(torch.log1p(-betas), 0)
    abar = torch.exp(log_abar)
    one_minus_abar = -torch.expm1(log_abar)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    one_minus_abar_prev = torch.cat([torch.zeros(1, dtype=torch.float64), one_minus_abar[:-1]])
    post_var = betas * one_minus_abar_prev / one_minus_abar
    coef_x0 = betas * abar_prev.sqrt() / one_minus_abar
    coef_xt = one_minus_abar_prev * alphas.sqrt() / one_minus_abar
    eps_coef = betas / one_minus_abar.sqrt()
    model_var = betas.clone() if variance == "beta" else torch.cat([betas[:1], post_var[1:]])
    # Per-timestep constants as Python floats (cheap to use in the loop on any device).
    c = {k: v.tolist() for k, v in dict(sqrt_abar=abar.sqrt(), sqrt_1m_abar=one_minus_abar.sqrt(),
                                          sqrt_alpha=alphas.sqrt(), eps_coef=eps_coef, coef_x0=coef_x0,
                                          coef_xt=coef_xt, log_post_var=post_var.clamp_min(1e-300).log(),
                                          log_model_var=model_var.log()).items()}

    with torch.no_grad():
        x0d = x0.detach().to(torch.float64)
        prior = gaussian_kl(math.sqrt(abar[-1].item()) * x0d, math.log(one_minus_abar[-1].item()),
                            0.0, 0.0).reshape(n, -1).sum(1)

        def eps_of(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            eps = eps_fn(x_t.to(model_dtype), t)
            if not isinstance(eps, torch.Tensor) or eps.shape != x_t.shape:
                raise ValueError(f"eps_fn must return a tensor shaped like its input {tuple(x_t.shape)}, "
                                 f"got {tuple(getattr(eps, 'shape', ()))}")
            return eps.detach().to(torch.float64)

        def term(t: int, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            mean = (x_t - c["eps_coef"][t] * eps) / c["sqrt_alpha"][t]
            if t == 0:
                ll = discretized_gaussian_log_likelihood(x0d, mean, 0.5 * c["log_model_var"][0], bin_width)
                return -ll.reshape(n, -1).sum(1)
            q_mean = c["coef_x0"][t] * x0d + c["coef_xt"][t] * x_t
            kl = gaussian_kl(q_mean, c["log_post_var"][t], mean, c["log_model_var"][t])
            return kl.reshape(n, -1).sum(1)

        def draw(t: int) -> torch.Tensor:
            noise = torch.randn(x0.shape, generator=generator, **f64)
            return c["sqrt_abar"][t] * x0d + c["sqrt_1m_abar"][t] * noise

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=T, desc="DDPM bound", unit="step", dynamic_ncols=True)
        terms = torch.empty(n, T, **f64)
        try:
            steps = range(T - 1, -1, -1)
            if batch_timesteps:
                xs = torch.stack([draw(t) for t in steps])  # (T, N, ...), row i is timestep T-1-i
                ts = torch.arange(T - 1, -1, -1, device=device).repeat_interleave(n)
                eps_all = eps_of(xs.reshape(T * n, *x0.shape[1:]), ts).reshape(xs.shape)
                for i, t in enumerate(steps):
                    terms[:, t] = term(t, xs[i], eps_all[i])
                if bar is not None:
                    bar.update(T)
            else:
                for t in steps:
                    x_t = draw(t)
                    eps = eps_of(x_t, torch.full((n,), t, dtype=torch.long, device=device))
                    terms[:, t] = term(t, x_t, eps)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    decoder = terms[:, 0].clone()
    diffusion = terms[:, 1:].sum(1)
    total = prior + diffusion + decoder
    return {"total": total, "prior": prior, "diffusion": diffusion, "decoder": decoder,
            "bpd": total / (dims * _LN2), "terms": terms, "nfe": T}


def _divergence_fn(score, probes: torch.Tensor | None):
    """``(x, sigma) -> (s(x, sigma), tr grad_x s)``: exact (``probes`` None) or Hutchinson's (1/K) sum_k e_k^T J e_k."""

    def divergence(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = score(x, sigma)
            flat = out.reshape(out.shape[0], -1)
            if probes is None:  # exact: one backward pass per dimension
                rows = []
                for j in range(flat.shape[1]):
                    (g,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=True)
                    rows.append(g.reshape(g.shape[0], -1)[:, j])
                trace = torch.stack(rows, 1).sum(1)
            else:
                trace = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
                for k, probe in enumerate(probes):
                    (g,) = torch.autograd.grad(out, x, probe, retain_graph=k < len(probes) - 1)
                    trace = trace + (g * probe).reshape(x.shape[0], -1).sum(1).double()
                trace = trace / len(probes)
        return out.detach(), trace.double()

    return divergence


def log_likelihood(score_fn, x: torch.Tensor, sigma_min: float, sigma_max: float, n_probes: int = 1,
                   rtol: float = 1e-5, atol: float = 1e-5, generator: torch.Generator | None = None,
                   probe: str = "rademacher", trace: str = "auto", prior_std: float | None = None
                   ) -> tuple[torch.Tensor, int]:
    r"""log p_{sigma_min}(x) per sample (nats, float64 ``(N,)``) through the probability-flow ODE, and the NFE spent.

    For the VE process (x = x0 + sigma z) the probability flow dx/dsigma = -sigma s(x, sigma) carries
    p_{sigma_min} to p_{sigma_max} ~ N(0, prior_std^2 I), and by the instantaneous change of variables
    (Chen et al. 2018, "Neural ODEs", Theorem 1)

    .. math:: \log p_{\sigma_\min}(x) = \log \mathcal{N}(x(\sigma_\max); 0, \sigma_p^2 I)
              + \int_{\sigma_\min}^{\sigma_\max} \sigma\, \operatorname{tr}\big(\nabla_x s(x(\sigma), \sigma)\big)\, d\sigma

    (:math:`\sigma_p` = ``prior_std``; :math:`\nabla\cdot` of the drift :math:`-\sigma s` integrated from
    :math:`\sigma_\max` down to :math:`\sigma_\min`).

    The ODE is solved in t = ln sigma (dx/dt = -sigma^2 s) with the adaptive Dormand-Prince method
    (:func:`ncsn.solvers.dormand_prince`, ``rtol``, ``atol``). The trace is exact (D backward passes)
    with ``trace="exact"``, or for ``"auto"`` when D <= :data:`EXACT_TRACE_MAX_DIM`; otherwise it is
    Hutchinson's unbiased estimate with ``n_probes`` fixed ``probe`` vectors (Rademacher or Gaussian,
    drawn once from ``generator``, as FFJORD). ``prior_std`` defaults to ``sigma_max`` (VE); for a VP
    model use :func:`ncsn.processes.ve_view` and prior_std = 1 / a_T = sqrt(1 + sigma~_max^2).
    The NFE counts forward evaluations of the score (each with its backward passes). The batch
    shares one step size, and nothing is exchanged between processes, so ranks of a torchrun job
    can each evaluate their own examples.
    """
    from ncsn.sampling._common import bound_score, check_choice
    from ncsn.solvers import dormand_prince

    check_choice("probe", probe, PROBES)
    check_choice("trace", trace, TRACES)
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    prior_std = sigma_max if prior_std is None else float(prior_std)
    score = bound_score(score_fn)
    x = x.detach()
    n, dim = x.shape[0], x[0].numel()
    exact = trace == "exact" or (trace == "auto" and dim <= EXACT_TRACE_MAX_DIM)
    probes = None
    if not exact:
        probes = torch.randn((n_probes, *x.shape), generator=generator, dtype=x.dtype, device=x.device)
        if probe == "rademacher":
            probes = probes.sign_()
            probes[probes == 0] = 1.0
    divergence = _divergence_fn(score, probes)

    def flow(t: float, state):
        y, _ = state
        sigma = math.exp(t)
        s, tr = divergence(y, torch.full((n,), sigma, dtype=y.dtype, device=y.device))
        return -sigma * sigma * s, -sigma * sigma * tr

    start = (x.clone(), torch.zeros(n, dtype=torch.float64, device=x.device))
    (x_end, delta), nfe = dormand_prince(flow, math.log(sigma_min), math.log(sigma_max), start, rtol=rtol, atol=atol)
    flat = x_end.reshape(n, -1).double()
    prior = -0.5 * dim * math.log(2 * math.pi * prior_std**2) - 0.5 * flat.square().sum(1) / prior_std**2
    return prior + delta, nfe
