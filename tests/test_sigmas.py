"""Noise levels: the geometric sequence and NCSNv2's rules (Song & Ermon 2020), against hand-computed values."""

import math

import pytest
import torch
from scipy import stats

from ncsn.sampling import annealed_langevin
from ncsn.sigmas import (
    end_variance_ratio,
    geometric,
    num_levels_for,
    overlap_probability,
    ratio_for,
    sigma_max_from_data,
    step_size_for,
)


def test_geometric_hand_values_and_constant_ratio():
    torch.testing.assert_close(geometric(1.0, 0.01, 3), torch.tensor([1.0, 0.1, 0.01]))
    sigmas = geometric(50.0, 0.01, 232, dtype=torch.float64)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (232,)
    assert sigmas[0].item() == pytest.approx(50.0) and sigmas[-1].item() == pytest.approx(0.01)
    ratios = sigmas[:-1] / sigmas[1:]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 5000 ** (1 / 231)))
    assert geometric(2.0, 1.0, 1).tolist() == [2.0]
    assert geometric(20, 1, 10).dtype == torch.float32


@pytest.mark.parametrize("args, message", [
    ((1.0, 2.0, 3), "must exceed"),
    ((1.0, 0.1, 0), "positive integer"),
    ((1.0, -0.1, 3), "finite and positive"),
])
def test_geometric_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        geometric(*args)


def test_sigma_max_is_the_largest_pairwise_distance():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [2.0, 2.0]])
    assert sigma_max_from_data(points) == pytest.approx(5.0)
    assert sigma_max_from_data(points, chunk_size=1) == pytest.approx(5.0)
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(150, 3, 4, 4, generator=gen)
    expected = torch.pdist(data.reshape(150, -1).double()).max().item()
    for chunk in (16, 50, 10_000):
        assert sigma_max_from_data(data, chunk_size=chunk) == pytest.approx(expected, rel=1e-12)


def test_sigma_max_rejects_a_single_point():
    with pytest.raises(ValueError, match="two data points"):
        sigma_max_from_data(torch.zeros(1, 5))


def test_overlap_probability_hand_values():
    # gamma = 1: Phi(3) - Phi(-3)
    assert overlap_probability(1.0, 100) == pytest.approx(stats.norm.cdf(3) - stats.norm.cdf(-3), abs=1e-12)
    root = math.sqrt(2 * 3072) * 0.04
    expected = stats.norm.cdf(root + 3 * 1.04) - stats.norm.cdf(root - 3 * 1.04)
    assert overlap_probability(1.04, 3072) == pytest.approx(expected, abs=1e-12)


def test_ratio_and_number_of_levels_cifar10_and_celeba():
    # Phi(sqrt(2D)(g - 1) + 3g) ~ 1 here, so the root is where sqrt(2D)(g - 1) = 3g: g = sqrt(2D) / (sqrt(2D) - 3)
    for dim in (3072, 12288):
        gamma = ratio_for(dim)
        assert overlap_probability(gamma, dim) == pytest.approx(0.5, abs=1e-9)
        root2d = math.sqrt(2 * dim)
        assert gamma == pytest.approx(root2d / (root2d - 3), rel=1e-6)
    # ceil(log(5000) / log(1.039796)) + 1 = ceil(218.25) + 1; ceil(log(9000) / log(1.019510)) + 1 = ceil(471.22) + 1
    assert num_levels_for(50.0, 0.01, 3072) == 220
    assert num_levels_for(90.0, 0.01, 12288) == 473
    levels = num_levels_for(50.0, 0.01, 3072)
    assert (5000 ** (1 / (levels - 1))) <= ratio_for(3072)


def test_ratio_rule_needs_enough_dimensions():
    with pytest.raises(ValueError, match="high-dimensional"):
        ratio_for(2)


def test_end_variance_ratio_hand_value_and_limits():
    # step_lr = 1 -> eps = 0.5, sigma_L = 1, gamma = 2, T = 1:
    # (1 - 0.5)^2 (4 - 1 / 0.75) + 1 / 0.75 = 0.25 * 8/3 + 4/3 = 2
    assert end_variance_ratio(1.0, 1.0, 2.0, 1) == pytest.approx(2.0)
    assert end_variance_ratio(1e-12, 0.01, 1.05, 5) == pytest.approx(1.05 ** 2, rel=1e-6)  # no movement
    with pytest.raises(ValueError, match="step_lr must lie"):
        end_variance_ratio(1.0, 0.01, 1.05, 5)


def test_end_variance_ratio_matches_the_sampler():
    # one level sigma: p_sigma = N(0, sigma^2); start at variance (gamma sigma)^2, run T steps
    sigma, gamma, steps, step_lr = 0.5, 1.3, 4, 0.05
    gen = torch.Generator().manual_seed(0)
    x0 = gamma * sigma * torch.randn(200_000, 1, generator=gen, dtype=torch.float64)
    x = annealed_langevin(lambda x, s: -x / s[:, None] ** 2, x0, torch.tensor([sigma]), step_lr, steps, generator=gen)
    measured = x.var().item() / sigma**2
    assert measured == pytest.approx(end_variance_ratio(step_lr, sigma, gamma, steps), abs=0.01)


def test_step_size_reproduces_the_paper_values():
    cifar = step_size_for(0.01, 5000 ** (1 / 231), 5)  # sigma 50 -> 0.01, L = 232, T = 5
    celeba = step_size_for(0.01, 9000 ** (1 / 499), 5)  # sigma 90 -> 0.01, L = 500, T = 5
    assert cifar / 2 == pytest.approx(6.2e-6, rel=0.01)
    assert celeba / 2 == pytest.approx(3.3e-6, rel=0.02)
    gamma = 5000 ** (1 / 231)
    best = end_variance_ratio(cifar, 0.01, gamma, 5)
    assert best < end_variance_ratio(cifar * 1.05, 0.01, gamma, 5)
    assert best < end_variance_ratio(cifar / 1.05, 0.01, gamma, 5)
