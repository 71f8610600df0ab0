"""Predictor-corrector, probability-flow ODE and consistent annealing against closed forms and the NCSN toy."""

import math

import pytest
import torch

from _gaussians import ve_gaussian_score as gaussian_score
from _gaussians import vp_gaussian_score
from ncsn.data.toy import GaussianMixture, paper_mixture
from ncsn.metrics.toy import mode_weights
from ncsn.processes import ve_view, vp_process
from ncsn.sampling import (ancestral_etas, annealed_langevin, consistent_annealing, consistent_eta_range, pf_ode,
                           predictor_corrector)
from ncsn.sigmas import geometric, karras


def mixture_start(mix, sigma_max: float, n: int, seed: int) -> torch.Tensor:
    return sigma_max * torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def double(mix: GaussianMixture) -> GaussianMixture:
    return GaussianMixture(mix.means.double(), mix.stds.double(), mix.weights.double())


def assert_unit_modes(x: torch.Tensor, mix: GaussianMixture) -> None:
    """Each mode's samples have the mode's unit standard deviation."""
    nearest = mix.nearest_mode(x)
    for k in range(2):
        torch.testing.assert_close(x[nearest == k].std(0), torch.ones(2, dtype=torch.float64), atol=0.08, rtol=0)


def test_karras_levels_follow_the_formula_and_tend_to_geometric():
    s = karras(0.002, 80.0, 5, rho=7.0, dtype=torch.float64)
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    expected = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(s, expected)
    assert s[0] == 80.0 and s[-1] == 0.002 and bool((s[1:] < s[:-1]).all())
    torch.testing.assert_close(karras(0.01, 5.0, 10, rho=1e6, dtype=torch.float64),
                               geometric(5.0, 0.01, 10, dtype=torch.float64), rtol=1e-4, atol=0)
    torch.testing.assert_close(karras(1.0, 3.0, 3, rho=1.0), torch.tensor([3.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras(2.0, 1.0, 4)


def test_pf_ode_reproduces_the_mixture_weights_and_is_deterministic():
    # from N(0, sigma_max^2 I): sigma_max must dwarf the data's offset (mean (3, 3)) for the prior to be right
    mix = double(paper_mixture())
    sigmas = karras(0.01, 200.0, 40, dtype=torch.float64)
    x0 = mixture_start(mix, 200.0, 4000, seed=0)
    x = pf_ode(mix.score, x0, sigmas)
    weights = mode_weights(x, mix.means)
    assert abs(weights[0] - 0.2) < 0.03 and abs(weights[1] - 0.8) < 0.03
    assert_unit_modes(x, mix)
    assert torch.equal(x, pf_ode(mix.score, x0, sigmas))  # deterministic given x
    assert torch.equal(x0, mixture_start(mix, 200.0, 4000, seed=0))  # input kept


def test_heun_lands_on_the_exact_variance_far_closer_than_euler():
    # data N(0, v): the exact flow maps N(0, v + sigma_max^2) onto N(0, v + sigma_min^2) ... and then to N(0, v)
    # by the final Tweedie step's exact linear map; the ODE solvers' error is all in the variance.
    v, sigma_max = 0.25, 20.0
    x0 = math.sqrt(v + sigma_max**2) * torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64)
    exact_ratio = math.sqrt(v / (v + sigma_max**2))  # the exact flow scales each sample by this factor
    for n_heun, max_err, factor in ((20, 0.03, 2), (50, 0.005, 5)):  # 39 and 99 NFE
        heun = pf_ode(gaussian_score(v), x0, karras(0.01, sigma_max, n_heun, dtype=torch.float64), solver="heun")
        euler = pf_ode(gaussian_score(v), x0, karras(0.01, sigma_max, 2 * n_heun - 1, dtype=torch.float64),
                       solver="euler")
        heun_err = (heun / x0 / exact_ratio - 1).abs().max().item()
        euler_err = (euler / x0 / exact_ratio - 1).abs().max().item()
        assert heun_err < max_err
        assert euler_err > factor * heun_err


def test_pc_and_consistent_annealing_recover_the_paper_mixture_weights():
    # Song & Ermon (2019), Section 3.2: 1/5 N((-5,-5), I) + 4/5 N((5,5), I), with the exact smoothed scores
    mix = double(paper_mixture())
    x0 = mixture_start(mix, 200.0, 4000, seed=1)
    sigmas = geometric(200.0, 0.1, 300, dtype=torch.float64)
    pc = predictor_corrector(mix.score, x0, sigmas, generator=torch.Generator().manual_seed(2))
    cas = consistent_annealing(mix.score, x0, sigmas, generator=torch.Generator().manual_seed(3))
    for x in (pc, cas):
        weights = mode_weights(x, mix.means)
        assert abs(weights[0] - 0.2) < 0.03, weights
        assert_unit_modes(x, mix)
    # a full Tweedie step per level (eta = 1) moves x to E[x0 | x], not x0: the heavier mode gains
    biased = consistent_annealing(mix.score, x0, sigmas, eta=0.9, generator=torch.Generator().manual_seed(3))
    assert mode_weights(biased, mix.means)[0] < 0.18


def test_pc_on_a_gaussian_ends_with_the_data_variance_for_ve_and_vp():
    # data N(0, v): every predictor (and the corrector) keeps the exact marginals up to discretisation error
    v = 0.09
    gen = torch.Generator().manual_seed(0)
    sigmas = geometric(10.0, 0.01, 200, dtype=torch.float64)
    x_ve = math.sqrt(v + 100.0) * torch.randn(20_000, 1, generator=gen, dtype=torch.float64)
    for predictor in ("reverse_diffusion", "ancestral"):
        out = predictor_corrector(gaussian_score(v), x_ve, sigmas, predictor=predictor, generator=gen)
        assert abs(out.var().item() / v - 1) < 0.05, predictor
    # VP kernels N(a x0, s^2): score of the marginal N(0, a^2 v + s^2)
    process = vp_process(200, 1e-4, 0.1)
    stds = process.stds.flip(0)
    scales = process.scales.flip(0)
    vp_score = vp_gaussian_score(v)

    x_vp = torch.randn(20_000, 1, generator=gen, dtype=torch.float64) * math.sqrt(
        float(scales[0]) ** 2 * v + float(stds[0]) ** 2)
    for predictor in ("reverse_diffusion", "ancestral"):
        out = predictor_corrector(vp_score, x_vp, stds, scales=scales, predictor=predictor, generator=gen)
        assert abs(out.var().item() / v - 1) < 0.05, predictor


def test_a_vp_model_follows_the_ve_ode_through_ve_view():
    # data N(0, v) in a VP process: x_t ~ N(0, abar v + 1 - abar); y = x / a ~ N(0, v + sigma~^2)
    v = 0.16
    process = vp_process(1000)
    y_score = ve_view(vp_gaussian_score(v), process)
    y = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(y_score(y, sigma), gaussian_score(v)(y, sigma))
    hi, lo = float(process.noise_levels.max()), float(process.noise_levels.min())
    x_T = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y_T = x_T * math.sqrt(1 + hi**2)
    out = pf_ode(y_score, y_T, karras(lo, hi, 60, dtype=torch.float64))
    exact = math.sqrt(v / (v + hi**2))  # the exact flow scales every sample by this
    assert (out / y_T / exact - 1).abs().max().item() < 0.01


def test_consistent_annealing_with_the_ancestral_etas_is_the_ancestral_predictor():
    # eta = 1 - r^2 on geometric levels: eta sigma_i^2 = sigma_i^2 - sigma_{i+1}^2 and
    # beta sigma_{i+1} = sigma_{i+1} sqrt(1 - r^2), the ancestral step's mean and noise
    mix = double(paper_mixture())
    sigmas = geometric(50.0, 0.01, 30, dtype=torch.float64)
    x0 = mixture_start(mix, 50.0, 500, seed=0)
    cas = consistent_annealing(mix.score, x0, sigmas, generator=torch.Generator().manual_seed(1))
    anc = predictor_corrector(mix.score, x0, sigmas, corrector="none", predictor="ancestral",
                              generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cas, anc, rtol=1e-9, atol=1e-9)
    # on any levels, with each level's own eta
    uneven = karras(0.01, 50.0, 30, dtype=torch.float64)
    torch.testing.assert_close(
        consistent_annealing(mix.score, x0, uneven, generator=torch.Generator().manual_seed(1)),
        predictor_corrector(mix.score, x0, uneven, corrector="none", predictor="ancestral",
                            generator=torch.Generator().manual_seed(1)), rtol=1e-9, atol=1e-9)
    # and with the smallest eta it is deterministic: DDIM's step, which in the VE form is Euler's
    low, _ = consistent_eta_range(sigmas)
    ddim = consistent_annealing(mix.score, x0, sigmas, eta=low, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddim, pf_ode(mix.score, x0, sigmas, solver="euler"), rtol=1e-9, atol=1e-9)


def test_consistent_annealing_keeps_each_level_on_schedule():
    # data at a point (0): x = sigma_i z exactly after each step, for any eta in the consistent range
    point = lambda x, sigma: -x / sigma.reshape(-1, 1) ** 2  # noqa: E731
    sigmas = geometric(5.0, 0.05, 12, dtype=torch.float64)
    low, high = consistent_eta_range(sigmas)
    assert high == 1.0 and low == pytest.approx(1 - float(sigmas[1] / sigmas[0]))
    x0 = 5.0 * torch.randn(50_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    for eta in (low, ancestral_etas(sigmas)[0], 1.0):
        consistent_annealing(point, x0, sigmas, eta=eta, denoise=False, generator=torch.Generator().manual_seed(1),
                             callback=lambda i, step, x: seen.append((i, x.std().item())))
        for i, std in seen:
            assert std == pytest.approx(float(sigmas[i + 1]), rel=0.02)
        seen.clear()
    with pytest.raises(ValueError, match="eta must lie in"):
        consistent_annealing(point, x0, sigmas, eta=0.1)


def test_samplers_evaluate_only_the_given_levels():
    # a model trained at fixed levels: pf_ode, PC and CAS never ask for other sigmas
    sigmas = geometric(5.0, 0.01, 10)
    asked = set()

    def score(x, sigma):
        asked.update(round(v, 6) for v in sigma.tolist())
        return -x / sigma.reshape(-1, 1) ** 2

    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)) * 5
    allowed = {round(v, 6) for v in sigmas.tolist()}
    for run in (lambda: pf_ode(score, x0, sigmas), lambda: predictor_corrector(score, x0, sigmas),
                lambda: consistent_annealing(score, x0, sigmas), lambda: annealed_langevin(score, x0, sigmas, 1e-3, 2)):
        asked.clear()
        run()
        assert asked <= allowed and asked


def test_sampler_arguments_are_checked():
    score = gaussian_score(1.0)
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="solver"):
        pf_ode(score, x, [1.0, 0.5], solver="rk4")
    with pytest.raises(ValueError, match="strictly decreasing"):
        pf_ode(score, x, [0.5, 1.0])
    with pytest.raises(ValueError, match="predictor"):
        predictor_corrector(score, x, [1.0, 0.5], predictor="euler_maruyama")
    with pytest.raises(ValueError, match="scales"):
        predictor_corrector(score, x, [1.0, 0.5], scales=[1.0])


