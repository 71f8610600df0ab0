"""Sample-quality metrics against closed forms, plain reference implementations and the papers' behaviour."""

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.neighbors import NearestNeighbors

from ncsn import metrics
from ncsn.errors import UserError
from ncsn.metrics import MetricInputError


def rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def random_covariance(d, seed, rank=None):
    g = np.random.default_rng(seed).normal(size=(d, rank or 2 * d))
    return g @ g.T / g.shape[1]


def scipy_fid(mu1, s1, mu2, s2):
    """The direct formula: scipy's sqrtm of the product, real part."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ------------------------------------------------------------------------------------------- FID


def test_fid_converges_to_the_gaussian_closed_form():
    d = 6
    q = rotation(d, 0)
    a, b = np.linspace(0.5, 3.0, d), np.linspace(2.0, 0.2, d)  # commuting S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    rng = np.random.default_rng(1)

    def sample(mu, var, n):
        return mu + (rng.normal(size=(n, d)) * np.sqrt(var)) @ q.T

    errors = {n: np.mean([abs(metrics.fid(sample(mu1, a, n), sample(mu2, b, n)) - exact) for _ in range(5)])
              for n in (2000, 20000)}  # mean absolute error over 5 draws; it shrinks like 1/sqrt(n)
    assert errors[20000] < 0.5 * errors[2000]
    assert errors[20000] < 0.02 * exact
    # the population statistics give the closed form itself
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert metrics.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(2).normal(size=(500, 32)) * 3 + 1
    assert abs(metrics.fid(feats, feats)) < 1e-6
    assert abs(metrics.fid(torch.from_numpy(feats).float(), feats.astype(np.float32))) < 1e-6


def test_fid_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(3)
    for seed, d in [(0, 5), (1, 20), (2, 64)]:
        s1, s2 = random_covariance(d, 10 + seed), random_covariance(d, 20 + seed) * 2
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        assert metrics.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-9)
    a, b = rng.normal(size=(400, 10)), rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10)) + 0.2
    mu_a, s_a = a.mean(0), np.cov(a, rowvar=False)
    mu_b, s_b = b.mean(0), np.cov(b, rowvar=False)
    assert metrics.fid(a, b) == pytest.approx(scipy_fid(mu_a, s_a, mu_b, s_b), rel=1e-9)


def test_feature_stats_equal_numpy_mean_and_cov_for_any_chunk():
    feats = np.random.default_rng(4).normal(size=(103, 7)).astype(np.float32)
    for chunk in (1, 10, 1000):
        mu, sigma = metrics.feature_stats(feats, chunk=chunk)
        np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=0, atol=1e-12)
        assert sigma.dtype == np.float64 and np.array_equal(sigma, sigma.T)


def test_fid_with_singular_covariances_matches_an_eigenvalue_reference():
    # fewer samples than dimensions: rank-deficient covariances, where sqrtm of the product is unreliable
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(12, 40)), rng.normal(size=(15, 40)) + 0.1
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert metrics.fid(a, b) == pytest.approx(reference, rel=1e-6)
    assert abs(metrics.fid(a, a)) < 1e-9


def test_fid_stats_round_trip_through_npz(tmp_path):
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(200, 8)) + 0.3
    mu, sigma = metrics.feature_stats(a)
    path = metrics.save_stats(tmp_path / "sub" / "real_stats.npz", mu, sigma, dataset="cifar10", n=300)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    mu2, sigma2, meta = metrics.load_stats(path)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    assert meta == {"dataset": "cifar10", "n": "300"}
    assert metrics.fid_from_stats(mu2, sigma2, *metrics.feature_stats(b)) == metrics.fid(a, b)


def test_load_stats_rejects_files_that_are_not_statistics(tmp_path):
    np.savez(tmp_path / "other.npz", features=np.zeros((3, 2)))
    with pytest.raises(MetricInputError, match="lacks 'mu'"):
        metrics.load_stats(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MetricInputError, match="not a readable"):
        metrics.load_stats(tmp_path / "junk.npz")
    with pytest.raises(MetricInputError, match="no such"):
        metrics.load_stats(tmp_path / "missing.npz")
    with pytest.raises(MetricInputError, match="reserved"):
        metrics.save_stats(tmp_path / "s.npz", np.zeros(2), np.eye(2), mu="x")


def test_fid_raises_a_clear_error_where_the_square_root_cannot_exist():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(50, 4))
    broken = feats.copy()
    broken[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.fid(feats, broken)
    mu, sigma = metrics.feature_stats(feats)
    with pytest.raises(ValueError, match="sigma2 contains NaN"):
        metrics.fid_from_stats(mu, sigma, mu, np.full((4, 4), np.inf))
    # an indefinite "covariance": S1 S2 has a negative eigenvalue, so (S1 S2)^{1/2} is not real
    indefinite = np.diag([1.0, 2.0, -0.5, 1.0])
    assert np.linalg.eigvals(sigma @ indefinite).real.min() < 0
    with pytest.raises(ValueError, match="sigma2 is not positive semi-definite"):
        metrics.fid_from_stats(mu, sigma, mu, indefinite)
    asymmetric = sigma.copy()
    asymmetric[0, 1] += 0.1
    with pytest.raises(ValueError, match="sigma1 is not symmetric"):
        metrics.fid_from_stats(mu, asymmetric, mu, sigma)
    with pytest.raises(ValueError, match="differ in dimension"):
        metrics.fid_from_stats(mu, sigma, mu[:3], sigma[:3, :3])
    with pytest.raises(UserError):  # reported as one line by the CLI
        metrics.fid(feats, feats[:, :3])


def test_fid_accepts_float32_rounding_of_a_singular_covariance():
    # rank 3 of 30: float32 storage turns zero eigenvalues into tiny negative ones, which are rounding, not errors
    s1 = random_covariance(30, 8, rank=3)
    s2 = random_covariance(30, 9)
    mu = np.zeros(30)
    s1_32 = s1.astype(np.float32)
    assert np.linalg.eigvalsh(s1_32.astype(np.float64)).min() < 0
    exact = metrics.fid_from_stats(mu, s1, mu, s2)
    assert metrics.fid_from_stats(mu, s1_32, mu, s2.astype(np.float32)) == pytest.approx(exact, rel=1e-3)
    with pytest.raises(ValueError, match="positive semi-definite"):  # the same in float64 is held to float64 rounding
        metrics.fid_from_stats(mu, s1_32.astype(np.float64) - 1e-6 * np.eye(30), mu, s2)


# -------------------------------------------------------------------------------- Inception Score


def test_inception_score_is_one_for_identical_predictions():
    probs = np.tile(np.random.default_rng(10).dirichlet(np.ones(7)), (200, 1))
    mean, std = metrics.inception_score(probs, splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_equals_class_count_for_confident_uniform_predictions():
    probs = np.tile(np.eye(10), (100, 1))  # every split of 100 holds each class 10 times
    mean, std = metrics.inception_score(probs, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    assert metrics.inception_score(torch.eye(4), splits=1) == pytest.approx((4.0, 0.0))


def test_inception_score_matches_a_plain_reference():
    probs = np.random.default_rng(11).dirichlet(np.full(5, 0.3), size=1003)
    scores = []
    for i in range(10):
        part = probs[i * 1003 // 10:(i + 1) * 1003 // 10]
        py = part.mean(0)
        kl = [sum(p[c] * np.log(p[c] / py[c]) for c in range(5) if p[c] > 0) for p in part]
        scores.append(np.exp(np.mean(kl)))
    mean, std = metrics.inception_score(probs, splits=10)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12) and std == pytest.approx(np.std(scores), rel=1e-9)


def test_inception_score_rejects_logits_and_bad_splits():
    with pytest.raises(ValueError, match="non-negative"):
        metrics.inception_score(np.random.default_rng(12).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="sum to 1"):
        metrics.inception_score(np.full((20, 3), 0.5))
    with pytest.raises(ValueError, match="splits"):
        metrics.inception_score(np.eye(3), splits=4)


# -------------------------------------------------------------------------------------------- KID


def direct_mmd2(x, y):
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3, by explicit double sums."""
    m, d = len(x), x.shape[1]
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_a_direct_quadratic_reference():
    rng = np.random.default_rng(20)
    a, b = rng.normal(size=(25, 4)), rng.normal(size=(30, 4)) * 1.3 + 0.2
    # subset size clipped to 25: each draw is all of ``a`` and 25 of ``b``; the draws come from default_rng(seed)
    mean, std = metrics.kid(a, b, n_subsets=5, subset_size=1000, seed=3)
    draws = np.random.default_rng(3)
    expected = []
    for _ in range(5):
        ia, ib = draws.choice(25, 25, replace=False), draws.choice(30, 25, replace=False)
        expected.append(direct_mmd2(a[ia], b[ib]))
    assert mean == pytest.approx(np.mean(expected), rel=1e-10) and std == pytest.approx(np.std(expected), rel=1e-8)
    full, spread = metrics.kid(a, b[:25], n_subsets=3, subset_size=25)
    assert full == pytest.approx(direct_mmd2(a, b[:25]), rel=1e-10) and spread < 1e-12


