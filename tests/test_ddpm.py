"""DDPM's ancestral sampler, the ScoreModel over both processes, and VP / U-Net runs through the one training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncsn.cli import main
from ncsn.data.toy import paper_mixture
from ncsn.processes import vp_process
from ncsn.sampling import ddpm_ancestral, tweedie_denoise
from ncsn.sigmas import ddpm_betas


def mixture_eps(mix, process):
    """The exact eps of a VP-perturbed mixture: q_t(x) = abar^(-D/2) p_sigma~(x / sqrt(abar)), so
    grad log q_t(x) = grad log p_sigma~(x / sqrt(abar)) / sqrt(abar) and eps = -sqrt(1 - abar) grad log q_t."""
    def eps(x, t):
        a = process.scales[t].to(x.dtype)
        s = process.stds[t].to(x.dtype)
        sigma = process.noise_levels[t].to(x.dtype)
        score = mix.score(x / a[:, None], sigma) / a[:, None]
        return -s[:, None] * score
    return eps


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ancestral_sampling_with_the_exact_eps_recovers_the_mixture_weights(variance):
    """Song & Ermon's 1/5 : 4/5 mixture (Figure 3), sampled by Ho et al.'s Algorithm 2 with its exact eps."""
    mix = paper_mixture()
    process = vp_process()
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(3000, 2, generator=gen)
    x0 = ddpm_ancestral(mixture_eps(mix, process), x_T, process.betas, variance=variance, generator=gen)
    small = (mix.nearest_mode(x0) == 0).float().mean().item()
    assert small == pytest.approx(0.2, abs=0.03)
    # and the modes have the data's spread: per-mode std ~ 1
    big = x0[mix.nearest_mode(x0) == 1]
    assert big.std(dim=0).mean().item() == pytest.approx(1.0, abs=0.1)


def test_ancestral_sampler_last_step_adds_no_noise_and_the_chain_is_reproducible():
    betas = ddpm_betas(50)
    seen = []

    def eps(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    a = ddpm_ancestral(eps, x, betas, generator=torch.Generator().manual_seed(1))
    b = ddpm_ancestral(lambda x_, t: torch.zeros_like(x_), x, betas, generator=torch.Generator().manual_seed(1))
    assert seen == list(range(49, -1, -1)) and torch.equal(a, b)
    # with eps = 0 every step divides by sqrt(alpha_t); the last one (t = 0) adds no noise
    steps = []
    ddpm_ancestral(lambda x_, t: torch.zeros_like(x_), x, betas, callback=lambda k, s, x_: steps.append(x_.clone()))
    assert torch.allclose(steps[-1], steps[-2] / torch.sqrt(1 - betas[0]).float())


def test_clipping_the_predicted_x0_equals_algorithm_2_when_nothing_is_clipped():
    process = vp_process(100)
    mix = paper_mixture()
    eps = mixture_eps(mix, process)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = ddpm_ancestral(eps, x, process.betas, generator=torch.Generator().manual_seed(3))
    wide = ddpm_ancestral(eps, x, process.betas, clip_x0=1e6, generator=torch.Generator().manual_seed(3))
    tight = ddpm_ancestral(eps, x, process.betas, clip_x0=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(plain, wide, atol=1e-8)
    assert tight.abs().max() <= 1.0 + 1e-6  # x0 = clipped prediction at the last step


def test_ancestral_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="variance"):
        ddpm_ancestral(lambda x, t: x, torch.zeros(1, 2), ddpm_betas(5), variance="learned")
    with pytest.raises(ValueError, match="betas"):
        ddpm_ancestral(lambda x, t: x, torch.zeros(1, 2), torch.tensor([0.5, 1.5]))


def test_tweedie_denoise_gives_the_posterior_mean_of_a_scaled_kernel():
    """x = a x0 + s z with x0 ~ N(0, 1): E[x0 | x] = a x / (a^2 + s^2)."""
    a, s = 0.6, 0.8  # a^2 + s^2 = 1 (VP)
    x = torch.linspace(-2, 2, 9)[:, None]
    score = lambda x_, sigma: -x_ / (a * a + s * s)  # noqa: E731  marginal N(0, a^2 + s^2)
    assert torch.allclose(tweedie_denoise(score, x, s, a), a * x / (a * a + s * s))


# ---- the score model over both processes --------------------------------------------------------------

def _config(*sets):
    from ncsn.config import load_config

    return load_config("configs/digits.yaml", ["model.ngf=8", *sets])


def test_one_network_answers_as_score_and_as_eps_at_sigma_or_at_a_timestep():
    from ncsn.build import build_score_model

    torch.manual_seed(0)
    model = build_score_model(_config("model.arch=unet", "model.process=vp", "model.ch_mult=[1,2]",
                                      "model.attn_resolutions=[]")).eval()
    with torch.no_grad():
        for p in model.net.parameters():  # leave the zero initialisation so the output is not identically 0
            p.add_(0.01 * torch.randn_like(p))
        x = torch.randn(3, 1, 8, 8)
        t = torch.tensor([0, 400, 999])
        std = model.process.stds[t].float()
        eps = model(x, None, index=t, eps=True)
        # through a float32 std the noise level near t = T is known to ~1e-3 (1 - s^2 ~ 4e-5): close, not equal
        assert torch.allclose(model(x, std, eps=True), eps, atol=5e-4)
        assert torch.allclose(model(x, std), -eps / std[:, None, None, None], rtol=1e-3, atol=1e-3)


def test_version_1_checkpoints_still_load_and_give_the_same_scores(tmp_path):
    from ncsn import checkpoint as ckpt
    from ncsn.build import load_score_model
    from ncsn.models.refinenet import RefineNet

    config = _config()
    torch.manual_seed(0)
    sigmas = torch.logspace(np.log10(5.0), -2, 10)
    net = RefineNet(1, 8, sigmas, scale_by_sigma=True)
    state = {"version": 1, "step": 7, "model": net.state_dict(), "ema": net.state_dict(), "config": {
        k: {kk: vv for kk, vv in v.items() if kk not in ("arch", "process", "num_timesteps", "beta_schedule",
                                                         "beta_start", "beta_end", "ch_mult", "num_res_blocks",
                                                         "attn_resolutions", "dropout", "objective", "warmup",
                                                         "method", "n_levels", "variance", "clip_x0")}
        for k, v in config.items()}}
    ckpt.save_checkpoint(tmp_path, 7, state)
    model, loaded, info = load_score_model(tmp_path)
    assert info["step"] == 7 and loaded["model"]["arch"] == "refinenet" and loaded["model"]["process"] == "ve"
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x, sigmas[3]), net.eval()(x, sigmas[3]))


def test_a_checkpoint_from_a_newer_format_is_refused(tmp_path, capsys):
    from ncsn import checkpoint as ckpt

    ckpt.save_checkpoint(tmp_path, 1, {"version": 99, "step": 1, "model": {}, "config": _config()})
    assert main(["sample", str(tmp_path), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "format version 99 is newer" in capsys.readouterr().err


@pytest.mark.parametrize("sets, message", [
    (["model.arch=transformer"], "model.arch = 'transformer' is out of range (allowed: one of refinenet, ncsnv2, ncsnv2_deeper, ncsnv2_deepest, unet)"),
    (["model.ch_mult=fast"], "list of integers"),
    (["model.process=vp", "model.beta_start=0.5", "model.beta_end=0.1"], "beta_start"),
    (["training.objective=ddpm"], "needs model.process=vp"),
])
def test_bad_model_settings_are_one_line_errors(tmp_path, capsys, sets, message):
    args = [a for s in sets + ["training.n_iters=1"] for a in ("--set", s)]
    assert main(["train", "configs/digits.yaml", "--workdir", str(tmp_path / "w"), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_warmup_rises_linearly_then_holds():
    from ncsn.train import warmup_lr

    assert [warmup_lr(1e-3, 4, s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert warmup_lr(1e-3, 0, 0) == 1e-3


TINY_UNET = ["training.batch_size=8", "training.n_iters=4", "training.snapshot_freq=2", "training.log_freq=1",
             "model.arch=unet", "model.ngf=8", "model.ch_mult=[1,2]", "model.attn_resolutions=[4]",
             "model.dropout=0.1", "optim.warmup=3", "sampling.batch_size=16"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


@pytest.mark.parametrize("process", ["ve", "vp"])
def test_unet_trains_resumes_bit_exactly_and_samples_on_either_process(tmp_path, process):
    """Dropout included: the network's randomness is seeded per step, so an interrupted run resumes exactly."""
    from ncsn import checkpoint as ckpt

    sets = _sets(TINY_UNET + [f"model.process={process}", "model.num_timesteps=20"])
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", "configs/digits.yaml", "--workdir", str(full), "--device", "cpu", "--no-progress", *sets]) == 0
    assert main(["train", "configs/digits.yaml", "--workdir", str(part), "--device", "cpu", "--no-progress", *sets,
                 "--set", "training.n_iters=2"]) == 0
    assert main(["train", "configs/digits.yaml", "--workdir", str(part), "--device", "cpu", "--no-progress", "--resume",
                 *sets]) == 0
    a, b = ckpt.load_checkpoint(full), ckpt.load_checkpoint(part)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lrs = [float(r.split(",")[2]) for r in (full / "log.csv").read_text().splitlines()[1:]]
    assert lrs == pytest.approx([1e-3 / 3, 1e-3 * 2 / 3, 1e-3, 1e-3])  # lr of the step just taken, warm-up 3

    npz = tmp_path / "s.npz"
    assert main(["sample", str(full), "--n", "5", "--out", str(tmp_path / "s.png"), "--npz", str(npz),
                 "--strip", str(tmp_path / "strip.png"), "--no-progress", "--set", "sampling.n_steps_each=2"]) == 0
    with np.load(npz) as data:
        samples = data["samples"]
        import json

        provenance = json.loads(str(data["provenance"]))
    assert samples.shape == (5, 1, 8, 8) and np.isfinite(samples).all()
    assert provenance["arch"] == "unet" and provenance["process"] == process
    assert provenance["sampler"] == ("annealed_langevin" if process == "ve" else "ddpm")
    assert provenance["nfe"] == (10 * 2 + 1 if process == "ve" else 20)
    assert (tmp_path / "strip.png").exists()


