"""Noise levels: the geometric sequence of NCSN and the NCSNv2 rules for choosing it.

NCSN (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data
Distribution") perturbs data with L noise levels sigma_1 > ... > sigma_L forming a
geometric sequence. NCSNv2 (Song & Ermon 2020, "Improved Techniques for Training
Score-Based Generative Models") gives rules for its ends, its length and the sampler's
step size:

* Technique 1: sigma_1 = the maximum Euclidean distance between two training points
  (:func:`sigma_max_from_data`).
* Technique 2: a common ratio gamma = sigma_{i-1} / sigma_i with
  Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) ~= 0.5
  (:func:`ratio_for`, :func:`num_levels_for`).
* Technique 4: the step size making the paper's closed-form end-of-level variance closest to 1
  (:func:`end_variance_ratio`, :func:`step_size_for`). Step sizes here are the ``step_lr`` of
  :func:`ncsn.sampling.annealed_langevin` (NCSN's Algorithm 1, x <- x + alpha/2 s + sqrt(alpha) z);
  NCSNv2 writes x <- x + a s + sqrt(2a) z, so its eps is ``step_lr / 2``.
"""

from __future__ import annotations

import math

import torch


def geometric(sigma_begin: float, sigma_end: float, n: int, dtype: torch.dtype = torch.float32,
              device=None) -> torch.Tensor:
    r"""``n`` noise levels from ``sigma_begin`` down to ``sigma_end``, geometrically spaced.

    .. math:: \sigma_i = \sigma_\text{begin} \Big(\frac{\sigma_\text{end}}{\sigma_\text{begin}}\Big)^{(i - 1)/(n - 1)},
              \qquad i = 1..n

    (computed in float64, returned as ``dtype``). ``n = 1`` gives ``[sigma_begin]``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of noise levels must be a positive integer, got {n!r}")
    sigma_begin, sigma_end = float(sigma_begin), float(sigma_end)
    if not (math.isfinite(sigma_begin) and math.isfinite(sigma_end) and sigma_begin > 0 and sigma_end > 0):
        raise ValueError(f"noise levels must be finite and positive, got {sigma_begin} and {sigma_end}")
    if n > 1 and not sigma_begin > sigma_end:
        raise ValueError(f"sigma_begin ({sigma_begin}) must exceed sigma_end ({sigma_end})")
    if n == 1:
        return torch.tensor([sigma_begin], dtype=dtype, device=device)
    exponents = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    sigmas = sigma_begin * (sigma_end / sigma_begin) ** exponents
    return sigmas.to(dtype=dtype, device=device)


def karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0, dtype: torch.dtype = torch.float32,
           device=None) -> torch.Tensor:
    r"""``n`` noise levels from ``sigma_max`` down to ``sigma_min``, denser near the small end.

    Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models", eq. 5:

    .. math:: \sigma_i = \Big(\sigma_\max^{1/\rho} + \frac{i - 1}{n - 1}\big(\sigma_\min^{1/\rho}
              - \sigma_\max^{1/\rho}\big)\Big)^\rho, \qquad i = 1..n.

    ``rho = 1`` is uniform in sigma; rho -> infinity tends to :func:`geometric`; the paper's 7 spends
    the steps where the probability-flow ODE curves most. Computed in float64; no trailing zero
    (the samplers step from the last level to sigma = 0 themselves).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of noise levels must be a positive integer, got {n!r}")
    sigma_min, sigma_max, rho = float(sigma_min), float(sigma_max), float(rho)
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be finite and positive, got {rho}")
    if n == 1:
        return torch.tensor([sigma_max], dtype=dtype, device=device)
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact ends despite the power's rounding
    return sigmas.to(dtype=dtype, device=device)


SCHEDULES = ("trained", "geometric", "karras")


