r"""Score-matching objectives, each a scalar mean over the batch.

``score_fn`` is a score function ``s(x)`` or ``s(x, sigma)`` (see :mod:`ncsn.score`) on inputs
of any shape ``(N, ...)``; squared norms and traces run over all non-batch dimensions
(D = their product). Objectives without a noise level of their own take an optional
``sigma`` that is passed on to noise-conditional score functions.

* :func:`explicit_sm`: :math:`\tfrac12 \mathbb{E}\|s(x) - \nabla_x \log p(x)\|^2` (needs the true score).
* :func:`exact_sm` / :func:`exact_sm_loop`: Hyvarinen (2005), "Estimation of Non-Normalized
  Statistical Models by Score Matching":
  :math:`\mathbb{E}[\operatorname{tr}(\nabla_x s(x)) + \tfrac12 \|s(x)\|^2]`, equal to the
  explicit objective up to a constant.
* :func:`sliced_sm`: Song, Garg, Shi & Ermon (2019), "Sliced Score Matching: A Scalable
  Approach to Density and Score Estimation":
  :math:`\mathbb{E}_v \mathbb{E}_x[v^\top \nabla_x (v^\top s(x)) + \tfrac12 (v^\top s(x))^2]`.
* :func:`dsm`: Vincent (2011), "A Connection Between Score Matching and Denoising Autoencoders":
  :math:`\tfrac12 \mathbb{E}\|s(\tilde x) + (\tilde x - x) / \sigma^2\|^2`, :math:`\tilde x = x + \sigma z`.
* :func:`ncsn_loss`: Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the
  Data Distribution", Section 4.2: denoising score matching over L noise levels, weighted by
  :math:`\lambda(\sigma) = \sigma^2`.
* :func:`ddpm_loss`: Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models", eq. 14:
  :math:`L_\text{simple} = \mathbb{E}\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon, t)\|^2`.

The last two are one objective: with :math:`\epsilon = -s_i\, s` (:func:`ncsn.processes.score_to_eps`) the
:math:`\sigma^2`-weighted term :math:`\tfrac12\|s_i s + z\|^2` is :math:`\tfrac12\|z - \epsilon\|^2`, so
:func:`ncsn_loss` = D/2 x :func:`ddpm_loss` on the same kernel, levels and noise (D: dimensions per sample).

An energy-based model trains through all of them once wrapped in :class:`EnergyScore`.
"""

from __future__ import annotations

import torch

from ncsn.energy import EnergyScore
from ncsn.score import ScoreFn, call_score, per_sample, sigma_vector

__all__ = ["EnergyScore", "ddpm_loss", "dsm", "exact_sm", "exact_sm_loop", "explicit_sm", "ncsn_loss", "sliced_sm"]

PROJECTIONS = ("gaussian", "rademacher")
WEIGHTINGS = ("sigma2", "none")
_AUTO_CHUNK_ELEMENTS = 2**23  # default cap on chunk_size * N * D in exact_sm


def _sum_nonbatch(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N, ...) with N >= 1 and at least one feature dimension, "
                         f"got {tuple(x.shape)}")


