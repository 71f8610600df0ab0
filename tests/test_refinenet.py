"""The NCSN RefineNet score network and its CIN++ normalisation (Song & Ermon 2019, Appendix A-B)."""

from __future__ import annotations

import math

import pytest
import torch

from ncsn.models.layers import CondInstanceNormPlus, CondMSF, InstanceNormPlus, no_norm
from ncsn.models.refinenet import RefineNet

SIGMAS = torch.logspace(0, -2, 10)  # geometric, 1 -> 0.01, L = 10


def make_net(channels: int = 1, ngf: int = 8, scale_by_sigma: bool = False, seed: int = 0) -> RefineNet:
    torch.manual_seed(seed)
    return RefineNet(channels, ngf, SIGMAS, scale_by_sigma=scale_by_sigma)


def images(n: int, channels: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def dsm_loss(net, x, levels, noise) -> torch.Tensor:
    """Denoising score matching with lambda(sigma) = sigma^2 (Song & Ermon 2019, eq. 5-6):
    1/2 E || sigma s(x + sigma z, sigma) + z ||^2."""
    sigma = net.sigmas[levels]
    s = sigma[:, None, None, None]
    return 0.5 * (s * net(x + s * noise, sigma) + noise).square().sum(dim=(1, 2, 3)).mean()


@pytest.mark.parametrize(
    "channels,height,width,ngf",
    [(1, 8, 8, 8), (3, 8, 8, 8), (1, 28, 28, 8), (3, 28, 28, 8), (1, 32, 32, 8), (3, 32, 32, 8),
     (3, 64, 64, 4), (1, 7, 10, 4)],
)
def test_output_shape_equals_input_shape(channels, height, width, ngf):
    net = make_net(channels, ngf)
    x = torch.rand(2, channels, height, width)
    out = net(x, SIGMAS[[0, 9]])
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_only_stage2_subsamples_and_later_stages_are_dilated():
    net = make_net(1, 4)
    sizes = {}
    for name in ("stage1", "stage2", "stage3", "stage4"):
        getattr(net, name)[-1].register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, o.shape))
    net(torch.rand(1, 1, 28, 28), 0.1)
    assert sizes == {"stage1": (1, 4, 28, 28), "stage2": (1, 8, 14, 14), "stage3": (1, 8, 14, 14),
                     "stage4": (1, 8, 14, 14)}
    assert {b.conv1.dilation for b in net.stage3} == {(2, 2)}
    assert {b.conv1.dilation for b in net.stage4} == {(4, 4)}


def test_noise_conditioning():
    net = make_net(3)
    x = images(1, 3, 8)
    a1, a2 = net(x, SIGMAS[2:3]), net(x, SIGMAS[2:3])
    b = net(x, SIGMAS[7:8])
    assert torch.equal(a1, a2)
    assert (a1 - b).abs().max() > 1e-3
    assert torch.equal(net(x, float(SIGMAS[2])), a1)  # a Python float is broadcast