def test_vp_models_sample_with_annealed_langevin_too_and_inpaint_in_their_ve_form(tmp_path, capsys):
    sets = _sets(TINY_UNET + ["model.process=vp", "model.num_timesteps=30", "training.n_iters=2"])
    run = tmp_path / "vp"
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress", *sets]) == 0
    npz = tmp_path / "al.npz"
    assert main(["sample", str(run), "--n", "3", "--out", str(tmp_path / "al.png"), "--npz", str(npz), "--no-progress",
                 "--set", "sampling.method=annealed_langevin", "--set", "sampling.n_levels=5",
                 "--set", "sampling.n_steps_each=2"]) == 0
    with np.load(npz) as data:
        assert data["samples"].shape == (3, 1, 8, 8)
    out = tmp_path / "i.png"
    assert main(["inpaint", str(run), "--n-images", "1", "--completions", "2", "--out", str(out), "--no-progress",
                 "--set", "sampling.n_levels=5", "--set", "sampling.n_steps_each=2"]) == 0
    assert out.exists() and "inpainted 1 image(s) x 2 completions" in capsys.readouterr().out


def test_ddpm_sampler_on_a_ve_model_is_a_one_line_error(tmp_path, capsys):
    run = tmp_path / "ve"
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress",
                 *_sets(TINY_UNET + ["training.n_iters=1"])]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2", "--out", str(tmp_path / "x.png"), "--no-progress",
                 "--set", "sampling.method=ddpm"]) == 2
    assert "needs a model trained with model.process=vp" in capsys.readouterr().err