def _score_at(score_fn: ScoreFn, x: torch.Tensor, sigma=None) -> torch.Tensor:
    out = call_score(score_fn, x, sigma)
    if out.shape != x.shape:
        raise ValueError(f"the score function returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return out


def explicit_sm(score_fn: ScoreFn, x: torch.Tensor, true_score, sigma=None) -> torch.Tensor:
    r"""Explicit score matching (Hyvarinen 2005):

    .. math:: J(\theta) = \tfrac12 \mathbb{E}_x \|s_\theta(x) - \nabla_x \log p(x)\|^2.

    ``true_score`` is a tensor of grad_x log p at ``x`` (same shape), or a callable giving it:
    called as ``true_score(x)``, or as a score function at level ``sigma`` when one is given.
    """
    _check_batch(x)
    s = _score_at(score_fn, x, sigma)
    if callable(true_score):
        target = true_score(x) if sigma is None else call_score(true_score, x, sigma)
    else:
        target = torch.as_tensor(true_score, dtype=s.dtype, device=s.device)
    if target.shape != x.shape:
        raise ValueError(f"true_score has shape {tuple(target.shape)}, expected {tuple(x.shape)}")
    return 0.5 * _sum_nonbatch((s - target.detach()).square()).mean()


def _score_with_input(score_fn: ScoreFn, x: torch.Tensor, sigma):
    """A fresh leaf copy of ``x`` that requires grad, and the score there (grad enabled)."""
    x_in = x.detach().requires_grad_(True)
    return x_in, _score_at(score_fn, x_in, sigma)


def exact_sm(score_fn: ScoreFn, x: torch.Tensor, sigma=None, chunk_size: int | None = None) -> torch.Tensor:
    r"""Score matching with the exact Jacobian trace (Hyvarinen 2005, Theorem 1):

    .. math:: J(\theta) = \mathbb{E}_x\big[\operatorname{tr}(\nabla_x s_\theta(x)) + \tfrac12 \|s_\theta(x)\|^2\big],

    which equals :func:`explicit_sm` minus a constant independent of the model. One forward
    pass, then the D vector-Jacobian products e_d^T grad_x s (d = 1..D) run as a single batched
    backward pass (``torch.func.vjp`` vectorised with ``torch.func.vmap`` over the unit vectors;
    entry d of product d is the trace's d-th term). ``chunk_size`` caps how many unit vectors are
    batched at once (memory grows with it); by default as many as keep the batched products
    within ``chunk_size * N * D <= 2^23`` elements, which is also faster on CPU than one huge
    batch. Differentiable in the model's parameters (the
    transforms compose with ordinary autograd), so the loss trains the model, energy models
    included. ``score_fn`` must be usable under ``torch.func`` (no in-place updates of module
    state such as batch-norm statistics); :func:`exact_sm_loop` has no such restriction.
    Assumes samples do not interact inside ``score_fn``, as does every score-matching objective.
    """
    _check_batch(x)
    from torch.func import vjp, vmap

    if sigma is not None:
        sigma = sigma_vector(sigma, x)
    n, dim = x.shape[0], x[0].numel()
    chunk = max(1, _AUTO_CHUNK_ELEMENTS // (n * dim)) if chunk_size is None else max(1, int(chunk_size))
    with torch.enable_grad():
        s, vjp_fn = vjp(lambda v: _score_at(score_fn, v, sigma), x.detach())
        trace = s.new_zeros(n)
        for start in range(0, dim, chunk):
            stop = min(start + chunk, dim)
            basis = torch.zeros((stop - start, dim), dtype=s.dtype, device=s.device)
            basis[:, start:stop].fill_diagonal_(1.0)
            # product k = e_{start+k}^T grad_x s for every sample: row start+k of each Jacobian
            cotangents = basis.unsqueeze(1).expand(stop - start, n, dim).reshape(stop - start, *x.shape)
            (rows,) = vmap(vjp_fn)(cotangents)
            rows = rows.reshape(stop - start, n, dim)
            trace = trace + torch.diagonal(rows[:, :, start:stop], dim1=0, dim2=2).sum(dim=1)
    return (trace + 0.5 * _sum_nonbatch(s.square())).mean()


def exact_sm_loop(score_fn: ScoreFn, x: torch.Tensor, sigma=None) -> torch.Tensor:
    """The same objective as :func:`exact_sm`, with the trace from one backward pass per dimension.

    tr(grad_x s) = sum_d d s_d / d x_d, each term from grad of sum_n s_{n,d}. A reference
    (D sequential passes); use :func:`exact_sm` for training.
    """
    _check_batch(x)
    with torch.enable_grad():
        x_in, s = _score_with_input(score_fn, x, sigma)
        n = x.shape[0]
        s_flat = s.reshape(n, -1)
        trace = s.new_zeros(n)
        for d in range(s_flat.shape[1]):
            (grad,) = torch.autograd.grad(s_flat[:, d].sum(), x_in, create_graph=True)
            trace = trace + grad.reshape(n, -1)[:, d]
    return (trace + 0.5 * _sum_nonbatch(s.square())).mean()


def _projections(shape, dist: str, like: torch.Tensor, generator) -> torch.Tensor:
    if dist == "gaussian":
        return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
    signs = torch.randint(0, 2, shape, generator=generator, device=like.device)
    return (2 * signs - 1).to(like.dtype)


def sliced_sm(score_fn: ScoreFn, x: torch.Tensor, n_projections: int = 1, dist: str = "gaussian",
              variance_reduced: bool = False, generator: torch.Generator | None = None, sigma=None) -> torch.Tensor:
    r"""Sliced score matching (Song et al. 2019):

    .. math:: J(\theta) = \mathbb{E}_v \mathbb{E}_x\big[v^\top \nabla_x (v^\top s_\theta(x))
              + \tfrac12 (v^\top s_\theta(x))^2\big],

    with ``n_projections`` vectors v per sample (each sample is repeated that many times).
    ``dist`` is ``"gaussian"`` (v ~ N(0, I)) or ``"rademacher"`` (uniform signs); both have
    E[v v^T] = I, so E_v[(v^T s)^2] = ||s||^2 and ``variance_reduced=True`` uses the
    variance-reduced form (SSM-VR) with 1/2 ||s(x)||^2 in place of 1/2 (v^T s)^2.
    Needs one extra backward pass (a Hessian-vector product for energy models), whatever D.
    """
    _check_batch(x)
    if dist not in PROJECTIONS:
        raise ValueError(f"dist must be one of {', '.join(PROJECTIONS)}, got {dist!r}")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
    x_rep = x.repeat_interleave(n_projections, dim=0) if n_projections > 1 else x
    if sigma is not None:
        sigma = sigma_vector(sigma, x)
        sigma = sigma.repeat_interleave(n_projections, dim=0) if n_projections > 1 else sigma
    with torch.enable_grad():
        x_in, s = _score_with_input(score_fn, x_rep, sigma)
        v = _projections(x_rep.shape, dist, s, generator)
        v_dot_s = _sum_nonbatch(v * s)
        (grad,) = torch.autograd.grad(v_dot_s.sum(), x_in, create_graph=True)
        first = _sum_nonbatch(grad * v)
    second = 0.5 * _sum_nonbatch(s.square()) if variance_reduced else 0.5 * v_dot_s.square()
    return (first + second).mean()


def dsm(score_fn: ScoreFn, x: torch.Tensor, sigma, generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None) -> torch.Tensor:
    r"""Denoising score matching (Vincent 2011, with a Gaussian kernel):

    .. math:: J(\theta) = \tfrac12 \mathbb{E}_{x, \tilde x}\Big\|s_\theta(\tilde x) + \frac{\tilde x - x}{\sigma^2}\Big\|^2,
              \qquad \tilde x = x + \sigma z,\ z \sim \mathcal{N}(0, I),

    computed as :math:`\tfrac12 \mathbb{E}\|s(\tilde x) + z / \sigma\|^2`. It equals explicit score matching on the
    smoothed density q_sigma = p * N(0, sigma^2 I) up to a constant. ``sigma`` is a scalar or
    an ``(N,)`` tensor; ``noise`` (z, shape of ``x``) may be given, otherwise it is drawn from
    ``generator``. Noise-conditional score functions receive ``sigma``.
    """
    _check_batch(x)
    sigma = sigma_vector(sigma, x)
    z = _noise_like(x, noise, generator)
    sigma_b = per_sample(sigma, x)
    s = _score_at(score_fn, x + sigma_b * z, sigma)
    return 0.5 * _sum_nonbatch((s.to(z.dtype) + z / sigma_b).square()).mean()


def _noise_like(x: torch.Tensor, noise, generator) -> torch.Tensor:
    if noise is None:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x.shape)}")
    return noise


