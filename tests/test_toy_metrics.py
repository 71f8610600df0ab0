"""Toy sample-quality metrics against closed forms and direct formulas."""

import math

import numpy as np
import pytest
import torch

from ncsn.data.toy import GaussianMixture
from ncsn.metrics import MetricInputError
from ncsn.metrics.toy import DEFAULT_BANDWIDTHS, avg_log_likelihood, mmd, mode_weights, sliced_wasserstein
from ncsn.toy import single_cpu_thread

CPU = torch.device("cpu")


def normal(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def direct_mmd(x, y, bandwidths):
    """The unbiased estimator written out with full kernel matrices (numpy)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def k(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(np.exp(-sq / (2 * h * h)) for h in bandwidths)

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * k(x, y).mean())


def gaussian_shift_mmd(shift, dim, bandwidths):
    """Closed form for N(0, I) vs N(mu, I): x - x' ~ N(a - b, 2I), so
    E exp(-||x - x'||^2 / 2h^2) = (h^2 / (h^2 + 2))^(D/2) exp(-||a - b||^2 / (2 (h^2 + 2))), and
    MMD^2 = sum_h 2 (h^2 / (h^2 + 2))^(D/2) (1 - exp(-||mu||^2 / (2 (h^2 + 2))))."""
    return sum(2 * (h * h / (h * h + 2)) ** (dim / 2) * (1 - math.exp(-shift**2 / (2 * (h * h + 2))))
               for h in bandwidths)


def test_mmd_matches_the_direct_formula_whatever_the_chunking():
    x, y = normal(37, 3, 0), normal(23, 3, 1) + 0.5
    expected = direct_mmd(x, y, (0.3, 1.0, 3.0))
    for chunk in (1, 5, 16, 1024):
        assert mmd(x, y, bandwidths=(0.3, 1.0, 3.0), chunk=chunk) == pytest.approx(expected, rel=1e-12)
    # numpy float32 input gives the same float64 computation
    assert mmd(x.float().numpy(), y.float().numpy(), (0.3, 1.0, 3.0)) == pytest.approx(
        direct_mmd(x.float().numpy(), y.float().numpy(), (0.3, 1.0, 3.0)), rel=1e-10)


def test_mmd_is_zero_for_one_distribution_and_the_closed_form_for_a_shift():
    x, y = normal(1500, 2, 2), normal(1500, 2, 3)
    with single_cpu_thread(CPU):
        same = mmd(x, y)
        shifted = mmd(x, y + torch.tensor([1.0, 0.0], dtype=torch.float64))
    # over seeds, the same-distribution estimate has std ~0.0015 and the shifted one ~0.027 at n = 1500
    assert abs(same) < 0.01
    assert shifted == pytest.approx(gaussian_shift_mmd(1.0, 2, DEFAULT_BANDWIDTHS), abs=0.08)
    assert gaussian_shift_mmd(1.0, 2, DEFAULT_BANDWIDTHS) > 0.3


def test_sliced_wasserstein_of_a_1d_shift_is_the_shift():
    z = normal(5000, 1, 4)
    # the same draws shifted: sorted pairs differ by exactly the shift
    assert sliced_wasserstein(z, z + 2.5, n_projections=8) == pytest.approx(2.5, rel=1e-12)
    # independent samples of N(0, 1) and N(2.5, 1): W_2 = 2.5 up to sampling error (~0.03 at n = 5000)
    assert sliced_wasserstein(z, normal(5000, 1, 5) + 2.5) == pytest.approx(2.5, abs=0.1)
    # unequal sizes go through quantile interpolation
    assert sliced_wasserstein(z, normal(3000, 1, 6) - 1.0) == pytest.approx(1.0, abs=0.1)


def test_sliced_wasserstein_of_a_2d_shift_is_the_norm_over_root_d():
    """For a shift by d, W_2^2 along theta is (theta . d)^2, whose mean over the circle is ||d||^2 / 2."""
    x = normal(1000, 2, 7)
    d = torch.tensor([3.0, 4.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    # 1500 directions: the mean of cos^2 (1/2) has std sqrt(1/8/1500) = 0.009, i.e. about 1 % on SW
    assert sliced_wasserstein(x, x + d, n_projections=1500, generator=gen) == pytest.approx(5 / math.sqrt(2), rel=0.03)
    assert sliced_wasserstein(x, x) == 0.0


def test_mode_weights_on_hand_made_points():
    means = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    samples = np.array([[0.5, 0.2], [-3.0, 1.0], [9.0, -2.0], [1.0, 8.0], [0.1, -0.4], [12.0, 1.0],
                        [-1.0, 20.0], [2.0, 2.0]])
    np.testing.assert_allclose(mode_weights(samples, means), [4 / 8, 2 / 8, 2 / 8])
    # the order of the means is the order of the weights
    np.testing.assert_allclose(mode_weights(torch.tensor(samples), means[[2, 0, 1]]), [2 / 8, 4 / 8, 2 / 8])


def test_avg_log_likelihood_of_a_standard_normal_is_minus_its_entropy():
    """E log N(x; 0, I) = -(D/2) log(2 pi e); log p = -(D/2) log 2 pi - ||x||^2 / 2 has std sqrt(D/2),
    so at n = 20000 the mean is within 5 standard errors, 5 sqrt(D/2) / sqrt(n), of it."""
    for dim, seed in ((2, 8), (3, 9)):
        n = 20000
        dist = GaussianMixture(torch.zeros(1, dim), torch.ones(1), torch.ones(1))
        samples = dist.sample(n, generator=torch.Generator().manual_seed(seed))
        expected = -dim / 2 * math.log(2 * math.pi * math.e)
        assert avg_log_likelihood(samples, dist) == pytest.approx(expected, abs=5 * math.sqrt(dim / 2 / n))


def test_bad_input_is_a_one_line_error():
    x = normal(10, 2, 0)
    with pytest.raises(MetricInputError, match="same dimension"):
        mmd(x, normal(10, 3, 0))
    with pytest.raises(MetricInputError, match="at least two"):
        mmd(x[:1], x)
    with pytest.raises(MetricInputError, match="bandwidths"):
        mmd(x, x, bandwidths=(1.0, -1.0))
    with pytest.raises(MetricInputError, match=r"shape \(N, D\)"):
        sliced_wasserstein(torch.zeros(5), x)
    with pytest.raises(MetricInputError, match="non-finite"):
        mode_weights(torch.tensor([[float("nan"), 0.0]]), x[:2])
    with pytest.raises(MetricInputError, match="no log_prob"):
        avg_log_likelihood(x, object())
    assert issubclass(MetricInputError, ValueError)