def test_eval_reports_both_likelihoods_of_a_vp_model_labelled_with_their_protocols(tmp_path, capsys):
    sets = _sets(TINY_UNET + ["model.process=vp", "model.num_timesteps=10", "training.n_iters=2"])
    run = tmp_path / "vp"
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress", *sets]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--metrics", "bpd", "--real-n", "6", "--no-progress", "--out", str(out),
                 "--ode-tol", "1e-3"]) == 0
    import json

    row = json.loads(out.read_text())["results"][0]
    vlb_value, vlb = row["protocol"]["likelihood"]["bpd_vlb"]
    assert vlb["split"] == "digits/test" and vlb["n"] == 6 and vlb["grey_levels"] == 17
    assert vlb["nfe_per_image"] == 10 and "variational bound" in vlb["bound"]
    ode_value, ode = row["protocol"]["likelihood"]["bpd"]
    assert "probability-flow ODE" in ode["bound"] and ode["dequantisation"].startswith("uniform")
    assert ode["nfe_per_image"] > 6 and "Hutchinson" in ode["trace"]
    # a barely trained model on 17 grey levels: positive, and not absurdly far from log2(17) = 4.09 bits
    for value in (vlb_value, ode_value):
        assert 0 < value < 12
    assert row["metrics"] == {"bpd": ode_value, "bpd_vlb": vlb_value}
    printed = capsys.readouterr().out
    assert "bpd = " in printed and "bpd_vlb = " in printed and "variational bound" in printed


def test_bpd_needs_a_continuous_network_or_a_vp_model(tmp_path, capsys):
    run = tmp_path / "ve"
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress",
                 "--set", "model.ngf=4", "--set", "training.n_iters=1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--metrics", "bpd", "--no-progress"]) == 2
    assert "continuous noise level" in capsys.readouterr().err