def _levels_and_noise(x, table, table_name: str, levels_name: str, levels, noise, generator):
    """Each sample's level index into the 1-D ``table`` (drawn uniformly unless given), then its noise z."""
    if table.ndim != 1 or table.numel() == 0:
        raise ValueError(f"{table_name} must be a non-empty 1-D tensor, got shape {tuple(table.shape)}")
    n = x.shape[0]
    if levels is None:
        levels = torch.randint(0, table.shape[0], (n,), generator=generator, device=x.device)
    elif levels.shape != (n,):
        raise ValueError(f"{levels_name} must have shape ({n},), got {tuple(levels.shape)}")
    return levels, _noise_like(x, noise, generator)


def ncsn_loss(score_fn: ScoreFn, x: torch.Tensor, sigmas, weighting: str = "sigma2",
              generator: torch.Generator | None = None, levels: torch.Tensor | None = None,
              noise: torch.Tensor | None = None, scales=None) -> torch.Tensor:
    r"""NCSN's multi-scale denoising objective (Song & Ermon 2019, Section 4.2, eq. 5-6):

    .. math:: \mathcal{L}(\theta) = \frac1L \sum_{i=1}^L \lambda(\sigma_i)\, \tfrac12\,
              \mathbb{E}\Big\|s_\theta(\tilde x, \sigma_i) + \frac{\tilde x - x}{\sigma_i^2}\Big\|^2,

    estimated with one level i ~ U{1..L} per sample. ``weighting="sigma2"`` is the paper's
    lambda(sigma) = sigma^2, for which each term is 1/2 ||sigma s(x + sigma z, sigma) + z||^2
    (computed in that form); ``"none"`` is lambda = 1. ``score_fn(x, sigma)`` receives each
    sample's sigma as an ``(N,)`` tensor. ``levels`` (``(N,)`` indices into ``sigmas``) and
    ``noise`` (z) may be given, otherwise they are drawn from ``generator``, levels first.
    The loss is computed in at least float32 (e.g. under bf16 autocast).

    ``scales`` (``(L,)``, optional) are mean coefficients a_i of a kernel x~ = a_i x + sigma_i z
    (DDPM's sqrt(abar_t) with sigma_i = sqrt(1 - abar_t)); the target stays -z / sigma_i.
    """
    _check_batch(x)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    levels, z = _levels_and_noise(x, sigmas, "sigmas", "levels", levels, noise, generator)
    sigma = sigmas[levels]
    sigma_b = per_sample(sigma, x)
    mean = x if scales is None else per_sample(torch.as_tensor(scales, dtype=x.dtype, device=x.device)[levels], x) * x
    s = _score_at(score_fn, mean + sigma_b * z, sigma)
    s = s.to(torch.promote_types(s.dtype, torch.float32))
    if weighting == "sigma2":
        residual = sigma_b * s + z
    else:
        residual = s + z / sigma_b
    return 0.5 * _sum_nonbatch(residual.square()).mean()


