"""Sample-quality metrics for low-dimensional (toy) data, computed in float64.

Inputs are ``(N, D)`` numpy arrays or torch tensors (any device, any float dtype):

* :func:`mmd` -- unbiased squared maximum mean discrepancy with a sum of RBF kernels
  (Gretton et al. 2012, "A Kernel Two-Sample Test", Eq. 3);
* :func:`sliced_wasserstein` -- the sliced 2-Wasserstein distance (Rabin et al. 2011,
  "Wasserstein Barycenter and its Application to Texture Mixing"; Bonneel et al. 2015);
* :func:`mode_weights` -- the fraction of samples nearest each mode of a mixture
  (the statistic of Song & Ermon 2019, Section 3.2 / Figure 3);
* :func:`avg_log_likelihood` -- the mean log density of samples under a known density.

Bad input raises :class:`ncsn.metrics.MetricInputError` (a ValueError) with a one-line message.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ncsn.metrics.maths import MetricInputError

DEFAULT_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _as_float64(x, name: str) -> torch.Tensor:
    """``x`` as a CPU float64 ``(N, D)`` tensor (detached), with a clear error otherwise."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x.detach())
    t = t.to(device="cpu", dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise MetricInputError(f"{name} must have shape (N, D) with N, D >= 1, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise MetricInputError(f"{name} contains non-finite values")
    return t


def _kernel_sum(a: torch.Tensor, b: torch.Tensor | None, bandwidths: tuple[float, ...], chunk: int) -> float:
    """sum_{i, j} sum_h exp(-||a_i - b_j||^2 / (2 h^2)) in ``chunk`` x ``chunk`` blocks; ``b=None`` means
    ``b = a``, for which only the blocks on and above the diagonal are computed (the sum is symmetric)."""
    symmetric = b is None
    b = a if symmetric else b
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        for j in range(i if symmetric else 0, b.shape[0], chunk):
            sq = torch.cdist(a[i:i + chunk], b[j:j + chunk]).square_()
            buf = torch.empty_like(sq)
            block = 0.0
            for h in bandwidths:
                torch.mul(sq, -0.5 / (h * h), out=buf)
                block += float(buf.exp_().sum())
            total += block if not symmetric or i == j else 2.0 * block
    return total


def mmd(x, y, bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS, chunk: int = 1024) -> float:
    """Unbiased squared MMD between samples ``x`` (m, D) and ``y`` (n, D) (Gretton et al. 2012, Eq. 3):

        MMD_u^2 = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(mn) sum_{i, j} k(x_i, y_j),

    with k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2)) over ``bandwidths`` h, in the data's units.
    The default h = 1/4, 1/2, 1, 2, 4 spans the scales of the 2-D toys, whose supports lie
    within about [-8, 8]^2 with structure down to a width of about 0.25, so both misplaced mass
    and blurred detail register. Its expectation is 0 when x and y come from the same distribution
    (it can then be slightly negative). Pairwise distances are computed in ``chunk`` x ``chunk``
    blocks (memory O(chunk^2)); the cost is O((m + n)^2 D) plus one exponential per pair and bandwidth.
    """
    x, y = _as_float64(x, "x"), _as_float64(y, "y")
    if x.shape[1] != y.shape[1]:
        raise MetricInputError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise MetricInputError(f"the unbiased MMD needs at least two samples in each set, got {m} and {n}")
    bandwidths = tuple(float(h) for h in bandwidths)
    if not bandwidths or not all(math.isfinite(h) and h > 0 for h in bandwidths):
        raise MetricInputError(f"bandwidths must be a non-empty sequence of positive numbers, got {bandwidths}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise MetricInputError(f"chunk must be a positive integer, got {chunk!r}")
    diag = len(bandwidths)  # k(a, a) = one per bandwidth
    kxx = (_kernel_sum(x, None, bandwidths, chunk) - diag * m) / (m * (m - 1))
    kyy = (_kernel_sum(y, None, bandwidths, chunk) - diag * n) / (n * (n - 1))
    kxy = _kernel_sum(x, y, bandwidths, chunk) / (m * n)
    return kxx + kyy - 2.0 * kxy


def _quantiles(sorted_values: torch.Tensor, n: int) -> torch.Tensor:
    """The empirical quantile function of each row (sorted, length m) at the levels (k + 1/2)/n, k < n,
    by linear interpolation between the order statistics placed at (i + 1/2)/m."""
    m = sorted_values.shape[1]
    if m == n:
        return sorted_values
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) * (m / n) - 0.5).clamp(0, m - 1)
    low = pos.floor().long()
    high = (low + 1).clamp(max=m - 1)
    frac = pos - low
    return sorted_values[:, low] * (1 - frac) + sorted_values[:, high] * frac


def sliced_wasserstein(x, y, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between samples ``x`` (m, D) and ``y`` (n, D):

        SW_2(x, y) = ( E_theta W_2^2(theta^T x, theta^T y) )^(1/2),   theta ~ Uniform(S^{D-1}),

    estimated with ``n_projections`` directions (normalised Gaussian draws from the CPU
    ``generator``). In one dimension W_2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du, computed from
    sorted projections: with m = n the i-th smallest of each are paired; otherwise both
    quantile functions are interpolated at max(m, n) levels. For a shift of a sample by a
    vector d, SW_2 = ||d|| / sqrt(D) (E (theta^T d)^2 = ||d||^2 / D); for D = 1, SW_2 = W_2.
    """
    x, y = _as_float64(x, "x"), _as_float64(y, "y")
    if x.shape[1] != y.shape[1]:
        raise MetricInputError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise MetricInputError(f"n_projections must be a positive integer, got {n_projections!r}")
    theta = torch.randn((n_projections, x.shape[1]), generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=1, keepdim=True)
    px = (theta @ x.T).sort(dim=1).values
    py = (theta @ y.T).sort(dim=1).values
    levels = max(px.shape[1], py.shape[1])
    diff = _quantiles(px, levels) - _quantiles(py, levels)
    return math.sqrt(float(diff.square().mean()))


def mode_weights(samples, means) -> np.ndarray:
    """Fraction of ``samples`` (N, D) whose nearest (Euclidean) mean is each row of ``means`` (K, D),
    in the order of ``means``; sums to 1. Ties go to the first such mean."""
    samples, means = _as_float64(samples, "samples"), _as_float64(means, "means")
    if samples.shape[1] != means.shape[1]:
        raise MetricInputError(f"samples and means must have the same dimension, got {samples.shape[1]} "
                         f"and {means.shape[1]}")
    nearest = torch.cdist(samples, means).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=means.shape[0]).to(torch.float64)
    return (counts / samples.shape[0]).numpy()


def avg_log_likelihood(samples, dist) -> float:
    """(1/N) sum_i log p(x_i) for ``samples`` (N, D) under ``dist``, an object with ``log_prob(x) -> (N,)``
    (e.g. :class:`ncsn.data.toy.GaussianMixture`), evaluated in float64. For samples of p itself this
    estimates -H(p), the negative differential entropy (-(D/2) log(2 pi e) for N(0, I))."""
    log_prob = getattr(dist, "log_prob", None)
    if log_prob is None:
        raise MetricInputError(f"{type(dist).__name__} has no log_prob: its log-likelihood is not available")
    samples = _as_float64(samples, "samples")
    return float(log_prob(samples).to(torch.float64).mean())