def sigma_max_from_data(x: torch.Tensor, chunk_size: int = 2048) -> float:
    """NCSNv2 Technique 1: sigma_1 = max_{i, j} ||x_i - x_j||_2 over the training set.

    ``x`` has shape ``(N, ...)``; each sample is flattened. The ``N x N`` distances are
    never held at once: blocks of ``chunk_size`` rows are compared (only blocks on or
    above the diagonal) through ||a||^2 + ||b||^2 - 2 a.b, and the distance of the
    farthest pair found is recomputed directly as ||x_i - x_j|| for accuracy. Memory
    is O(chunk_size^2 + N); works on the input's device (use a GPU for tens of
    thousands of images).
    """
    if x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"need at least two data points, got shape {tuple(x.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    flat = x.reshape(x.shape[0], -1)
    if not flat.is_floating_point():
        flat = flat.float()
    sq_norms = (flat * flat).sum(dim=1)
    n = flat.shape[0]
    block_max, block_arg, block_origin = [], [], []
    for start_i in range(0, n, chunk_size):
        a, a_sq = flat[start_i : start_i + chunk_size], sq_norms[start_i : start_i + chunk_size]
        for start_j in range(start_i, n, chunk_size):
            b, b_sq = flat[start_j : start_j + chunk_size], sq_norms[start_j : start_j + chunk_size]
            sq_dist = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
            value, index = sq_dist.reshape(-1).max(dim=0)
            block_max.append(value)
            block_arg.append(index)
            block_origin.append((start_i, start_j, b.shape[0]))
    best = int(torch.stack(block_max).argmax())  # the only host synchronisation
    start_i, start_j, width = block_origin[best]
    row, col = divmod(int(block_arg[best]), width)
    i, j = start_i + row, start_j + col
    return float(torch.linalg.vector_norm(flat[i].double() - flat[j].double()))


def overlap_probability(gamma: float, dim: int) -> float:
    """Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) (NCSNv2, Technique 2).

    For x ~ N(0, sigma_i^2 I) in D dimensions, ||x|| is approximately
    N(sigma_i sqrt(D), sigma_i^2 / 2); this is the probability that ||x|| falls in the
    shell sigma_{i-1} sqrt(D) +- 3 sigma_{i-1} / sqrt(2) where the previous level's
    samples concentrate, with gamma = sigma_{i-1} / sigma_i.
    """
    root = math.sqrt(2.0 * dim) * (gamma - 1.0)
    return _normal_cdf(root + 3.0 * gamma) - _normal_cdf(root - 3.0 * gamma)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def ratio_for(dim: int, target: float = 0.5) -> float:
    """The common ratio gamma > 1 with ``overlap_probability(gamma, dim) = target`` (NCSNv2, Technique 2).

    Solved by bracketing the first crossing above gamma = 1 and bisecting. The rule is
    a high-dimensional approximation: for D <= 4 the overlap never drops to 0.5 and a
    ValueError is raised.
    """
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not 0.0 < target < overlap_probability(1.0, dim):
        raise ValueError(f"target overlap must lie in (0, {overlap_probability(1.0, dim):.4f}), got {target}")
    low, step = 1.0, 1e-4
    high = low + step
    while overlap_probability(high, dim) > target:
        low, step = high, step * 2.0
        high = 1.0 + step
        if step > 1e6:
            raise ValueError(f"no noise ratio gives overlap {target} in {dim} dimensions; "
                             "Technique 2 is meant for high-dimensional data")
    for _ in range(200):
        mid = 0.5 * (low + high)
        if overlap_probability(mid, dim) > target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def num_levels_for(sigma_begin: float, sigma_end: float, dim: int, target: float = 0.5) -> int:
    """NCSNv2 Technique 2: the number of levels L of a geometric sequence sigma_begin -> sigma_end.

    L = ceil(log(sigma_begin / sigma_end) / log(gamma)) + 1 with gamma = ``ratio_for(dim, target)``,
    so the actual ratio (sigma_begin / sigma_end)^(1 / (L - 1)) is at most gamma and consecutive
    levels overlap by at least ``target``. (The paper's own configurations are a little
    longer: L = 232 for CIFAR-10 and 500 for CelebA 64x64, where this rule gives 220 and 473.)
    """
    if not (sigma_begin > sigma_end > 0):
        raise ValueError(f"need sigma_begin > sigma_end > 0, got {sigma_begin} and {sigma_end}")
    gamma = ratio_for(dim, target)
    return math.ceil(math.log(sigma_begin / sigma_end) / math.log(gamma) - 1e-9) + 1


