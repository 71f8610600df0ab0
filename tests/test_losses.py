"""Score-matching objectives: the equivalences of Hyvarinen (2005), Vincent (2011) and Song et al. (2019).

The identities hold in expectation. For a linear score s(x) = -A x + b every objective is a
quadratic form in the first two sample moments of the batch, so on a batch whose sample mean
and covariance are exactly the population ones ("whitened") they hold exactly: the tests
below are deterministic and tight (float64, 1e-10).
"""

import copy

import pytest
import torch
from torch import nn

from ncsn.losses import EnergyScore, dsm, exact_sm, exact_sm_loop, explicit_sm, ncsn_loss, sliced_sm
from ncsn.score import call_score, takes_sigma

DIM = 3
MU = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
CHOL = torch.tensor([[1.5, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 1.1]], dtype=torch.float64)
SIGMA = CHOL @ CHOL.T


def whitened(n, dim, seed):
    """n x dim standard normal rows with sample mean exactly 0 and sample covariance (1/n) exactly I."""
    w = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = w - w.mean(0)
    chol = torch.linalg.cholesky(w.T @ w / n)
    return torch.linalg.solve_triangular(chol, w.T, upper=False).T


class Linear(nn.Module):
    """s(x) = -A x + b."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = nn.Parameter(a.clone()), nn.Parameter(b.clone())

    def forward(self, x):
        return -x @ self.a.T + self.b


def random_linear(seed):
    gen = torch.Generator().manual_seed(seed)
    return Linear(torch.randn(DIM, DIM, generator=gen, dtype=torch.float64),
                  torch.randn(DIM, generator=gen, dtype=torch.float64))


def gaussian_score(x, mean, cov):
    return -torch.linalg.solve(cov, (x - mean).T).T


def mlp(dim, hidden=32, out=None, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus(),
                         nn.Linear(hidden, out or dim)).double()


def test_explicit_minus_exact_is_the_same_constant():
    # Hyvarinen (2005), Theorem 1: explicit = exact + 1/2 E||grad log p||^2 = exact + 1/2 tr(Sigma^-1) for a Gaussian
    x = MU + whitened(500, DIM, seed=0) @ CHOL.T
    true = gaussian_score(x, MU, SIGMA)
    constant = 0.5 * torch.linalg.inv(SIGMA).trace().item()
    for seed in range(3):
        model = random_linear(seed)
        gap = explicit_sm(model, x, true) - exact_sm(model, x)
        assert gap.item() == pytest.approx(constant, abs=1e-10)


def test_explicit_on_smoothed_data_minus_dsm_is_the_same_constant():
    # Vincent (2011): explicit SM on q_sigma = p * N(0, sigma^2 I) equals DSM up to a constant;
    # for Gaussian p it is 1/2 tr((Sigma + sigma^2 I)^-1) - D / (2 sigma^2)
    sigma = 0.7
    w = whitened(600, 2 * DIM, seed=1)  # data and noise jointly whitened: no sample cross-covariance
    x, z = MU + w[:, :DIM] @ CHOL.T, w[:, DIM:]
    x_noisy = x + sigma * z
    smoothed_cov = SIGMA + sigma**2 * torch.eye(DIM, dtype=torch.float64)
    true = gaussian_score(x_noisy, MU, smoothed_cov)
    constant = 0.5 * torch.linalg.inv(smoothed_cov).trace().item() - DIM / (2 * sigma**2)
    for seed in range(3):
        model = random_linear(seed)
        gap = explicit_sm(model, x_noisy, true) - dsm(model, x, sigma, noise=z)
        assert gap.item() == pytest.approx(constant, abs=1e-10)


def test_true_score_is_the_minimiser_of_exact_sm_and_dsm():
    x = MU + whitened(400, DIM, seed=2) @ CHOL.T
    precision = torch.linalg.inv(SIGMA)
    best = Linear(precision, precision @ MU)
    grads = torch.autograd.grad(exact_sm(best, x), [best.a, best.b])
    assert max(g.abs().max().item() for g in grads) < 1e-10
    off = Linear(precision + 0.1, precision @ MU)
    assert torch.autograd.grad(exact_sm(off, x), off.a)[0].abs().max() > 1e-2


@pytest.mark.parametrize("dist, variance_reduced, tol", [  # tol ~ 5 standard errors of the estimate
    ("gaussian", False, 0.008), ("gaussian", True, 0.0016), ("rademacher", False, 0.006), ("rademacher", True, 0.0013),
])
def test_sliced_sm_averages_to_exact_sm(dist, variance_reduced, tol):
    # Song et al. (2019): E_v[v^T J v] = tr(J) and E_v[(v^T s)^2] = ||s||^2 for E[v v^T] = I
    model = mlp(DIM, seed=3)
    x = torch.randn(64, DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = exact_sm(model, x).item()
    gen = torch.Generator().manual_seed(5)
    sliced = sliced_sm(model, x, n_projections=2000, dist=dist, variance_reduced=variance_reduced, generator=gen)
    assert sliced.item() == pytest.approx(exact, abs=tol)
    assert abs(exact) > 10 * tol  # the comparison is not trivially small


def test_sliced_sm_with_rademacher_projections_is_exact_for_diagonal_jacobians():
    # v_i^2 = 1, so v^T J v = tr(J) exactly when J is diagonal (an elementwise score)
    def elementwise(x):
        return -torch.tanh(x) * 2.0 + x**3 * 0.1

    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sliced = sliced_sm(elementwise, x, dist="rademacher", variance_reduced=True,
                       generator=torch.Generator().manual_seed(7))
    assert sliced.item() == pytest.approx(exact_sm(elementwise, x).item(), abs=1e-12)


def test_ncsn_loss_at_a_single_level_is_weighted_dsm():
    model = mlp(DIM, seed=8)
    x = torch.randn(32, DIM, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z = torch.randn(32, DIM, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    sigma = 0.4
    plain = dsm(model, x, sigma, noise=z)
    sigmas = torch.tensor([sigma], dtype=torch.float64)
    assert ncsn_loss(model, x, sigmas, weighting="none", noise=z).item() == pytest.approx(plain.item(), rel=1e-12)
    assert ncsn_loss(model, x, sigmas, noise=z).item() == pytest.approx(sigma**2 * plain.item(), rel=1e-12)


def test_ncsn_loss_averages_sigma2_weighted_dsm_over_levels():
    def conditional(x, sigma):  # a noise-conditional score that uses its (N,) sigma
        return -x / (1.0 + sigma[:, None] ** 2) + torch.sin(x)

    x = torch.randn(40, DIM, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    z = torch.randn(40, DIM, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    sigmas = torch.tensor([2.0, 0.5], dtype=torch.float64)
    levels = torch.tensor([0, 1] * 20)
    total = ncsn_loss(conditional, x, sigmas, levels=levels, noise=z)
    per_level = [sigmas[i] ** 2 * dsm(conditional, x[levels == i], sigmas[i], noise=z[levels == i]) for i in (0, 1)]
    assert total.item() == pytest.approx(((per_level[0] + per_level[1]) / 2).item(), rel=1e-12)


def test_ncsn_loss_is_reproducible_from_its_generator():
    model = mlp(DIM, seed=13)
    x = torch.randn(16, DIM, dtype=torch.float64)
    sigmas = torch.tensor([1.0, 0.1], dtype=torch.float64)
    a = ncsn_loss(model, x, sigmas, generator=torch.Generator().manual_seed(0))
    b = ncsn_loss(model, x, sigmas, generator=torch.Generator().manual_seed(0))
    c = ncsn_loss(model, x, sigmas, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item() != c.item()


def test_exact_sm_matches_the_reference_loop_in_value_and_gradient():
    torch.manual_seed(14)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 24), nn.Softplus(), nn.Linear(24, 12),
                        nn.Unflatten(1, (3, 2, 2))).double()
    x = torch.randn(10, 3, 2, 2, dtype=torch.float64)
    params = list(net.parameters())
    reference = exact_sm_loop(net, x)
    ref_grads = torch.autograd.grad(reference, params)
    for chunk in (None, 5):
        value = exact_sm(net, x, chunk_size=chunk)
        assert value.item() == pytest.approx(reference.item(), rel=1e-12)
        for g, r in zip(torch.autograd.grad(value, params), ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_energy_score_of_a_quadratic_energy():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64)
    def flat_energy(v):
        return 0.5 * ((v @ a) * v).sum(dim=1)

    def column_energy(v):
        return flat_energy(v)[:, None]

    for energy in (flat_energy, column_energy):
        torch.testing.assert_close(EnergyScore(energy)(x), -x @ a)
    conditional = EnergyScore(lambda v, sigma: (v**2).sum(dim=1) / (2 * sigma**2))
    sigma = torch.full((7,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(conditional(x, sigma), -x / 0.25)
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, 1\)"):
        EnergyScore(lambda v: v)(x)


class Quadratic(nn.Module):
    """E(x) = 1/2 x^T W x, whose score is -(W + W^T)/2 x."""

    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.eye(dim, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * ((x @ self.w) * x).sum(dim=1)


def test_energy_score_takes_sigma_exactly_when_its_energy_does():
    unconditional = EnergyScore(Quadratic(DIM))
    conditional = EnergyScore(lambda v, sigma: (v**2).sum(dim=1) / sigma)
    assert not takes_sigma(unconditional) and takes_sigma(conditional)
    x = torch.randn(5, DIM, dtype=torch.float64)
    torch.testing.assert_close(call_score(unconditional, x), -x)  # no sigma needed
    with pytest.raises(TypeError, match="pass sigma"):
        call_score(conditional, x)
    copied = copy.deepcopy(unconditional)  # as for EMA weights: the copy uses its own energy
    with torch.no_grad():
        copied.energy_net.w.mul_(2.0)
    torch.testing.assert_close(copied(x), -2.0 * x)
    torch.testing.assert_close(unconditional(x), -x)


def test_energy_trains_through_exact_sm_to_the_precision_matrix():
    x = whitened(300, DIM, seed=15) @ CHOL.T  # zero mean, covariance SIGMA
    energy = Quadratic(DIM)
    score = EnergyScore(energy)
    optimizer = torch.optim.Adam(energy.parameters(), lr=0.1)
    for _ in range(200):
        optimizer.zero_grad()
        exact_sm(score, x).backward()
        optimizer.step()
    learned = 0.5 * (energy.w + energy.w.T).detach()
    torch.testing.assert_close(learned, torch.linalg.inv(SIGMA), atol=1e-3, rtol=0)


@pytest.mark.parametrize("objective", ["exact", "sliced", "dsm"])
def test_energy_score_gives_the_objectives_of_the_equivalent_score(objective):
    # second derivatives through -grad E must give what the closed-form score -Sym(W) x gives
    x = torch.randn(20, DIM, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    energy = Quadratic(DIM)
    with torch.no_grad():
        energy.w.copy_(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(17)))

    def direct(v):
        return -v @ (0.5 * (energy.w + energy.w.T))

    def run(score_fn):
        if objective == "exact":
            return exact_sm(score_fn, x)
        if objective == "sliced":
            return sliced_sm(score_fn, x, n_projections=3, generator=torch.Generator().manual_seed(18))
        return dsm(score_fn, x, 0.3, generator=torch.Generator().manual_seed(19))

    via_energy, via_score = run(EnergyScore(energy)), run(direct)
    assert via_energy.item() == pytest.approx(via_score.item(), rel=1e-12)
    torch.testing.assert_close(torch.autograd.grad(via_energy, energy.w)[0],
                               torch.autograd.grad(via_score, energy.w)[0])


def test_bad_input_is_rejected_with_a_message():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="dist must be one of gaussian, rademacher"):
        sliced_sm(lambda v: -v, x, dist="uniform")
    with pytest.raises(ValueError, match="weighting must be one of"):
        ncsn_loss(lambda v, s: -v, x, torch.tensor([1.0]), weighting="sigma")
    with pytest.raises(ValueError, match="true_score has shape"):
        explicit_sm(lambda v: -v, x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="noise has shape"):
        dsm(lambda v: -v, x, 0.1, noise=torch.zeros(3, 2))
    with pytest.raises(TypeError, match="noise-conditional"):
        exact_sm(lambda v, s: -v, x)