def test_kid_is_unbiased_for_one_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(21)
    real, same, shifted = rng.normal(size=(3, 2000, 16))
    shifted = shifted + 0.3
    mean, std = metrics.kid(real, same, n_subsets=50, subset_size=200, seed=0)
    assert abs(mean) < 0.3 * std
    mean_s, std_s = metrics.kid(real, shifted, n_subsets=50, subset_size=200, seed=0)
    assert mean_s > 5 * std_s and mean_s > 20 * abs(mean)
    # the same generator state gives the same value, given as a seed or a generator
    assert metrics.kid(real, shifted, 10, 100, seed=5) == metrics.kid(real, shifted, 10, 100,
                                                                       generator=np.random.default_rng(5))


def test_kid_rejects_bad_input():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="dimension"):
        metrics.kid(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(x, x, subset_size=1)


# ----------------------------------------------------------------------------- k-NN manifold metrics


def brute_force_manifold_metrics(real, fake, k_pr, k_dc):
    """Plain numpy: full distance matrices, k-th neighbour by sorting (column 0 is the point itself)."""
    def dists(x, y):
        return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))

    rr, ff, rf = dists(real, real), dists(fake, fake), dists(real, fake)
    r_pr, f_pr = np.sort(rr, axis=1)[:, k_pr], np.sort(ff, axis=1)[:, k_pr]
    r_dc = np.sort(rr, axis=1)[:, k_dc]
    return {
        "precision": np.mean([(rf[:, j] <= r_pr).any() for j in range(len(fake))]),
        "recall": np.mean([(rf[i, :] <= f_pr).any() for i in range(len(real))]),
        "density": (rf < r_dc[:, None]).sum() / (k_dc * len(fake)),
        "coverage": np.mean(rf.min(axis=1) < r_dc),
        "radii": r_pr,
    }