def end_variance_ratio(step_lr: float, sigma_end: float, gamma: float, n_steps_each: int) -> float:
    """NCSNv2, Technique 4: s_T^2 / sigma_i^2, the variance after T annealed Langevin steps at level i.

    NCSNv2 writes its sampler as x <- x + a_i s + sqrt(2 a_i) z with a_i = eps sigma_i^2 / sigma_L^2,
    whereas :func:`ncsn.sampling.annealed_langevin` (NCSN's Algorithm 1) steps
    x <- x + alpha_i / 2 s + sqrt(alpha_i) z with alpha_i = step_lr sigma_i^2 / sigma_L^2: the same
    chain when eps = step_lr / 2. This function takes ``step_lr`` and evaluates the paper's

        s_T^2 / sigma_i^2 = (1 - eps/sigma_L^2)^(2T) (gamma^2 - 2 eps / (sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2))
                            + 2 eps / (sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2),

    the exact variance after T steps on data concentrated at a point (p_sigma_i = N(0, sigma_i^2 I))
    from a start of variance sigma_{i-1}^2 = gamma^2 sigma_i^2. It is the same at every level; 1 is ideal.
    """
    eps = 0.5 * step_lr
    var_end = sigma_end * sigma_end
    a = eps / var_end
    if not 0.0 < a < 1.0:
        raise ValueError(f"step_lr must lie in (0, 2 sigma_end^2) = (0, {2 * var_end:g}), got {step_lr}")
    stationary = 2.0 * eps / (var_end - var_end * (1.0 - a) ** 2)
    return (1.0 - a) ** (2 * n_steps_each) * (gamma * gamma - stationary) + stationary


def step_size_for(sigma_end: float, gamma: float, n_steps_each: int) -> float:
    """NCSNv2 Technique 4: the ``step_lr`` making :func:`end_variance_ratio` closest to 1.

    Returns the ``step_lr`` of :func:`ncsn.sampling.annealed_langevin` (NCSN convention); the
    paper's eps is half of it. The ratio exceeds 1 for every step size, so this minimises
    it: a log-spaced grid over eps / sigma_L^2 in (1e-8, 1), refined by golden-section search
    around the best grid point. With the paper's settings (sigma_L = 0.01, T = 5) the paper's
    eps = step_lr / 2 comes out as 6.2e-6 for CIFAR-10 (L = 232 from sigma_1 = 50) and 3.3e-6
    for CelebA 64x64 (L = 500 from 90), the values the paper uses.
    """
    if not (sigma_end > 0 and gamma > 1):
        raise ValueError(f"need sigma_end > 0 and gamma > 1, got {sigma_end} and {gamma}")
    if isinstance(n_steps_each, bool) or not isinstance(n_steps_each, int) or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be a positive integer, got {n_steps_each!r}")
    var_end = sigma_end * sigma_end

    def objective(log_a: float) -> float:  # a = eps / sigma_L^2 = step_lr / (2 sigma_L^2)
        return abs(end_variance_ratio(2.0 * math.exp(log_a) * var_end, sigma_end, gamma, n_steps_each) - 1.0)

    grid = [math.log(1e-8) + k * (math.log(1.0 - 1e-9) - math.log(1e-8)) / 2000 for k in range(2001)]
    best = min(range(len(grid)), key=lambda k: objective(grid[k]))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(100):
        c, d = high - golden * (high - low), low + golden * (high - low)
        if objective(c) < objective(d):
            high = d
        else:
            low = c
    return 2.0 * math.exp(0.5 * (low + high)) * var_end


BETA_SCHEDULES = ("linear", "cosine")


def ddpm_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, schedule: str = "linear",
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """DDPM's variances beta_1..beta_T of the forward steps q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

    * ``"linear"``: Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models",
      Section 4: beta_t rises linearly from ``beta_start`` = 1e-4 to ``beta_end`` = 0.02 over T = 1000.
    * ``"cosine"``: Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models",
      eq. 17: abar_t = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s) / (1 + s)), s = 0.008, and
      beta_t = 1 - abar_t / abar_{t-1} clipped to at most 0.999 (``beta_start``/``beta_end`` unused).

    Returned as a length-T tensor (float64 by default: the products abar_t = prod (1 - beta_s)
    reach 4e-5 and are better formed in double precision).
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(BETA_SCHEDULES)}, got {schedule!r}")
    if schedule == "linear":
        if not (0.0 < beta_start <= beta_end < 1.0):
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    else:
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    return betas.to(dtype)