# --- the samplers behind `ncsn sample / eval / inpaint` -------------------------------------------

TINY_UNET = ["training.batch_size=8", "training.n_iters=2", "training.snapshot_freq=2", "model.arch=unet",
             "model.ngf=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "sampling.batch_size=16"]

METHODS = {
    "annealed_langevin": ["sampling.n_steps_each=2"],
    "consistent_annealing": ["sampling.sigmas=geometric", "sampling.n_levels=12"],
    "predictor_corrector": ["sampling.n_corrector=2"],
    "pf_ode": ["sampling.sigmas=karras", "sampling.n_levels=6"],
    "ddpm": [],
}


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    from ncsn.cli import main

    runs = {}
    for process in ("ve", "vp"):
        run = tmp_path_factory.mktemp(process)
        extra = ["model.process=vp", "model.num_timesteps=20"] if process == "vp" else []
        assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress",
                     *_sets(TINY_UNET + extra)]) == 0
        runs[process] = run
    return runs


@pytest.mark.parametrize("process", ["ve", "vp"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_sampler_runs_a_model_and_spends_the_nfe_it_records(tiny_runs, process, method):
    from ncsn.build import load_score_model
    from ncsn.commands.sample import apply_sampling_overrides
    from ncsn.errors import UserError
    from ncsn.generate import generate, sampler_settings

    model, config, _ = load_score_model(tiny_runs[process])
    sets = [f"sampling.method={method}", *METHODS[method]]
    if method == "ddpm" and process == "ve":
        with pytest.raises(UserError, match="model.process=vp"):
            sampler_settings(apply_sampling_overrides(config, sets))
        return
    config = apply_sampling_overrides(config, sets)
    calls = []
    original = model.forward

    def counting(x, sigma, **kwargs):
        calls.append(x.shape[0])
        return original(x, sigma, **kwargs)

    model.forward = counting
    samples = generate(model, config, 5, seed=0, progress=False)
    settings = sampler_settings(config)
    assert samples.shape == (5, 1, 8, 8) and bool(torch.isfinite(samples).all())
    assert 0 <= samples.min() and samples.max() <= 1
    assert settings["sampler"] == method and len(calls) == settings["nfe"]  # the NFE recorded is the NFE spent
    again = generate(model, config, 5, seed=0, progress=False)
    assert torch.equal(samples, again)  # seeded


def test_a_fixed_level_network_refuses_levels_it_was_not_trained_at(tmp_path, capsys):
    from ncsn.cli import main

    run = tmp_path / "refinenet"
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress",
                 *_sets(["model.ngf=4", "training.n_iters=1", "training.batch_size=8"])]) == 0
    capsys.readouterr()
    out = str(tmp_path / "x.png")
    assert main(["sample", str(run), "--n", "2", "--out", out, "--no-progress", "--set", "sampling.method=pf_ode",
                 "--set", "sampling.sigmas=karras", "--set", "sampling.n_levels=5"]) == 2
    err = capsys.readouterr().err
    assert "was not trained at" in err and len(err.strip().splitlines()) == 1
    # at its own levels (all of them, or a subset) every sampler works
    for method in ("pf_ode", "predictor_corrector", "consistent_annealing"):
        assert main(["sample", str(run), "--n", "2", "--out", out, "--no-progress", "--set",
                     f"sampling.method={method}", "--set", "sampling.n_levels=5"]) == 0
    # inpainting has only annealed Langevin's conditional form
    assert main(["inpaint", str(run), "--n-images", "1", "--completions", "1", "--out", out, "--no-progress",
                 "--set", "sampling.method=pf_ode"]) == 2
    assert "no conditional form" in capsys.readouterr().err


def test_sampler_settings_are_checked_in_the_config():
    from ncsn.config import load_config
    from ncsn.errors import UserError

    for bad, message in ((["sampling.sigmas=cosine"], "sampling.sigmas"),
                         (["sampling.sigmas=karras"], "n_levels >= 2"),
                         (["sampling.solver=rk4"], "sampling.solver"),
                         (["sampling.predictor=none", "sampling.corrector=none"], "needs a corrector"),
                         (["sampling.eta=1.5"], "sampling.eta")):
        with pytest.raises(UserError, match=message):
            load_config("configs/digits.yaml", bad)