def test_manifold_metrics_match_a_brute_force_reference():
    rng = np.random.default_rng(30)
    real = rng.normal(size=(300, 5))
    fake = rng.normal(size=(250, 5)) * 1.1 + 0.15
    ref = brute_force_manifold_metrics(real, fake, 3, 5)
    pr, dc = metrics.precision_recall(real, fake, k=3), metrics.density_coverage(real, fake, k=5)
    assert pr == pytest.approx({"precision": ref["precision"], "recall": ref["recall"]}, abs=1e-15)
    assert dc == pytest.approx({"density": ref["density"], "coverage": ref["coverage"]}, abs=1e-15)
    np.testing.assert_allclose(metrics.knn_radii(real, k=3), ref["radii"], rtol=1e-10)
    sk_dist, _ = NearestNeighbors(n_neighbors=4).fit(real).kneighbors(real)
    np.testing.assert_allclose(metrics.knn_radii(real, k=3), sk_dist[:, 3], rtol=1e-10)


def test_chunked_results_equal_unchunked():
    rng = np.random.default_rng(31)
    real = rng.normal(size=(157, 6)).astype(np.float32)
    fake = (rng.normal(size=(131, 6)) * 0.9 + 0.1).astype(np.float32)
    whole_pr = metrics.precision_recall(real, fake, k=3, chunk=10_000)
    whole_dc = metrics.density_coverage(real, fake, k=5, chunk=10_000)
    whole_radii = metrics.knn_radii(real, k=4, chunk=10_000)
    for chunk in (5, 64, 100, 157):
        assert metrics.precision_recall(real, fake, k=3, chunk=chunk) == whole_pr
        assert metrics.density_coverage(real, fake, k=5, chunk=chunk) == whole_dc
        np.testing.assert_allclose(metrics.knn_radii(real, k=4, chunk=chunk), whole_radii, rtol=1e-13)
    # torch input in float32 equals the same numbers given as numpy; a float32 computation agrees here too
    assert metrics.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3) == whole_pr
    assert metrics.precision_recall(real, fake, k=3, dtype=torch.float32) == whole_pr


