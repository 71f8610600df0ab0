"""Toy distributions: closed-form densities and scores of Gaussian mixtures, and the samplers."""

import math

import pytest
import torch

from ncsn.data.toy import (
    TOY_NAMES,
    Checkerboard,
    EightGaussians,
    GaussianMixture,
    get_toy,
    paper_mixture,
)
from ncsn.errors import UserError
from ncsn.score import call_score


def mixture64():
    means = torch.tensor([[-2.0, 1.0], [1.5, 0.5], [0.0, -3.0]], dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.5, 1.0, 0.8]), torch.tensor([0.2, 0.5, 0.3]))


def points(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return 4 * torch.randn(n, 2, generator=gen, dtype=torch.float64)


def autograd_score(log_prob, x):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x).sum(), x)
    return grad


def test_log_prob_matches_the_density_formula():
    mix, x = mixture64(), points()
    density = torch.zeros(x.shape[0], dtype=torch.float64)
    for mean, std, weight in zip(mix.means, mix.stds, mix.weights):
        sq = ((x - mean) ** 2).sum(dim=1)
        density += weight * torch.exp(-sq / (2 * std**2)) / (2 * math.pi * std**2)
    torch.testing.assert_close(mix.log_prob(x), density.log())


def test_score_is_the_gradient_of_log_prob():
    mix, x = mixture64(), points()
    torch.testing.assert_close(mix.score(x), autograd_score(mix.log_prob, x))


@pytest.mark.parametrize("sigma", [0.3, 2.0, 15.0])
def test_smoothed_score_is_the_gradient_of_the_convolved_log_prob(sigma):
    mix, x = mixture64(), points()
    # the convolution built by hand: same means and weights, variances std^2 + sigma^2
    convolved = GaussianMixture(mix.means, torch.sqrt(mix.stds**2 + sigma**2), mix.weights)
    torch.testing.assert_close(mix.score(x, sigma), autograd_score(convolved.log_prob, x))
    torch.testing.assert_close(mix.log_prob(x, sigma), convolved.log_prob(x))
    torch.testing.assert_close(mix.convolved(sigma).score(x), mix.score(x, sigma))


def test_per_sample_sigma_and_the_score_convention():
    mix, x = mixture64(), points(4)
    sigmas = torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=torch.float64)
    expected = torch.cat([mix.score(x[i : i + 1], float(sigmas[i])) for i in range(4)])
    torch.testing.assert_close(mix.score(x, sigmas), expected)
    torch.testing.assert_close(call_score(mix.score, x, sigmas), expected)  # usable as s(x, sigma)


def test_stable_far_from_the_modes():
    mix = paper_mixture()
    x = torch.tensor([[1000.0, 1000.0], [-3000.0, -2000.0]])
    assert torch.isfinite(mix.log_prob(x)).all()
    # far away only the nearest component matters: score = mu_k - x (unit variance)
    torch.testing.assert_close(mix.score(x), torch.tensor([[-995.0, -995.0], [2995.0, 1995.0]]))


def test_paper_mixture_samples_have_the_right_weights_and_moments():
    mix = paper_mixture()
    gen = torch.Generator().manual_seed(0)
    x = mix.sample(20_000, generator=gen)
    mode = mix.nearest_mode(x)
    assert (mode == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    torch.testing.assert_close(mix.means, torch.tensor([[-5.0, -5.0], [5.0, 5.0]]))
    torch.testing.assert_close(mix.weights, torch.tensor([0.2, 0.8]))
    big = x[mode == 1]
    torch.testing.assert_close(big.mean(0), torch.tensor([5.0, 5.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(big.var(0), torch.tensor([1.0, 1.0]), atol=0.05, rtol=0)


def test_nearest_mode():
    mix = paper_mixture()
    x = torch.tensor([[-4.0, -6.0], [0.1, 0.0], [-0.1, 0.0], [9.0, 2.0]])
    assert mix.nearest_mode(x).tolist() == [0, 1, 0, 1]
    assert mix.nearest_mode(x).dtype == torch.long


def test_eight_gaussians_are_equally_weighted_on_a_circle():
    dist = EightGaussians()
    torch.testing.assert_close(dist.means.norm(dim=1), torch.full((8,), 3.0))
    x = dist.sample(8000, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(dist.nearest_mode(x), minlength=8).float() / 8000
    torch.testing.assert_close(counts, torch.full((8,), 1 / 8), atol=0.015, rtol=0)


def test_checkerboard_samples_only_dark_squares():
    x = Checkerboard().sample(5000, generator=torch.Generator().manual_seed(2))
    cells = torch.floor((x + 4) / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert len(set(map(tuple, cells.tolist()))) == 8


@pytest.mark.parametrize("name", TOY_NAMES)
def test_every_toy_samples_reproducibly_at_a_similar_scale(name):
    dist = get_toy(name)
    a = dist.sample(3000, generator=torch.Generator().manual_seed(3))
    b = dist.sample(3000, generator=torch.Generator().manual_seed(3))
    c = dist.sample(3000, generator=torch.Generator().manual_seed(4))
    assert a.shape == (3000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    if name != "mixture":  # the paper's toy is wider by design
        assert (a.abs() < 4.5).float().mean() > 0.99
        assert 0.8 < a.std(0).min() and a.std(0).max() < 3.0


def test_unknown_toy_lists_the_names():
    with pytest.raises(UserError, match="choose one of: mixture, 8gaussians, moons, swissroll, checkerboard"):
        get_toy("spiral")


def test_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        paper_mixture().score(torch.zeros(3, 3))
