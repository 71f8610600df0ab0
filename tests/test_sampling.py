"""Langevin samplers: stationary distributions, the NCSN paper's toy finding, inpainting, bookkeeping."""

import pytest
import torch

from ncsn.data.toy import paper_mixture
from ncsn.energy import EnergyScore
from ncsn.sampling import annealed_langevin, annealed_langevin_inpaint, langevin
from ncsn.sigmas import geometric


def standard_normal_score(x):
    return -x


def point_mass_score(mean):
    """p_sigma = N(mean, sigma^2 I): the smoothed score of data concentrated at ``mean``."""
    return lambda x, sigma: -(x - mean) / sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2


def test_langevin_reaches_the_standard_gaussian():
    step = 0.02
    gen = torch.Generator().manual_seed(0)
    x0 = 5.0 + torch.randn(20_000, 2, generator=gen)
    x = langevin(standard_normal_score, x0, step, 600, generator=gen)
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=0.03, rtol=0)
    # the discretised chain's stationary variance is 2 step / (1 - (1 - step)^2) = 1 / (1 - step / 2)
    torch.testing.assert_close(x.var(0), torch.full((2,), 1 / (1 - step / 2)), atol=0.03, rtol=0)
    assert torch.equal(x0, 5.0 + torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0)))  # input kept


