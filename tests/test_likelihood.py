"""The DDPM variational bound (Ho et al. 2020, eq. 5 and Section 3.3) and its building blocks,
against closed forms, numeric integrals and an analytic model of Gaussian data."""

import math

import pytest
import torch
from scipy import integrate, stats

from ncsn.likelihood import ddpm_vlb, discretized_gaussian_log_likelihood, gaussian_kl

T = 1000
K = 256
W = 2 / (K - 1)


def linear_betas(n=T, start=1e-4, end=0.02):
    return torch.linspace(start, end, n, dtype=torch.float64)


def alpha_bar(betas):
    return torch.cumprod(1 - betas, 0)


def grid(k=K):
    return torch.linspace(-1, 1, k, dtype=torch.float64)


def to_grid(x, k=K):
    w = 2 / (k - 1)
    return (torch.round((x + 1) / w) * w - 1).clamp(-1, 1)


def reference_log_mass(x, mean, scale, w):
    """log of the integral of the N(mean, scale^2) density over [x - w/2, x + w/2] by quadrature,
    with the density divided by its value at x so that far-tail bins stay representable."""
    log_px = stats.norm.logpdf(x, mean, scale)
    value, _ = integrate.quad(lambda u: math.exp(stats.norm.logpdf(u, mean, scale) - log_px),
                              x - w / 2, x + w / 2, epsabs=0, epsrel=1e-12)
    return log_px + math.log(value)


# --- discretised Gaussian decoder (eq. 13) ---------------------------------------------------

@pytest.mark.parametrize("k", [5, 256])
@pytest.mark.parametrize("mean, scale", [(0.0, 1.0), (0.37, 0.01), (-0.99, 0.003), (1.7, 0.2), (-0.2, 30.0)])
def test_discretized_masses_sum_to_one_over_the_grid(k, mean, scale):
    x = grid(k)
    ll = discretized_gaussian_log_likelihood(x, torch.tensor(mean), torch.tensor(math.log(scale)), 2 / (k - 1))
    assert ll.dtype == torch.float64 and ll.shape == (k,)
    assert torch.isfinite(ll).all()
    assert torch.logsumexp(ll, 0).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("x_index, mean, scale", [(140, 0.1, 0.02), (140, 0.1, 0.3), (60, -0.5, 0.004)])
def test_discretized_interior_bin_matches_numeric_integral(x_index, mean, scale):
    x = grid()[x_index].item()
    ll = discretized_gaussian_log_likelihood(torch.tensor([x], dtype=torch.float64), mean, math.log(scale), W).item()
    assert ll == pytest.approx(reference_log_mass(x, mean, scale, W), rel=1e-9, abs=1e-10)