def test_mixed_sigma_batch_equals_per_sigma_runs():
    net = make_net(1)
    x = images(4, 1, 8)
    sigmas = SIGMAS[[0, 3, 5, 9]]
    together = net(x, sigmas)
    apart = torch.cat([net(x[i : i + 1], sigmas[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


def test_level_index_nearest_in_log_space():
    net = make_net()
    L = len(SIGMAS)
    assert torch.equal(net.level_index(SIGMAS), torch.arange(L))
    # the geometric mean of neighbours is the log-space midpoint: nudge it either way
    mid = (SIGMAS[:-1] * SIGMAS[1:]).sqrt()
    assert torch.equal(net.level_index(mid * 1.01), torch.arange(L - 1))
    assert torch.equal(net.level_index(mid * 0.99), torch.arange(1, L))
    assert net.level_index(torch.tensor([50.0, 1e-6])).tolist() == [0, L - 1]
    # between sigma_1 = 1 and sigma_2 = 0.599: 0.79 is nearer 0.599 linearly, nearer 1 in log space
    assert int(net.level_index(0.79)) == 0
    assert int(net.level_index(0.76)) == 1
    assert net.level_index(0.2).ndim == 0


def test_cin_plus_with_unit_gamma_zero_beta_alpha_is_instance_norm():
    torch.manual_seed(0)
    norm = CondInstanceNormPlus(5, 3)
    with torch.no_grad():
        norm.gamma.fill_(1.0)
        norm.beta.zero_()
        norm.alpha.zero_()
    x = torch.randn(4, 5, 6, 7) * torch.linspace(0.5, 3, 5)[:, None, None] + torch.linspace(-4, 4, 5)[:, None, None]
    z = norm(x, torch.tensor([0, 1, 2, 0]))
    var = x.var(dim=(2, 3), correction=0)
    torch.testing.assert_close(z.mean(dim=(2, 3)), torch.zeros(4, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(2, 3), correction=0), (var / (var + 1e-5)).sqrt(), atol=1e-5, rtol=0)


def test_cin_plus_matches_the_paper_formula_per_level():
    torch.manual_seed(0)
    norm = CondInstanceNormPlus(6, 4)
    with torch.no_grad():
        for p in (norm.gamma, norm.alpha, norm.beta):
            p.normal_()
    x = torch.randn(3, 6, 5, 5) * 2 + torch.randn(1, 6, 1, 1) * 3
    level = torch.tensor([3, 0, 2])
    xd = x.double()
    mu = xd.mean(dim=(2, 3))
    s = (xd.var(dim=(2, 3), correction=0) + 1e-5).sqrt()
    m = mu.mean(dim=1, keepdim=True)
    v = (mu.var(dim=1, correction=0, keepdim=True) + 1e-5).sqrt()
    g, a, b = (p.double()[level][:, :, None, None] for p in (norm.gamma, norm.alpha, norm.beta))
    expected = g * (xd - mu[:, :, None, None]) / s[:, :, None, None] + b + a * ((mu - m) / v)[:, :, None, None]
    torch.testing.assert_close(norm(x, level).double(), expected, rtol=1e-5, atol=1e-5)


def test_scale_by_sigma_divides_the_unscaled_output_by_sigma():
    plain = make_net(1)
    scaled = RefineNet(1, 8, SIGMAS, scale_by_sigma=True)
    scaled.load_state_dict(plain.state_dict())
    x = images(3, 1, 8)
    sigmas = SIGMAS[[0, 4, 9]]
    torch.testing.assert_close(scaled(x, sigmas), plain(x, sigmas) / sigmas[:, None, None, None])


def test_scale_by_sigma_with_level_independent_normalisation():
    net = make_net(1, scale_by_sigma=True)
    with torch.no_grad():  # the same CIN++ parameters at every level: f no longer depends on sigma
        for module in net.modules():
            if isinstance(module, CondInstanceNormPlus):
                for p in (module.gamma, module.alpha, module.beta):
                    p.copy_(p[:1].expand_as(p))
    x = images(1, 1, 8)
    hi, lo = net(x, SIGMAS[1:2]), net(x, SIGMAS[8:9])
    assert (hi - lo).abs().max() > 1e-3
    torch.testing.assert_close(hi * SIGMAS[1], lo * SIGMAS[8])


def test_gradients_reach_every_parameter_and_every_level():
    net = make_net(1)
    L = len(SIGMAS)
    x = images(L, 1, 8)
    loss = dsm_loss(net, x, torch.arange(L), torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for module in net.modules():
        if isinstance(module, CondInstanceNormPlus):
            assert (module.gamma.grad.abs().sum(dim=1) > 0).all()  # each level's row is used


def test_only_the_normalisation_depends_on_the_number_of_levels():
    def shared(net):
        return {n: p.shape for n, p in net.named_parameters() if not n.endswith((".gamma", ".alpha", ".beta"))}

    torch.manual_seed(0)
    few, many = RefineNet(3, 8, SIGMAS[:2]), RefineNet(3, 8, SIGMAS)
    assert shared(few) == shared(many)
    norms = [m for m in many.modules() if isinstance(m, CondInstanceNormPlus)]
    assert all(m.gamma.shape[0] == len(SIGMAS) for m in norms)
    assert sum(p.numel() for p in many.parameters()) - sum(p.numel() for p in few.parameters()) == sum(
        3 * (len(SIGMAS) - 2) * m.num_features for m in norms
    )


def test_a_few_adam_steps_of_dsm_lower_the_loss_on_a_fixed_batch():
    net = make_net(1, ngf=8)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(16, 1, 8, 8, generator=gen).round()  # binary "images"
    levels = torch.randint(0, len(SIGMAS), (16,), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = dsm_loss(net, x, levels, noise)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = dsm_loss(net, x, levels, noise).item()
    assert math.isfinite(final)
    assert final < 0.8 * losses[0], (losses[0], final)


def test_channels_last_gives_the_same_output():
    net = make_net(3)
    x = images(2, 3, 8)
    expected = net(x, SIGMAS[[1, 6]])
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), SIGMAS[[1, 6]])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_traces_as_one_graph_under_torch_compile():
    net = make_net(1, ngf=4)
    x = images(2, 1, 8)
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # fullgraph: a graph break is an error
    torch.testing.assert_close(compiled(x, SIGMAS[[0, 9]]), net(x, SIGMAS[[0, 9]]))


def test_double_precision_follows_the_input():
    net = make_net(1).double()
    x = images(2, 1, 8).double()
    out = net(x, SIGMAS[[0, 9]].double())
    assert out.dtype == torch.float64
    assert torch.equal(net.level_index(net.sigmas), torch.arange(len(SIGMAS)))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(channels=0, ngf=8, sigmas=SIGMAS), "channels must be a positive integer"),
        (dict(channels=1, ngf=2.5, sigmas=SIGMAS), "ngf must be a positive integer"),
        (dict(channels=1, ngf=8, sigmas=SIGMAS.flip(0)), "strictly decreasing"),
        (dict(channels=1, ngf=8, sigmas=torch.tensor([1.0, 0.0])), "finite and positive"),
        (dict(channels=1, ngf=8, sigmas=torch.ones(2, 2)), "non-empty 1-D"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RefineNet(**kwargs)


def test_bad_forward_arguments():
    net = make_net(1, ngf=4)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 1, H, W\)"):
        net(torch.rand(2, 3, 8, 8), 0.1)
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        net(torch.rand(2, 1, 8, 8), torch.ones(3))
    with pytest.raises(ValueError, match="at least 2x2"):
        net(torch.rand(2, 1, 1, 8), 0.1)


# ---- numerics: this project's (1) and the reference code's (2) ---------------------------------


def identity_conv(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = torch.eye(conv.weight.shape[0])
        conv.bias.zero_()


@pytest.mark.parametrize("align_corners", [False, True])
def test_fusion_upsampling_by_hand(align_corners):
    # a 2x2 map holding 4 r + 2 c (r, c the row and column) fused into a 4x4 one of zeros; bilinear
    # up-sampling reproduces a linear function exactly at the positions it samples:
    # corners aligned, output pixel i samples i / 3; centres aligned, (i + 1/2) / 2 - 1/2 clamped to [0, 1]
    msf = CondMSF([1, 1], 1, no_norm(), align_corners=align_corners)
    for conv in msf.convs:
        identity_conv(conv)
    coarse = torch.tensor([[0.0, 2.0], [4.0, 6.0]])[None, None]
    fused = msf([torch.zeros(1, 1, 4, 4), coarse], None, (4, 4))[0, 0]
    s = torch.tensor([0, 1 / 3, 2 / 3, 1]) if align_corners else torch.tensor([0, 0.25, 0.75, 1])
    torch.testing.assert_close(fused, 4 * s[:, None] + 2 * s[None, :], rtol=0, atol=1e-6)


@pytest.mark.parametrize("unbiased,variance", [(False, 14 / 3), (True, 7.0)])
def test_variance_of_the_channel_means_by_hand(unbiased, variance):
    # channel means 1, 2, 6 (m = 3, squared deviations 4, 1, 9: 14 / 3 over C, 7 over C - 1);
    # with gamma = beta = 0 and alpha = 1 the output is (mu_k - m) / sqrt(v^2 + eps)
    norm = CondInstanceNormPlus(3, 1, unbiased=unbiased)
    with torch.no_grad():
        norm.gamma.zero_()
        norm.beta.zero_()
        norm.alpha.fill_(1.0)
    pattern = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    x = torch.tensor([1.0, 2.0, 6.0])[None, :, None, None] + pattern
    z = norm(x, torch.tensor([0]))
    expected = torch.tensor([-2.0, -1.0, 3.0]) / math.sqrt(variance + 1e-5)
    torch.testing.assert_close(z[0], expected[:, None, None].expand(3, 2, 2), rtol=1e-6, atol=1e-6)


def test_unconditional_instance_norm_plus_is_the_conditional_one_with_one_row():
    torch.manual_seed(0)
    plain, cond = InstanceNormPlus(5), CondInstanceNormPlus(5, 1, unbiased=True)
    with torch.no_grad():
        for p in (plain.gamma, plain.alpha, plain.beta):
            p.normal_()
        for name in ("gamma", "alpha", "beta"):
            getattr(cond, name).copy_(getattr(plain, name)[None])
    x = torch.randn(3, 5, 4, 4) + torch.randn(1, 5, 1, 1)
    torch.testing.assert_close(plain(x), cond(x, torch.zeros(3, dtype=torch.long)))


def seeded_old_checkpoint(workdir) -> None:
    """A checkpoint as `ncsn train` wrote it before model.numerics existed (its config lacks the key),
    with weights drawn from a seed by name (so they do not depend on how the network is built)."""
    from ncsn import checkpoint as ckpt
    from ncsn.build import build_score_model
    from ncsn.config import load_config

    config = load_config("configs/digits.yaml", ["model.ngf=4", "model.num_classes=3", "sampling.n_steps_each=2",
                                                 "sampling.step_lr=1e-9", "sampling.batch_size=4"])
    model = build_score_model(config)
    del config["model"]["numerics"]
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).float()
            if name.endswith((".gamma", ".alpha")):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith((".beta", ".bias")):
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    weights = model.state_dict()
    ckpt.save_checkpoint(workdir, 0, {"version": 2, "step": 0, "model": weights, "ema": weights, "config": config})


def test_old_checkpoints_give_the_same_outputs_and_samples_as_before(tmp_path):
    from ncsn.build import load_score_model
    from ncsn.generate import generate

    seeded_old_checkpoint(tmp_path)
    model, config, _ = load_score_model(tmp_path)
    assert config["model"]["numerics"] == 1  # the default fills the missing key
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(x, model.sigmas[[0, 2]])
    samples = generate(model, config, 2, seed=3, progress=False)
    # recorded with this checkpoint before model.numerics existed (commit ede649e)
    before_out = [0.1381916105747223, 0.21500082314014435, 0.24090576171875, 0.04860299825668335,
                  9.86883544921875, -261.3898620605469, 6.5217766761779785, -38.7449836730957]
    before_samples = [0.11640233546495438, 0.5693429708480835, 0.48001930117607117, 0.8956064581871033,
                      0.8758252263069153, 0.07715191692113876, 0.012244452722370625]
    torch.testing.assert_close(out.flatten()[::17], torch.tensor(before_out), rtol=1e-5, atol=1e-5)
    assert out.abs().sum().item() == pytest.approx(6700.736328125, rel=1e-5)
    torch.testing.assert_close(samples.flatten()[::19], torch.tensor(before_samples), rtol=1e-5, atol=1e-5)
    assert samples.sum().item() == pytest.approx(65.26551055908203, rel=1e-5)

    # the same weights with the reference code's numerics compute something else
    reference = RefineNet(1, 4, model.net.sigmas, scale_by_sigma=True, numerics=2)
    reference.load_state_dict(model.net.state_dict())
    with torch.no_grad():
        other = reference(x, model.sigmas[[0, 2]])
    assert (other - out).abs().max() > 1e-2 * out.abs().max()