def test_samplers_run_an_energy_model_under_no_grad():
    energy = EnergyScore(lambda v: 0.5 * (v**2).sum(dim=1))  # score -x
    x0 = torch.randn(100, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        via_energy = langevin(energy, x0, 0.1, 20, generator=torch.Generator().manual_seed(2))
    direct = langevin(standard_normal_score, x0, 0.1, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(via_energy, direct)
    assert not via_energy.requires_grad
    sigmas = torch.tensor([1.0, 0.5])
    torch.testing.assert_close(
        annealed_langevin(energy, x0, sigmas, 0.01, 5, generator=torch.Generator().manual_seed(3)),
        annealed_langevin(standard_normal_score, x0, sigmas, 0.01, 5, generator=torch.Generator().manual_seed(3)))


def test_noiseless_langevin_climbs_to_the_mode():
    mix = paper_mixture()
    x0 = torch.tensor([[3.0, 4.0], [-4.0, -7.0]])
    x = langevin(mix.score, x0, 0.1, 300, noise=False, sigma=0.0)
    torch.testing.assert_close(x, torch.tensor([[5.0, 5.0], [-5.0, -5.0]]), atol=1e-4, rtol=0)
    # mix.score(x, sigma=0.0): its sigma is optional, so without one it is called as mix.score(x)
    torch.testing.assert_close(langevin(mix.score, x0, 0.1, 300, noise=False), x)
    with pytest.raises(TypeError, match="noise-conditional"):
        langevin(lambda v, sigma: mix.score(v, sigma), x0, 0.1, 1)


def test_a_score_whose_sigma_has_a_default_is_called_without_one():
    from ncsn.score import call_score

    seen = []

    def score(x, sigma=None):
        seen.append(sigma)
        return -x

    x = torch.ones(3, 2)
    torch.testing.assert_close(call_score(score, x), -x)
    call_score(score, x, 0.5)
    langevin(score, x, 0.1, 1, noise=False)
    assert seen[0] is None and torch.equal(seen[1], torch.full((3,), 0.5)) and seen[2] is None


def test_annealed_langevin_recovers_the_mixture_weights_where_langevin_fails():
    # Song & Ermon (2019), Section 3.2 / Figure 3: 1/5 N((-5,-5), I) + 4/5 N((5,5), I), uniform start on [-8, 8]^2.
    # The exact scores are used; annealed Langevin gets the sigma-smoothed score at each level.
    mix = paper_mixture()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(5000, 2, generator=gen) * 16 - 8
    sigmas = geometric(20.0, 1.0, 10)  # the paper's L = 10 levels from 20 to 1, eps = 0.1, T = 100
    annealed = annealed_langevin(mix.score, x0, sigmas, 0.1, 100, generator=gen)
    plain = langevin(mix.score, x0, 0.05, 1000, sigma=0.0, generator=gen)  # eps = 0.1 in the paper's x + eps/2 s
    small_annealed = (mix.nearest_mode(annealed) == 0).float().mean().item()
    small_plain = (mix.nearest_mode(plain) == 0).float().mean().item()
    assert small_annealed == pytest.approx(0.2, abs=0.04)
    assert small_plain > 0.4  # the modes end up about equally populated: the score cannot see the weights


def test_callback_sees_every_step_and_the_score_gets_each_level():
    sigmas = torch.tensor([3.0, 1.0, 0.2])
    seen_sigma, steps = [], []

    def score(x, sigma):
        seen_sigma.append(sigma.clone())
        return -x

    x0 = torch.randn(4, 2)
    annealed_langevin(score, x0, sigmas, 0.01, 5, callback=lambda level, step, x: steps.append((level, step)))
    assert steps == [(level, step) for level in range(3) for step in range(5)]
    assert len(seen_sigma) == 15
    for k, sigma in enumerate(seen_sigma):
        assert torch.equal(sigma, sigmas[k // 5].expand(4))


def test_step_sizes_follow_algorithm_1():
    # with s = 0 each step adds sqrt(alpha_i) z, alpha_i = step_lr sigma_i^2 / sigma_L^2: the final variance is sum T alpha_i
    sigmas = torch.tensor([2.0, 1.0, 0.5])
    x = annealed_langevin(lambda x, s: torch.zeros_like(x), torch.zeros(40_000, 1), sigmas, 0.01, 4,
                          generator=torch.Generator().manual_seed(4))
    expected = 4 * 0.01 * (16 + 4 + 1)
    assert x.var().item() == pytest.approx(expected, rel=0.03)


def test_denoising_step_is_tweedie():
    mean = torch.tensor([1.0, -2.0])
    x0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(5))
    x = annealed_langevin(point_mass_score(mean), x0, torch.tensor([1.0, 0.3]), 0.05, 3, denoise=True,
                          generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(x, mean.expand(50, 2))  # x + sigma_L^2 s(x, sigma_L) = mean


def test_annealed_sampling_is_reproducible_and_shows_progress_without_changing_the_result():
    x0 = torch.randn(8, 2)
    sigmas = torch.tensor([1.0, 0.5])
    a = annealed_langevin(point_mass_score(0.0), x0, sigmas, 0.01, 3, generator=torch.Generator().manual_seed(7))
    b = annealed_langevin(point_mass_score(0.0), x0, sigmas, 0.01, 3, generator=torch.Generator().manual_seed(7),
                          progress=True)
    c = annealed_langevin(point_mass_score(0.0), x0, sigmas, 0.01, 3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sigmas", [[0.5, 1.0], [1.0, 1.0], [], [[1.0, 0.5]], [1.0, -0.5]])
def test_sigmas_must_decrease(sigmas):
    with pytest.raises(ValueError, match="sigmas must"):
        annealed_langevin(point_mass_score(0.0), torch.zeros(2, 2), sigmas, 0.01, 1)


def test_inpainting_keeps_known_pixels_and_samples_the_conditional():
    # x ~ N(0, [[1, rho], [rho, 1]]), x_1 = 1 observed. At the last level the known entry is y = 1 + sigma_L z
    # and x_2 samples the smoothed conditional: E[x_2] = rho / (1 + s2) and
    # Var[x_2] = (1 + s2) - rho^2 / (1 + s2) + (rho / (1 + s2))^2 s2 with s2 = sigma_L^2 (-> N(rho, 1 - rho^2))
    rho, n, sigma_end = 0.8, 4000, 0.1
    cov = torch.tensor([[1.0, rho], [rho, 1.0]])

    def score(x, sigma):
        smoothed = cov + sigma[:, None, None] ** 2 * torch.eye(2)
        return -torch.linalg.solve(smoothed, x.unsqueeze(-1)).squeeze(-1)

    known = torch.tensor([1.0, 123.0]).expand(n, 2).clone()  # the second entry is ignored
    mask = torch.tensor([1.0, 0.0])
    gen = torch.Generator().manual_seed(10)
    x0 = torch.randn(n, 2, generator=gen)
    calls = []
    filled = annealed_langevin_inpaint(score, x0, known, mask, geometric(3.0, sigma_end, 8), 0.01, 100,
                                       callback=lambda level, step, x: calls.append(level), generator=gen)
    assert torch.equal(filled[:, 0], known[:, 0])
    assert len(calls) == 8 * 100
    s2 = sigma_end**2
    assert filled[:, 1].mean().item() == pytest.approx(rho / (1 + s2), abs=0.04)
    assert filled[:, 1].var().item() == pytest.approx(1 + s2 - rho**2 / (1 + s2) + (rho / (1 + s2)) ** 2 * s2, abs=0.035)


def test_inpainting_images_keeps_the_known_half_exactly():
    x0 = torch.rand(3, 1, 4, 4)
    known = torch.rand(3, 1, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0  # left half known
    out = annealed_langevin_inpaint(point_mass_score(0.5), x0, known, mask, torch.tensor([1.0, 0.1]), 1e-3, 5,
                                    denoise=True, generator=torch.Generator().manual_seed(10))
    assert torch.equal(out[..., :2], known[..., :2])
    assert not torch.equal(out[..., 2:], x0[..., 2:])
    with pytest.raises(ValueError, match="does not broadcast"):
        annealed_langevin_inpaint(point_mass_score(0.5), x0, known, torch.ones(2, 4), torch.tensor([1.0]), 1e-3, 1)
