"""Forward processes (VE, VP), DDPM's betas, L_simple and its equivalence with NCSN's objective."""

from __future__ import annotations

import math

import pytest
import torch

from ncsn.losses import ddpm_loss, ncsn_loss
from ncsn.processes import VEProcess, VPProcess, eps_to_score, score_to_eps, ve_process, vp_process
from ncsn.sigmas import ddpm_betas


def test_linear_betas_are_hos_schedule():
    betas = ddpm_betas()
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_cosine_betas_follow_the_squared_cosine_of_nichol_and_dhariwal():
    T = 1000
    betas = ddpm_betas(T, schedule="cosine")
    abar = torch.cumprod(1 - betas, 0)
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 250, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas.max().item() <= 0.999 and bool((abar.diff() < 0).all())


@pytest.mark.parametrize("kwargs", [dict(T=0), dict(schedule="quadratic"), dict(beta_start=0.1, beta_end=0.01)])
def test_bad_beta_schedules_are_refused(kwargs):
    with pytest.raises(ValueError):
        ddpm_betas(**kwargs)


def test_vp_kernel_has_the_closed_form_mean_and_variance():
    """q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with abar_t = prod_{s<=t} (1 - beta_s) (Ho et al. eq. 4)."""
    process = vp_process()
    betas = ddpm_betas()
    for t in (0, 10, 500, 999):
        abar = torch.prod(1 - betas[: t + 1]).item()
        assert process.alphas_bar[t].item() == pytest.approx(abar, rel=1e-12)
        x0 = torch.full((20000, 3), 0.7, dtype=torch.float64)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        x_t = process.perturb(x0, torch.full((20000,), t), noise)
        assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=4 * math.sqrt((1 - abar) / 60000))
        assert x_t.var().item() == pytest.approx(1 - abar, rel=0.03)
        # the equivalent noise level: x_t / a_t = x0 + sigma~ z
        assert process.noise_levels[t].item() == pytest.approx(math.sqrt((1 - abar) / abar), rel=1e-12)


def test_vp_destroys_the_signal_and_ve_does_not():
    """Ho et al.'s difference 3: KL(q(x_T | x0) || N(0, I)) < 1e-4 nats per dimension for any x0 in [-1, 1];
    NCSN's largest sigma leaves a measurable mismatch with N(0, sigma_1^2 I)."""
    vp = vp_process()
    corners = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    assert vp.prior_kl(corners).max().item() / 4 < 1e-4
    assert vp.alphas_bar[-1].item() == pytest.approx(4.04e-5, rel=0.01)
    ve = ve_process(1.0, 0.01, 10)  # the paper's CIFAR-10 levels, data in [0, 1]
    assert ve.prior_kl(torch.ones(1, 4)).item() / 4 == pytest.approx(0.5, rel=1e-6)  # x0^2 / (2 sigma_1^2)


def test_both_processes_share_the_score_target_and_the_eps_relation():
    for process in (vp_process(), ve_process(5.0, 0.01, 10)):
        idx = torch.tensor([0, 3, 7])
        z = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
        std = process.stds[idx].to(torch.float32)
        target = process.score_target(z, idx)
        assert torch.allclose(target, -z / std[:, None])
        assert torch.allclose(eps_to_score(z, std), target)
        assert torch.allclose(score_to_eps(target, std), z)
        # noise_level_of_std inverts s -> sigma~ and scale_of_std gives a
        assert torch.allclose(process.noise_level_of_std(process.stds[idx]), process.noise_levels[idx])
        assert torch.allclose(process.scale_of_std(process.stds[idx]), process.scales[idx])


def test_processes_map_images_to_their_data_range():
    x = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(VPProcess(ddpm_betas(10)).to_model(x), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(VEProcess(torch.tensor([1.0, 0.1])).to_model(x), x)
    vp = vp_process(10)
    assert torch.allclose(vp.to_images(vp.to_model(x)), x)


def _gaussian_eps(mean: float, std: float, abar: torch.Tensor):
    """E[eps | x_t] for data N(mean, std^2 I): sqrt(1 - abar)(x_t - sqrt(abar) mean) / (abar std^2 + 1 - abar)."""
    def eps(x_t, t):
        a = abar[t].to(x_t.dtype)[:, None]
        return (1 - a).sqrt() * (x_t - a.sqrt() * mean) / (a * std**2 + 1 - a)
    return eps


def test_l_simple_is_minimised_by_the_analytic_eps_of_gaussian_data():
    """The least-squares multiple c of the exact eps*(x_t, t) on L_simple's own draws is 1, and
    scaling or shifting eps* raises the loss."""
    abar = vp_process().alphas_bar
    gen = torch.Generator().manual_seed(0)
    x0 = 0.2 + 0.3 * torch.randn(40000, 4, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 1000, (40000,), generator=gen)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    best = _gaussian_eps(0.2, 0.3, abar)
    a = abar[t][:, None]
    pred = best(a.sqrt() * x0 + (1 - a).sqrt() * z, t)
    c_hat = ((pred * z).sum() / pred.square().sum()).item()
    assert c_hat == pytest.approx(1.0, abs=0.01)
    loss = ddpm_loss(best, x0, abar, t=t, noise=z).item()
    for worse in (lambda x, t_: 1.1 * best(x, t_), lambda x, t_: 0.9 * best(x, t_), lambda x, t_: best(x, t_) + 0.05):
        assert ddpm_loss(worse, x0, abar, t=t, noise=z).item() > loss + 1e-4


def test_ncsn_objective_on_the_vp_kernel_is_d_over_2_times_l_simple():
    """With s = -eps / sqrt(1 - abar): 1/2 ||s_t s + z||^2 = 1/2 ||z - eps||^2, so ncsn_loss = D/2 L_simple."""
    process = vp_process()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(64, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    t = torch.randint(0, 1000, (64,), generator=gen)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)

    def eps_fn(x, t_):
        return torch.tanh(x) * process.stds[t_][:, None, None, None]  # any function of (x, t)

    std_to_t = {round(v, 12): i for i, v in enumerate(process.stds.tolist())}

    def score_fn(x, std):
        t_ = torch.tensor([std_to_t[round(v, 12)] for v in std.tolist()])
        return eps_to_score(eps_fn(x, t_), std)

    simple = ddpm_loss(eps_fn, x0, process.alphas_bar, t=t, noise=z)
    ncsn = ncsn_loss(score_fn, x0, process.stds, levels=t, noise=z, scales=process.scales)
    assert ncsn.item() == pytest.approx(16 / 2 * simple.item(), rel=1e-10)


def test_ddpm_loss_checks_its_inputs():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        ddpm_loss(lambda x_, t_: x_[:, :2], x, torch.tensor([0.5, 0.1]))
    with pytest.raises(ValueError, match="t must have shape"):
        ddpm_loss(lambda x_, t_: x_, x, torch.tensor([0.5, 0.1]), t=torch.zeros(3, dtype=torch.long))
