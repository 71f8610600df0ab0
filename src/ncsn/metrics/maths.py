"""Sample-quality metrics on feature arrays: FID, Inception Score, KID, precision/recall, density/coverage.

Every function takes ``(N, D)`` arrays (numpy or torch, any float dtype) of features of
real and generated images, or ``(N, C)`` class probabilities for the Inception Score,
and computes in float64:

* :func:`fid` / :func:`fid_from_stats` -- Frechet Inception Distance (Heusel et al. 2017);
* :func:`inception_score` -- Inception Score (Salimans et al. 2016);
* :func:`kid` -- Kernel Inception Distance (Binkowski et al. 2018);
* :func:`precision_recall` -- improved precision and recall (Kynkaanniemi et al. 2019);
* :func:`density_coverage` -- density and coverage (Naeem et al. 2020).

The FID algebra is done with numpy on the ``(D, D)`` covariances. The pairwise-distance
work of KID and the k-NN metrics runs in torch on ``device`` (default: the input tensor's
device, else CPU) in blocks of ``chunk`` x ``chunk`` rows, so 50k x 50k sets of 2048-d
features need O(chunk^2 + N D) memory, never O(N^2).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ncsn.errors import UserError

DEFAULT_CHUNK = 2048


class MetricInputError(UserError, ValueError):
    """Features, probabilities or statistics a metric cannot be computed from (one-line message)."""


# ----------------------------------------------------------------------------------------------
# input handling


def _eps_of(x) -> float:
    """Machine epsilon of the precision ``x`` was given in (float64 for anything not a float array)."""
    dtype = x.dtype if isinstance(x, (np.ndarray, torch.Tensor)) else None
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.finfo(dtype).eps
    if isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    return float(np.finfo(np.float64).eps)


def _to_numpy64(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MetricInputError(f"{name} must be a numeric array ({err})") from None


def _check_features(x: np.ndarray | torch.Tensor, name: str, min_rows: int = 1) -> None:
    if x.ndim != 2:
        raise MetricInputError(f"{name} must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise MetricInputError(f"{name} needs at least {min_rows} row(s) of dimension >= 1, got shape {tuple(x.shape)}")
    finite = torch.isfinite(x).all() if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not bool(finite):
        raise MetricInputError(f"{name} contains NaN or infinite values")


def _check_pair(a, b, names=("real", "fake")) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(f"{names[0]} and {names[1]} features differ in dimension: {a.shape[1]} vs {b.shape[1]}")


def _features_tensor(x, name: str, device, dtype: torch.dtype, min_rows: int = 1) -> torch.Tensor:
    """``x`` as a 2-D finite tensor on ``device`` (default: ``x``'s own device, else CPU) in ``dtype``."""
    if dtype not in (torch.float64, torch.float32):
        raise MetricInputError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    if isinstance(x, np.ndarray) and x.dtype in (np.float32, np.float64):
        x = torch.from_numpy(x)  # no float64 copy of float32 features computed in float32
    elif not isinstance(x, torch.Tensor):
        x = torch.from_numpy(_to_numpy64(x, name))
    if device is None:
        device = x.device
    x = x.detach().to(device=device, dtype=dtype)
    _check_features(x, name, min_rows)
    return x


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MetricInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# Frechet Inception Distance


def feature_stats(feats, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``mu`` (D,) and unbiased covariance ``sigma`` (D, D) of ``feats`` (N, D), in float64.

    ``sigma = sum_i (x_i - mu)(x_i - mu)^T / (N - 1)``, accumulated over blocks of ``chunk``
    rows so that only one block is ever converted to float64 at a time.
    """
    _check_positive_int(chunk, "chunk")
    if not isinstance(feats, (np.ndarray, torch.Tensor)):
        feats = _to_numpy64(feats, "features")
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise MetricInputError(f"features must be a 2-D (N, D) array with N >= 2 to estimate a covariance, "
                               f"got shape {tuple(feats.shape)}")
    n, d = feats.shape
    total = np.zeros(d)
    for start in range(0, n, chunk):
        block = _to_numpy64(feats[start:start + chunk], "features")
        if not np.isfinite(block).all():
            raise MetricInputError("features contain NaN or infinite values")
        total += block.sum(axis=0)
    mu = total / n
    scatter = np.zeros((d, d))
    for start in range(0, n, chunk):
        block = _to_numpy64(feats[start:start + chunk], "features") - mu
        scatter += block.T @ block
    sigma = scatter / (n - 1)
    return mu, (sigma + sigma.T) / 2


def _psd_sqrt(sigma: np.ndarray, name: str, eps: float) -> np.ndarray:
    """Symmetric square root of a covariance, after checking it is one (symmetric, PSD, finite).

    Eigenvalues above ``-tol`` are accepted as rounding and clipped to 0, with
    ``tol = max(1e-10, 10 sqrt(D) eps) * max|eigenvalue|``, ``eps`` the precision ``sigma``
    was given in (the rounding of a stored matrix moves its eigenvalues by at most
    ``sqrt(D) eps ||sigma|| / 2``).
    """
    d = sigma.shape[0]
    rel = max(1e-10, 10 * math.sqrt(d) * eps)
    scale = np.abs(sigma).max()
    asym = np.abs(sigma - sigma.T).max()
    if asym > rel * scale:
        raise MetricInputError(f"FID: {name} is not symmetric (max |S - S^T| = {asym:.3g}, max |S| = {scale:.3g}); "
                               f"it is not a covariance matrix")
    try:
        w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    except np.linalg.LinAlgError as err:
        raise MetricInputError(f"FID: eigendecomposition of {name} failed ({err})") from None
    top = np.abs(w).max(initial=0.0)
    if w.size and w.min() < -rel * top:
        raise MetricInputError(f"FID: {name} is not positive semi-definite (smallest eigenvalue {w.min():.3g}, "
                               f"largest {w.max():.3g}); it is not a covariance matrix")
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    r"""Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6).

    .. math:: \mathrm{FID} = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\big).

    The trace of the matrix square root is taken as the nuclear norm (sum of singular
    values) of ``S1^{1/2} S2^{1/2}``, with each ``S^{1/2}`` the symmetric square root from
    ``eigh``: the eigenvalues of ``S1 S2`` are those of
    ``S1^{1/2} S2 S1^{1/2} = (S1^{1/2} S2^{1/2})(S1^{1/2} S2^{1/2})^T``, i.e. the squared
    singular values. Unlike ``scipy.linalg.sqrtm`` of the non-symmetric product ``S1 S2``,
    this never produces complex parts, is exact for singular covariances (fewer samples
    than dimensions) and its error is ``O(eps ||S||)`` rather than ``O(sqrt(eps) ||S||)``
    in the small singular values, so no epsilon regularisation is needed. It fails only
    on inputs that are not covariances: a ``MetricInputError`` (a ``ValueError``) is raised
    for non-finite values, non-symmetric or indefinite (clearly negative eigenvalue)
    matrices, and mismatched shapes. A result below 0 by rounding is reported as 0.
    """
    eps = max(_eps_of(sigma1), _eps_of(sigma2))
    mu1, mu2 = _to_numpy64(mu1, "mu1"), _to_numpy64(mu2, "mu2")
    sigma1, sigma2 = _to_numpy64(sigma1, "sigma1"), _to_numpy64(sigma2, "sigma2")
    for mu, sigma, i in ((mu1, sigma1, 1), (mu2, sigma2, 2)):
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise MetricInputError(f"FID: mu{i} must have shape (D,) and sigma{i} shape (D, D), "
                                   f"got {mu.shape} and {sigma.shape}")
        for value, label in ((mu, f"mu{i}"), (sigma, f"sigma{i}")):
            if not np.isfinite(value).all():
                raise MetricInputError(f"FID: {label} contains NaN or infinite values (were the features finite?)")
    if mu1.shape != mu2.shape:
        raise MetricInputError(f"FID: statistics differ in dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
    root1 = _psd_sqrt(sigma1, "sigma1", eps)
    root2 = _psd_sqrt(sigma2, "sigma2", eps)
    try:
        tr_covmean = np.linalg.svd(root1 @ root2, compute_uv=False).sum()
    except np.linalg.LinAlgError as err:
        raise MetricInputError(f"FID: singular values of sqrt(sigma1) sqrt(sigma2) did not converge ({err})") from None
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    if not math.isfinite(value):
        raise MetricInputError(f"FID: result is not finite ({value}); the statistics overflow float64")
    return max(value, 0.0)


def fid(feats_a, feats_b) -> float:
    """FID between two feature sets (N, D) and (M, D): :func:`fid_from_stats` of their :func:`feature_stats`."""
    for x, name in ((feats_a, "feats_a"), (feats_b, "feats_b")):
        if getattr(x, "ndim", 2) != 2:
            raise MetricInputError(f"{name} must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if np.shape(feats_a)[1:] != np.shape(feats_b)[1:]:
        raise MetricInputError(f"feature dimensions differ: {np.shape(feats_a)[1]} vs {np.shape(feats_b)[1]}")
    return fid_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


def save_stats(path: str | os.PathLike, mu, sigma, /, **meta) -> Path:
    """Write ``mu`` (D,), ``sigma`` (D, D) (float64) and ``meta`` (as strings) to the ``.npz`` file ``path``.

    The file appears atomically (written to a temporary name, then renamed); ``path`` is
    used as given, without numpy's implicit ``.npz`` suffix.
    """
    mu, sigma = _to_numpy64(mu, "mu"), _to_numpy64(sigma, "sigma")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricInputError(f"stats must be mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    clash = {"mu", "sigma"} & set(meta)
    if clash:
        raise MetricInputError(f"metadata keys {sorted(clash)} are reserved for the statistics")
    from ncsn.atomic import write_npz

    return write_npz(path, mu=mu, sigma=sigma, **{k: np.array(str(v)) for k, v in meta.items()})


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """``(mu, sigma, meta)`` from a file written by :func:`save_stats` (meta values are strings)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise MetricInputError(f"{path}: no such statistics file") from None
    except (OSError, ValueError) as err:
        raise MetricInputError(f"{path}: not a readable .npz statistics file ({err})") from None
    if "mu" not in arrays or "sigma" not in arrays:
        raise MetricInputError(f"{path}: statistics file lacks 'mu' and/or 'sigma' (has {sorted(arrays)})")
    mu, sigma = arrays.pop("mu"), arrays.pop("sigma")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricInputError(f"{path}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    return mu, sigma, {k: str(v) for k, v in arrays.items()}


# ----------------------------------------------------------------------------------------------
# Inception Score


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    r"""Inception Score of class probabilities ``probs`` (N, C) (Salimans et al. 2016).

    .. math:: \mathrm{IS} = \exp\big(\mathbb{E}_x\, \mathrm{KL}(p(y \mid x) \,\|\, p(y))\big)

    with ``p(y)`` the mean of ``p(y|x)`` over the samples; computed on ``splits`` contiguous parts
    (sample ``i * N // splits`` up to ``(i + 1) * N // splits``, every sample used once) and returned
    as the mean and standard deviation (``ddof=0``) over the parts. ``0 log 0`` counts as 0.
    """
    p = _to_numpy64(probs, "probs")
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise MetricInputError(f"probs must be a 2-D (N, C) array, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise MetricInputError("probs contains NaN or infinite values")
    if p.min() < 0:
        raise MetricInputError(f"probs must be non-negative (found {p.min():.3g}); pass softmax outputs, not logits")
    sums = p.sum(axis=1)
    if np.abs(sums - 1).max() > 1e-3:
        raise MetricInputError(f"each row of probs must sum to 1 (found sums in [{sums.min():.4g}, {sums.max():.4g}]); "
                               f"pass softmax outputs, not logits")
    n = p.shape[0]
    splits = _check_positive_int(splits, "splits")
    if splits > n:
        raise MetricInputError(f"splits ({splits}) exceeds the number of samples ({n})")
    log_p = np.log(np.where(p > 0, p, 1.0))
    scores = []
    for i in range(splits):
        part, log_part = p[i * n // splits:(i + 1) * n // splits], log_p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0)
        log_marginal = np.log(np.where(marginal > 0, marginal, 1.0))
        kl = (part * (log_part - log_marginal)).sum(axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------
# Kernel Inception Distance


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``k(x, y) = (x . y / d + 1)^3`` for all pairs of rows (Binkowski et al. 2018, sec. 4)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two samples of equal size m under the cubic polynomial kernel.

    ``(sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2``
    (Gretton et al. 2012, eq. 3, as used for KID by Binkowski et al. 2018).
    """
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / (m * m)


def kid(feats_a, feats_b, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        generator: np.random.Generator | None = None, device=None) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std (``ddof=0``) of :func:`mmd2_unbiased`.

    Each of ``n_subsets`` draws takes ``subset_size`` rows of each set without replacement
    (clipped to the smaller set's size) using ``generator`` (default
    ``numpy.random.default_rng(seed)``), so the value does not depend on the device. The
    kernel sums run in float64 on ``device``. The estimate is unbiased: its mean is ~0
    for two samples of one distribution and can be slightly negative.
    """
    a = _features_tensor(feats_a, "feats_a", device, torch.float64, min_rows=2)
    b = _features_tensor(feats_b, "feats_b", a.device, torch.float64, min_rows=2)
    _check_pair(a, b, ("feats_a", "feats_b"))
    n_subsets = _check_positive_int(n_subsets, "n_subsets")
    m = min(_check_positive_int(subset_size, "subset_size", 2), a.shape[0], b.shape[0])
    rng = generator if generator is not None else np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        ia = torch.from_numpy(rng.choice(a.shape[0], m, replace=False)).to(a.device)
        ib = torch.from_numpy(rng.choice(b.shape[0], m, replace=False)).to(a.device)
        values.append(float(mmd2_unbiased(a[ia], b[ib])))
    return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------------------------
# k-NN manifold metrics


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def _squared_distances(x: torch.Tensor, x_sq: torch.Tensor, y: torch.Tensor, y_sq: torch.Tensor) -> torch.Tensor:
    """``||x_i - y_j||^2 = ||x_i||^2 + ||y_j||^2 - 2 x_i . y_j`` (one matrix product), clipped at 0."""
    return torch.addmm(y_sq[None, :], x, y.T, alpha=-2).add_(x_sq[:, None]).clamp_min_(0)


def _pair_blocks(x: torch.Tensor, y: torch.Tensor, chunk: int) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """``(rows, cols, D2[rows, cols])`` over ``chunk`` x ``chunk`` blocks of the squared distances x -> y."""
    x_sq, y_sq = (x * x).sum(1), (y * y).sum(1)
    for r0, r1 in _blocks(x.shape[0], chunk):
        for c0, c1 in _blocks(y.shape[0], chunk):
            yield slice(r0, r1), slice(c0, c1), _squared_distances(x[r0:r1], x_sq[r0:r1], y[c0:c1], y_sq[c0:c1])


def _knn_sq_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Squared distance from each row of ``x`` to its k-th nearest *other* row (running top-k over blocks)."""
    best = torch.full((x.shape[0], k), math.inf, dtype=x.dtype, device=x.device)
    for rows, cols, d2 in _pair_blocks(x, x, chunk):
        if rows == cols:
            d2.fill_diagonal_(math.inf)  # a point is not its own neighbour (a duplicate is, at distance 0)
        nearest = d2.topk(min(k, d2.shape[1]), dim=1, largest=False).values
        best[rows] = torch.cat([best[rows], nearest], dim=1).topk(k, dim=1, largest=False, sorted=True).values
    return best[:, k - 1]


def _prepare_sets(real, fake, k: int, chunk: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    k = _check_positive_int(k, "k")
    _check_positive_int(chunk, "chunk")
    r = _features_tensor(real, "real", device, dtype, min_rows=k + 1)
    f = _features_tensor(fake, "fake", r.device, dtype, min_rows=k + 1)
    _check_pair(r, f)
    # Distances do not change under a common shift; centring on the real mean keeps the
    # norms in ||x||^2 + ||y||^2 - 2 x.y small, hence its cancellation error.
    center = r.mean(0, dtype=torch.float64).to(dtype)
    return r - center, f - center


def knn_radii(feats, k: int = 3, chunk: int = DEFAULT_CHUNK, device=None, dtype=torch.float64) -> np.ndarray:
    """Distance from each row of ``feats`` (N, D) to its k-th nearest other row, as float64 numpy (N,)."""
    k = _check_positive_int(k, "k")
    _check_positive_int(chunk, "chunk")
    x = _features_tensor(feats, "features", device, dtype, min_rows=k + 1)
    x = x - x.mean(0, dtype=torch.float64).to(dtype)
    return _knn_sq_radii(x, k, chunk).sqrt().to("cpu", torch.float64).numpy()


def precision_recall(real, fake, k: int = 3, chunk: int = DEFAULT_CHUNK, device=None,
                     dtype: torch.dtype = torch.float64) -> dict[str, float]:
    r"""Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2).

    Each set's manifold is the union of balls around its samples, with radius the distance
    to the sample's k-th nearest neighbour within the set. ``precision`` is the fraction of
    fake samples inside the real manifold (some real ``x`` with ``||y - x|| <= r_k(x)``);
    ``recall`` the fraction of real samples inside the fake manifold:

    .. math:: \text{precision} = \frac1M \sum_{j=1}^M \mathbb{1}\big[\exists i: \|y_j - x_i\| \le r_k(x_i)\big],
              \qquad \text{recall} = \frac1N \sum_{i=1}^N \mathbb{1}\big[\exists j: \|x_i - y_j\| \le r_k(y_j)\big].

    Distances come from ``||x||^2 + ||y||^2 - 2 x.y`` on ``chunk`` x ``chunk`` blocks (after
    centring both sets on the real mean) in ``dtype`` on ``device``. float64 (default)
    decides ball membership to ~1e-15 relative; float32 is faster on GPUs and flips only
    samples within ~1e-6 relative of a ball's edge. The same formula gives radii and
    cross distances, so a sample is compared against radii rounded the same way.
    """
    r, f = _prepare_sets(real, fake, k, chunk, device, dtype)
    r_radii, f_radii = _knn_sq_radii(r, k, chunk), _knn_sq_radii(f, k, chunk)
    fake_in_real = torch.zeros(f.shape[0], dtype=torch.bool, device=r.device)
    real_in_fake = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    for rows, cols, d2 in _pair_blocks(r, f, chunk):
        fake_in_real[cols] |= (d2 <= r_radii[rows, None]).any(dim=0)
        real_in_fake[rows] |= (d2 <= f_radii[None, cols]).any(dim=1)
    return {"precision": float(fake_in_real.double().mean()), "recall": float(real_in_fake.double().mean())}


def density_coverage(real, fake, k: int = 5, chunk: int = DEFAULT_CHUNK, device=None,
                     dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020, eq. 5-6), from the real samples' k-NN balls only.

    ``density = 1/(k M) sum_j sum_i 1[||y_j - x_i|| < r_k(x_i)]`` (M fake samples; ~1 when
    the fake samples follow the real distribution, unbounded above) and
    ``coverage = 1/N sum_i 1[exists j: ||y_j - x_i|| < r_k(x_i)]`` (N real samples).
    Strict ``<`` as in the paper's ball membership; distances computed as in
    :func:`precision_recall`.
    """
    r, f = _prepare_sets(real, fake, k, chunk, device, dtype)
    r_radii = _knn_sq_radii(r, k, chunk)
    hits = torch.zeros((), dtype=torch.int64, device=r.device)
    covered = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    for rows, cols, d2 in _pair_blocks(r, f, chunk):
        inside = d2 < r_radii[rows, None]
        hits += inside.sum()
        covered[rows] |= inside.any(dim=1)
    return {"density": float(hits) / (k * f.shape[0]), "coverage": float(covered.double().mean())}
