"""MLP score and energy networks: shapes, noise conditioning, energy scores, a learned NCSN on the paper's mixture."""

import pytest
import torch

from ncsn.data.toy import paper_mixture
from ncsn.energy import EnergyScore
from ncsn.losses import exact_sm, exact_sm_loop
from ncsn.metrics.toy import mode_weights
from ncsn.models.mlp import EnergyMLP, ScoreMLP, log_sigma_features, unconditional
from ncsn.sampling import annealed_langevin, langevin
from ncsn.score import call_score, takes_sigma
from ncsn.sigmas import geometric
from ncsn.toy import single_cpu_thread, train_score


def seeded(model_cls, seed=0, **kwargs):
    torch.manual_seed(seed)
    return model_cls(**kwargs)


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_shapes_for_every_form_of_sigma(dim):
    x = torch.randn(7, dim)
    score, energy = seeded(ScoreMLP, dim=dim, hidden=16), seeded(EnergyMLP, dim=dim, hidden=16)
    for sigma in (0.3, torch.full((7,), 0.3), None):
        assert score(x, sigma).shape == (7, dim)
        assert energy(x, sigma).shape == (7,)
    # a float and the equal (N,) tensor are the same noise level
    assert torch.equal(score(x, 0.3), score(x, torch.full((7,), 0.3)))


def test_noise_conditioning_changes_the_output_per_sample():
    model = seeded(ScoreMLP, hidden=32)
    x = torch.randn(16, 2)
    low, high, none = model(x, 0.1), model(x, 10.0), model(x, None)
    assert (low - high).norm(dim=1).min() > 1e-3
    assert (low - none).norm(dim=1).min() > 1e-3  # no noise is its own level
    # each row sees only its own sigma
    sigmas = torch.rand(16) * 5 + 0.01
    batched = model(x, sigmas)
    single = torch.cat([model(x[i:i + 1], sigmas[i:i + 1]) for i in range(16)])
    torch.testing.assert_close(batched, single)


def test_log_sigma_features_are_unit_circles_and_separate_levels():
    sigma = geometric(100.0, 1e-3, 50, dtype=torch.float64)
    feats = log_sigma_features(sigma, 16)
    sin, cos = feats[:, :8], feats[:, 8:]
    torch.testing.assert_close(sin.square() + cos.square(), torch.ones(50, 8, dtype=torch.float64))
    # distinct levels get distinct features (no aliasing over 1e-3..1e2)
    gaps = torch.cdist(feats, feats) + torch.eye(50, dtype=torch.float64) * 10
    assert gaps.min() > 0.05


def test_scale_by_sigma_divides_the_output_by_sigma():
    plain = seeded(ScoreMLP, hidden=16)
    scaled = ScoreMLP(hidden=16, scale_by_sigma=True)
    scaled.load_state_dict(plain.state_dict())
    x, sigma = torch.randn(10, 2), torch.rand(10) + 0.1
    torch.testing.assert_close(scaled(x, sigma) * sigma[:, None], plain(x, sigma))
    torch.testing.assert_close(scaled(x, None), plain(x, None))  # no level, no scaling


def test_energy_score_is_minus_the_energy_gradient():
    energy = seeded(EnergyMLP, hidden=16).double()
    model = EnergyScore(energy)
    x, sigma = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5
    score = model(x, sigma)
    # central finite differences of E, coordinate by coordinate
    h = 1e-5
    fd = torch.stack([(energy(x + h * e, sigma) - energy(x - h * e, sigma)) / (2 * h)
                      for e in torch.eye(2, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(score, -fd, rtol=1e-6, atol=1e-8)


def test_energy_is_smooth_enough_for_exact_score_matching():
    """SiLU gives a continuous Hessian: its autograd value matches finite differences of the score."""
    model = EnergyScore(seeded(EnergyMLP, hidden=16).double())
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda inp: model(inp, 0.7), (x.requires_grad_(),))
    loss = exact_sm(EnergyScore(unconditional(model.energy_net)), x.detach())
    torch.testing.assert_close(loss, exact_sm_loop(EnergyScore(unconditional(model.energy_net)), x.detach()))
    loss.backward()
    # the score does not depend on the energy's read-out bias (E + c has the same score), but every hidden layer counts
    for layer in model.energy_net.layers:
        assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_unconditional_form_is_called_as_s_of_x():
    model = seeded(ScoreMLP, hidden=16)
    s = unconditional(model)
    assert takes_sigma(model) and not takes_sigma(s)
    x = torch.randn(5, 2)
    torch.testing.assert_close(call_score(s, x), model(x, None))
    assert not takes_sigma(EnergyScore(unconditional(EnergyMLP(hidden=8))))


def test_bad_shapes_and_settings_are_rejected():
    model = ScoreMLP(hidden=8)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        model(torch.randn(3, 4), 1.0)
    with pytest.raises(ValueError, match="sigma must be"):
        model(torch.randn(3, 2), torch.ones(4))
    with pytest.raises(ValueError, match="sigma_embed_dim"):
        ScoreMLP(sigma_embed_dim=7)
    with pytest.raises(ValueError, match="hidden"):
        EnergyMLP(hidden=0)


def test_learned_ncsn_recovers_the_mixture_weights_where_langevin_does_not():
    """Song & Ermon (2019), Section 3.2 / Figure 3, with a score network trained by ncsn_loss:
    annealed Langevin puts 1/5 of the samples in the small mode, plain Langevin about half."""
    mixture = paper_mixture()
    sigmas = geometric(20.0, 1.0, 10)  # the paper's levels for this mixture
    cpu = torch.device("cpu")
    with single_cpu_thread(cpu):
        model = seeded(ScoreMLP, hidden=32, scale_by_sigma=True)
        gen = torch.Generator().manual_seed(0)
        losses = train_score(model, mixture, "ncsn", sigmas, steps=600, generator=gen, batch_size=256, lr=5e-3,
                             progress=False)
        x0 = (torch.rand(1000, 2, generator=gen) * 2 - 1) * 8
        annealed = annealed_langevin(model, x0, sigmas, step_lr=0.1, n_steps_each=200, generator=gen)
        plain = langevin(model, x0, step_size=0.05, n_steps=1000, generator=gen, sigma=1.0)
    # the sigma^2-weighted loss is at least D/2 - (its minimum over s); it falls well below its start
    assert sum(losses[-50:]) / 50 < 0.5 * sum(losses[:10]) / 10
    small_annealed = mode_weights(annealed, mixture.means)[0]
    small_plain = mode_weights(plain, mixture.means)[0]
    assert abs(small_annealed - 0.2) < 0.05
    assert small_plain > 0.35