def clouds(seed, n=1000, d=8):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d))


def test_precision_recall_follow_the_papers_figure():
    real, other = clouds(32)
    same = metrics.precision_recall(real, other)
    assert same["precision"] > 0.85 and same["recall"] > 0.85
    shrunk = metrics.precision_recall(real, 0.5 * other)  # fake covers only the core of the real distribution
    assert shrunk["precision"] > 0.97 and shrunk["recall"] < 0.35
    widened = metrics.precision_recall(real, 2.0 * other)  # fake spreads beyond it
    assert widened["precision"] < 0.35 and widened["recall"] > 0.97
    far = metrics.precision_recall(real, other + 20.0)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_density_and_coverage_follow_naeem_et_al():
    real, other = clouds(33)
    same = metrics.density_coverage(real, other)
    assert 0.85 < same["density"] < 1.15 and same["coverage"] > 0.9
    collapsed = metrics.density_coverage(real, 0.2 * other)  # crowded into the real core: dense, poorly covering
    assert collapsed["density"] > 1.5 and collapsed["coverage"] < 0.3
    assert metrics.density_coverage(real, other + 20.0) == {"density": 0.0, "coverage": 0.0}


def test_duplicates_are_neighbours_but_a_point_is_not_its_own():
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(metrics.knn_radii(x, k=1), [0.0, 0.0, 3.0, 4.0])
    np.testing.assert_allclose(metrics.knn_radii(x, k=2), [3.0, 3.0, 3.0, 5.0])


def test_manifold_metrics_reject_bad_input():
    x = np.random.default_rng(34).normal(size=(5, 3))
    with pytest.raises(ValueError, match=r"at least 4 row"):
        metrics.precision_recall(x, x[:3], k=3)
    with pytest.raises(ValueError, match="differ in dimension"):
        metrics.density_coverage(x, x[:, :2], k=2)
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_recall(x, x, k=0)
    with pytest.raises(ValueError, match="2-D"):
        metrics.precision_recall(x[0], x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_equal_cpu():
    real, other = clouds(35, n=600)
    fake = 0.8 * other + 0.1
    assert metrics.precision_recall(real, fake, device="cuda") == metrics.precision_recall(real, fake)
    assert metrics.density_coverage(real, fake, device="cuda") == metrics.density_coverage(real, fake)
    gpu = torch.from_numpy(real).cuda()
    assert metrics.kid(gpu, fake, n_subsets=5, subset_size=100) == pytest.approx(
        metrics.kid(real, fake, n_subsets=5, subset_size=100), rel=1e-9)