def ddpm_loss(eps_fn, x0: torch.Tensor, alphas_bar, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    r"""DDPM's simplified objective (Ho et al. 2020, eq. 14, Algorithm 1):

    .. math:: L_\text{simple} = \mathbb{E}_{t \sim U\{0..T-1\},\, x_0,\, \epsilon \sim \mathcal{N}(0, I)}
              \big\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon, t)\big\|^2,

    the squared error averaged over the non-batch dimensions (as the paper's code), then over
    the batch. ``eps_fn(x, t)`` gets ``t`` as an ``(N,)`` long tensor; ``alphas_bar`` holds
    abar_0..abar_{T-1}. ``t`` and ``noise`` may be given, otherwise they are drawn from
    ``generator``, ``t`` first. Computed in at least float32.
    """
    _check_batch(x0)
    abar = torch.as_tensor(alphas_bar, device=x0.device)
    t, z = _levels_and_noise(x0, abar, "alphas_bar", "t", t, noise, generator)
    n = x0.shape[0]
    a = per_sample(abar[t].to(x0.dtype), x0)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * z
    eps = eps_fn(x_t, t)
    if eps.shape != x0.shape:
        raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for input {tuple(x0.shape)}")
    eps = eps.to(torch.promote_types(eps.dtype, torch.float32))
    return (eps - z).square().reshape(n, -1).mean(dim=1).mean()