def test_discretized_edge_bins_take_the_tails():
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    ll = discretized_gaussian_log_likelihood(x, 0.2, math.log(0.5), W)
    expected = [stats.norm.logcdf(-1 + W / 2, 0.2, 0.5), stats.norm.logsf(1 - W / 2, 0.2, 0.5)]
    torch.testing.assert_close(ll, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_discretized_far_from_the_mean_stays_finite_and_accurate(side):
    """A bin 20 standard deviations from the mean (probability ~1e-89): naive Phi(b) - Phi(a)
    underflows or cancels to 0; the log-mass must be finite and equal the quadrature value."""
    scale = 0.01
    x = grid()[150].item()  # interior
    mean = x - side * 20 * scale
    ll = discretized_gaussian_log_likelihood(torch.tensor([x], dtype=torch.float64), mean, math.log(scale), W).item()
    assert math.isfinite(ll)
    assert ll == pytest.approx(reference_log_mass(x, mean, scale, W), rel=1e-9)
    # Mirror symmetry: p(x | mean) == p(-x | -mean).
    mirrored = discretized_gaussian_log_likelihood(torch.tensor([-x], dtype=torch.float64), -mean,
                                                   math.log(scale), W).item()
    assert mirrored == pytest.approx(ll, rel=1e-12)
    # Edge bins with the mean far on the other side: finite too.
    edges = discretized_gaussian_log_likelihood(torch.tensor([-1.0, 1.0]), torch.tensor([0.5, -0.5]),
                                                math.log(scale), W)
    assert torch.isfinite(edges).all() and (edges < -1000).all()


def test_discretized_broadcasts_and_rejects_bad_width():
    ll = discretized_gaussian_log_likelihood(grid()[:, None], torch.zeros(3), torch.zeros(1), W)
    assert ll.shape == (K, 3)
    with pytest.raises(ValueError, match="bin_width"):
        discretized_gaussian_log_likelihood(grid(), 0.0, 0.0, 0.0)


# --- Gaussian KL --------------------------------------------------------------------------------

def test_gaussian_kl_zero_for_equal_and_closed_form():
    mean = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, -3.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(gaussian_kl(mean, logvar, mean, logvar), torch.zeros(3, dtype=torch.float64))
    # KL(N(1, 4) || N(0, 1)) = 1/2 (4 + 1 - 1 - log 4) = 2 - log 2.
    kl = gaussian_kl(torch.tensor(1.0, dtype=torch.float64), math.log(4.0), 0.0, 0.0)
    assert kl.dtype == torch.float64 and kl.item() == pytest.approx(2 - math.log(2), rel=1e-12)
    # Against torch.distributions on a batch of random pairs.
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = torch.randn(4, 50, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(gaussian_kl(m1, lv1, m2, lv2), ref, rtol=1e-10, atol=1e-12)
    assert (gaussian_kl(m1, lv1, m2, lv2) > 0).all()


# --- the bound ---------------------------------------------------------------------------------

def gaussian_data(n, d, m, s, seed):
    g = torch.Generator().manual_seed(seed)
    return to_grid(m + s * torch.randn(n, d, generator=g, dtype=torch.float64))


def oracle_eps_fn(x0, betas):
    """The noise that produced x_t from x0, recovered exactly: eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
    abar = alpha_bar(betas)

    def eps_fn(x, t):
        a = abar[t].reshape(-1, *([1] * (x.ndim - 1)))
        rows = x0.repeat(x.shape[0] // x0.shape[0], *([1] * (x0.ndim - 1)))
        return (x - a.sqrt() * rows) / (1 - a).sqrt()
    return eps_fn


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_vlb_with_oracle_noise_is_exactly_the_variance_mismatch(variance):
    """Told the true noise, mu_theta equals the forward posterior mean exactly, so each KL term is
    the variance mismatch alone: 0 for "posterior", 1/2 (log(beta/beta_tilde) + beta_tilde/beta - 1)
    per dimension for "beta"; the decoder is centred on x0: -log(2 Phi(w / (2 sqrt(beta_0))) - 1)."""
    betas = linear_betas(50, 1e-3, 0.2)
    x0 = gaussian_data(6, 3, 0.0, 0.2, seed=1).reshape(6, 1, 3).clamp(-1 + W, 1 - W)
    d = 3
    r = ddpm_vlb(oracle_eps_fn(x0, betas), x0, betas, W, variance=variance,
                 generator=torch.Generator().manual_seed(2))
    abar = alpha_bar(betas)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    if variance == "posterior":
        expected_kl = torch.zeros(50, dtype=torch.float64)
    else:
        expected_kl = d * 0.5 * (torch.log(betas / beta_tilde) + beta_tilde / betas - 1)
    torch.testing.assert_close(r["terms"][:, 1:], expected_kl[1:].expand(6, -1), rtol=1e-9, atol=1e-11)
    decoder = -d * math.log(2 * stats.norm.cdf(W / (2 * math.sqrt(betas[0].item()))) - 1)
    torch.testing.assert_close(r["decoder"], torch.full((6,), decoder, dtype=torch.float64), rtol=1e-9, atol=0)
    prior = d * 0.5 * (-math.log(1 - abar[-1].item()) + (1 - abar[-1].item()) - 1) \
        + 0.5 * abar[-1].item() * x0.reshape(6, -1).pow(2).sum(1)
    torch.testing.assert_close(r["prior"], prior, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(r["total"], r["prior"] + r["diffusion"] + r["decoder"])
    torch.testing.assert_close(r["bpd"], r["total"] / (d * math.log(2)))
    assert r["nfe"] == 50 and r["total"].dtype == torch.float64 and r["total"].shape == (6,)


def expected_gap_per_dim(betas, m, s, variance):
    """E[bound] - E[-log N(x0; m, s^2)] + log w per dimension for x0 ~ N(m, s^2) and the exact eps.

    With eps*, mu_theta - (forward posterior mean) = c0 (E[x0 | x_t] - x0), whose mean square is
    c0^2 V_t with V_t = Var[x0 | x_t] = s^2 (1 - abar_t) / (abar_t s^2 + 1 - abar_t); the decoder's
    error x0 - mu_theta(x_1, 0) is N(0, V_0), integrated numerically over the bin masses.
    """
    abar = alpha_bar(betas)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    c0 = betas * abar_prev.sqrt() / (1 - abar)
    v = s ** 2 * (1 - abar) / (abar * s ** 2 + 1 - abar)
    sig2 = betas if variance == "beta" else beta_tilde
    kl = 0.5 * (torch.log(sig2[1:] / beta_tilde[1:]) + beta_tilde[1:] / sig2[1:] - 1 + c0[1:] ** 2 * v[1:] / sig2[1:])
    a_T = abar[-1].item()
    prior = 0.5 * (-math.log(1 - a_T) + (1 - a_T) + a_T * (m ** 2 + s ** 2) - 1)
    sd0, v0 = math.sqrt(betas[0].item()), v[0].item()
    decoder, _ = integrate.quad(
        lambda e: -stats.norm.pdf(e, 0, math.sqrt(v0)) * math.log(
            stats.norm.sf((abs(e) - W / 2) / sd0) - stats.norm.sf((abs(e) + W / 2) / sd0)),
        -12 * math.sqrt(v0), 12 * math.sqrt(v0), epsabs=1e-12, limit=200)
    nll = 0.5 * math.log(2 * math.pi * math.e * s ** 2) - math.log(W)
    return prior + kl.sum().item() + decoder - nll


def test_vlb_of_gaussian_data_matches_closed_form_nll():
    """Gaussian data x0 ~ N(m, s^2 I), D = 4, m = 0.1, s = 0.2 (the +-1 clip is 4.5 s away), on the
    8-bit grid, with the exact eps. The mean bound must match the closed-form discrete NLL
    -log N(x0; m, s^2 I) - D log w averaged over the same 1024 samples, up to the gap the reverse
    variances leave. That gap in expectation (:func:`expected_gap_per_dim`) is 0.433 nats/dim for
    "posterior" (sigma_t^2 = beta_tilde_t, too small) and 0.008 nats/dim for "beta"
    (sigma_t^2 = beta_t is nearly the true reverse variance at the small t that matter here).
    Measured here: 0.414 +- 0.021 ("posterior") and -0.009 +- 0.015 ("beta") nats/dim (Monte Carlo
    standard errors; 6.70 bits/dim against the data's 6.71); other seeds with 8192 elements gave
    0.424-0.450 and -0.006-0.039. The tolerance, 0.06 nats/dim (3-4 standard errors), is far under
    what a factor 2 in the bin width (0.69 nats/dim) or in a mean coefficient (several nats/dim)
    adds; finer errors, such as a different decoder variance (+0.06), are left to the exact
    oracle test above."""
    m, s, d, n = 0.1, 0.2, 4, 1024
    betas = linear_betas()
    abar = alpha_bar(betas)
    x0 = gaussian_data(n, d, m, s, seed=0)
    assert (x0.abs() < 1).all()

    def eps_star(x, t):
        a = abar[t].reshape(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * m) / (a * s ** 2 + 1 - a)

    nll = (0.5 * math.log(2 * math.pi * s ** 2) + (x0 - m) ** 2 / (2 * s ** 2)).sum(1) - d * math.log(W)
    gaps = {}
    for i, variance in enumerate(["posterior", "beta"]):
        r = ddpm_vlb(eps_star, x0, betas, W, variance=variance, generator=torch.Generator().manual_seed(10 + i),
                     batch_timesteps=True)
        gap = ((r["total"] - nll) / d).mean().item()
        gaps[variance] = gap
        assert gap == pytest.approx(expected_gap_per_dim(betas, m, s, variance), abs=0.06), variance
        assert (r["prior"] / d < 1e-4).all()
        bpd_nll = nll.mean().item() / (d * math.log(2))
        assert r["bpd"].mean().item() == pytest.approx(bpd_nll + gap / math.log(2), rel=1e-12)
    assert gaps["posterior"] > gaps["beta"] + 0.3
    assert abs(gaps["beta"]) < 0.06

    # A wrong model: predicting no noise at all gives a far worse bound.
    bad = ddpm_vlb(lambda x, t: torch.zeros_like(x), x0[:256], betas, W, variance="beta",
                   generator=torch.Generator().manual_seed(12), batch_timesteps=True)
    assert ((bad["total"] - nll[:256]) / d).mean().item() > 1.0


def test_batched_and_looped_timesteps_agree_and_eps_fn_contract():
    betas = linear_betas(20, 1e-3, 0.3)
    x0 = gaussian_data(5, 2 * 3, 0.0, 0.3, seed=3).reshape(5, 2, 3)
    calls = []

    def eps_fn(x, t):
        assert not torch.is_grad_enabled()
        assert t.dtype == torch.long and t.shape == (x.shape[0],) and 0 <= t.min() and t.max() < 20
        calls.append(x.shape[0])
        return 0.5 * torch.tanh(x) + 0.01 * t.reshape(-1, 1, 1)

    looped = ddpm_vlb(eps_fn, x0, betas, W, generator=torch.Generator().manual_seed(4), progress=True)
    assert calls == [5] * 20
    calls.clear()
    batched = ddpm_vlb(eps_fn, x0, betas, W, generator=torch.Generator().manual_seed(4), batch_timesteps=True)
    assert calls == [100]
    for key in ("total", "prior", "diffusion", "decoder", "bpd", "terms"):
        torch.testing.assert_close(batched[key], looped[key], rtol=1e-12, atol=1e-12)
    assert looped["nfe"] == batched["nfe"] == 20
    again = ddpm_vlb(eps_fn, x0, betas, W, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(again["diffusion"], looped["diffusion"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(betas=torch.ones(2, 3) * 0.1), "1-D"),
    (dict(betas=torch.tensor([0.1, 1.0])), r"\(0, 1\)"),
    (dict(betas=torch.tensor([0.0, 0.1])), r"\(0, 1\)"),
    (dict(bin_width=0.0), "bin_width"),
    (dict(variance="learned"), "variance"),
    (dict(x0=torch.zeros(4)), "shape"),
    (dict(x0=torch.full((2, 3), 1.5)), r"\[-1, 1\]"),
    (dict(eps_fn=lambda x, t: x[:, :1]), "shaped like"),
])
def test_vlb_rejects_bad_input(kwargs, message):
    args = dict(eps_fn=lambda x, t: torch.zeros_like(x), x0=torch.zeros(2, 3), betas=linear_betas(5, 0.01, 0.1),
                bin_width=W)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ddpm_vlb(**args)


# --- the probability-flow likelihood -------------------------------------------------------------


def test_dormand_prince_meets_its_tolerance_on_known_solutions():
    from ncsn.solvers import dormand_prince

    # dy/dt = -2 t y: y = y0 exp(-t^2); and a rotation dy/dt = (y2, -y1)
    y0 = (torch.tensor([1.0, 3.0], dtype=torch.float64),)
    (y1,), nfe = dormand_prince(lambda t, y: (-2 * t * y[0],), 0.0, 2.0, y0, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y1, y0[0] * math.exp(-4.0), rtol=1e-6, atol=0)
    (loose,), nfe_loose = dormand_prince(lambda t, y: (-2 * t * y[0],), 0.0, 2.0, y0, rtol=1e-3, atol=1e-3)
    assert nfe_loose < nfe  # looser tolerance, fewer evaluations
    rot = (torch.tensor([1.0, 0.0], dtype=torch.float64),)
    (end,), _ = dormand_prince(lambda t, y: (torch.stack([y[0][1], -y[0][0]]),), 0.0, math.pi, rot, rtol=1e-9,
                               atol=1e-9)
    torch.testing.assert_close(end, torch.tensor([-1.0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="not finite|step size vanished"):
        dormand_prince(lambda t, y: (y[0] / (1.0 - t),), 0.0, 2.0, y0)


def test_ode_log_likelihood_of_the_mixture_matches_its_closed_form():
    from ncsn.data.toy import GaussianMixture, paper_mixture
    from ncsn.likelihood import log_likelihood

    mix = paper_mixture()
    mix = GaussianMixture(mix.means.double(), mix.stds.double(), mix.weights.double())
    x = mix.sample(500, generator=torch.Generator().manual_seed(0))
    logp, nfe = log_likelihood(mix.score, x, 0.01, 500.0)  # D = 2: the exact trace
    exact = mix.log_prob(x, 0.01)  # the mixture smoothed at sigma_min
    assert (logp - exact).abs().mean().item() < 0.02
    assert 20 < nfe < 1000
    # the prior's mismatch shrinks as sigma_max grows: with sigma_max = 20 the error is visible
    coarse, _ = log_likelihood(mix.score, x, 0.01, 20.0)
    assert (coarse - exact).abs().mean().item() > 0.05


def correlated_gaussian(dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64) * 0.15
    cov = a @ a.T + 0.2 * torch.eye(dim, dtype=torch.float64)

    def score(x, sigma):
        return -torch.linalg.solve(cov + sigma[0] ** 2 * torch.eye(dim, dtype=x.dtype), x.T).T

    return cov, score, gen


def test_ode_log_likelihood_with_hutchinson_probes_matches_a_16d_gaussian():
    from ncsn.likelihood import log_likelihood

    dim = 16
    cov, score, gen = correlated_gaussian(dim, seed=1)
    x = (torch.linalg.cholesky(cov) @ torch.randn(dim, 2000, generator=gen, dtype=torch.float64)).T
    smoothed = torch.distributions.MultivariateNormal(torch.zeros(dim, dtype=torch.float64),
                                                      cov + 1e-4 * torch.eye(dim, dtype=torch.float64))
    exact = smoothed.log_prob(x)
    estimate, _ = log_likelihood(score, x, 0.01, 100.0, n_probes=4, generator=torch.Generator().manual_seed(2))
    assert abs((estimate - exact).mean().item()) < 0.02  # unbiased: right on average
    assert (estimate - exact).abs().mean().item() > 0.1  # ... though each sample's estimate is noisy
    exact_trace, _ = log_likelihood(score, x[:200], 0.01, 100.0, trace="exact")
    assert (exact_trace - exact[:200]).abs().mean().item() < 0.02


def test_ode_log_likelihood_of_a_vp_model_through_its_ve_form():
    from _gaussians import vp_gaussian_score
    from ncsn.likelihood import log_likelihood
    from ncsn.processes import ve_view, vp_process

    v = 0.16
    process = vp_process(1000)
    vp_score = vp_gaussian_score(v)

    hi, lo = float(process.noise_levels.max()), float(process.noise_levels.min())
    x = math.sqrt(v) * torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logp, _ = log_likelihood(ve_view(vp_score, process), x, lo, hi, prior_std=math.sqrt(1 + hi**2))
    exact = torch.distributions.Normal(0.0, math.sqrt(v + lo**2)).log_prob(x).sum(1)
    assert (logp - exact).abs().mean().item() < 0.02
