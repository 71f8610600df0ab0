"""The noise-conditional U-Net after Ho et al. (2020) and its noise-level embedding."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ncsn.models.unet import UNET_PRESETS, AttnBlock, Downsample, UNet, Upsample, noise_embedding, num_groups

SMALL = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)


def make_net(channels: int = 1, seed: int = 0, **kwargs) -> UNet:
    torch.manual_seed(seed)
    return UNet(channels, **{**SMALL, **kwargs})


def perturb_zero_inits(net: UNet, seed: int = 1) -> UNet:
    """Give every zero-initialised weight (output conv, second conv of each residual block,
    attention output projections) random values, so the output depends on every layer."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


def images(n: int, channels: int, height: int, width: int | None = None, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, channels, height, width or height, generator=torch.Generator().manual_seed(seed))


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "channels,height,width,kwargs",
    [
        (1, 8, 8, dict(ch=8, ch_mult=(1, 2), attn_resolutions=(4,), image_size=8)),
        (3, 8, 8, dict(ch=8, ch_mult=(1, 2, 2), attn_resolutions=(8,), image_size=8)),
        (1, 28, 28, dict(ch=8, ch_mult=(1, 2, 2), attn_resolutions=(14,), image_size=28)),
        (3, 32, 32, dict(ch=16, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), image_size=32)),
        (3, 64, 64, dict(ch=8, ch_mult=(1, 1, 2, 2), attn_resolutions=(16,), image_size=64)),
        (1, 7, 10, dict(ch=8, ch_mult=(1, 2, 2), attn_resolutions=(4,), image_size=7)),
    ],
)
def test_output_shape_equals_input_shape(channels, height, width, kwargs):
    net = perturb_zero_inits(make_net(channels, **kwargs)).eval()
    x = images(2, channels, height, width)
    with torch.no_grad():
        out = net(x, torch.tensor([0.1, 2.0]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_resampling_sizes_and_nearest_neighbour_upsampling():
    assert Downsample(2)(torch.rand(1, 2, 7, 10)).shape == (1, 2, 4, 5)
    up = Upsample(2)
    with torch.no_grad():  # make the conv the identity, to see the interpolation alone
        up.conv.weight.zero_()
        up.conv.bias.zero_()
        up.conv.weight[[0, 1], [0, 1], 1, 1] = 1.0
    x = torch.rand(1, 2, 4, 5)
    out = up(x, (7, 10))
    rows = torch.tensor([i * 4 // 7 for i in range(7)])
    cols = torch.tensor([j * 5 // 10 for j in range(10)])
    assert torch.equal(out, x[:, :, rows][:, :, :, cols])


def test_fresh_network_outputs_zero():
    net = make_net(3, ch=16, ch_mult=(1, 2), attn_resolutions=(8,))
    assert not net.conv_out.weight.any() and not net.conv_out.bias.any()
    out = net(images(3, 3, 8), torch.tensor([0.01, 0.5, 5.0]))
    assert out.shape == (3, 3, 8, 8)
    assert torch.equal(out, torch.zeros_like(out))


def test_float_and_vector_noise_levels_agree():
    net = perturb_zero_inits(make_net()).eval()
    x = images(3, 1, 8)
    with torch.no_grad():
        assert torch.allclose(net(x, 0.3), net(x, torch.full((3,), 0.3)))
        assert not torch.allclose(net(x, 0.3), net(x, 0.6))


def test_noise_embedding_formula():
    sigma = torch.tensor([0.01, 1.0, 7.5], dtype=torch.float64)
    dim = 16
    emb = noise_embedding(sigma, dim)
    assert emb.shape == (3, dim)
    for n, s in enumerate(sigma.tolist()):
        c = 100 * math.log(s)
        for k in range(dim // 2):
            w = 10000 ** (-k / (dim // 2))
            assert emb[n, k].item() == pytest.approx(math.sin(c * w), abs=1e-9)
            assert emb[n, dim // 2 + k].item() == pytest.approx(math.cos(c * w), abs=1e-9)
    # sigma = 1 is c = 0: sines 0, cosines 1.
    assert torch.equal(emb[1], torch.cat([torch.zeros(8), torch.ones(8)]).double())
    odd = noise_embedding(sigma, 7)
    assert odd.shape == (3, 7) and torch.equal(odd[:, -1], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(odd[:, :6], noise_embedding(sigma, 6))


def test_noise_embedding_is_continuous_and_float32_for_half_inputs():
    sigma = torch.tensor([0.01, 0.1, 1.0, 5.0, 160.0])
    emb = noise_embedding(sigma, 128)
    near = (noise_embedding(sigma * (1 + 1e-4), 128) - emb).norm(dim=1)
    far = (noise_embedding(sigma * 2, 128) - emb).norm(dim=1)
    assert (near < 1e-2 * far).all(), (near, far)
    assert noise_embedding(sigma.half(), 8).dtype == torch.float32


def test_output_is_continuous_in_the_noise_level():
    net = perturb_zero_inits(make_net(ch=16)).eval()
    x = images(4, 1, 8)
    sigma = torch.tensor([0.01, 0.1, 1.0, 5.0])
    with torch.no_grad():
        out = net(x, sigma)
        near = (net(x, sigma * (1 + 1e-4)) - out).flatten(1).norm(dim=1)
        far = (net(x, sigma * 2) - out).flatten(1).norm(dim=1)
    assert (far > 0).all()
    assert (near < 1e-2 * far).all(), (near, far)


def test_channels_last_gives_the_same_output():
    net = perturb_zero_inits(make_net(3, ch=16, ch_mult=(1, 2, 2), attn_resolutions=(4,))).eval()
    x = images(2, 3, 8)
    sigma = torch.tensor([0.05, 1.5])
    with torch.no_grad():
        ref = net(x, sigma)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last), sigma)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_dropout_is_active_only_in_train_mode():
    net = perturb_zero_inits(make_net(dropout=0.5))
    x = images(2, 1, 8)
    torch.manual_seed(3)
    a = net(x, 0.5)
    b = net(x, 0.5)
    assert not torch.allclose(a, b)
    net.eval()
    with torch.no_grad():
        c, d = net(x, 0.5), net(x, 0.5)
        no_dropout = make_net(dropout=0.0)
        no_dropout.load_state_dict(net.state_dict())
        e = no_dropout.eval()(x, 0.5)
    assert torch.equal(c, d)
    assert torch.allclose(c, e)


def test_gradient_reaches_every_parameter():
    net = perturb_zero_inits(make_net(ch=8, ch_mult=(1, 2), attn_resolutions=(8, 4)))
    net(images(2, 1, 8), torch.tensor([0.1, 1.0])).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        if name.endswith(".k.bias"):
            # A key bias adds q . b to every logit of a query: softmax ignores it.
            assert p.grad.abs().max() < 1e-4, name
        else:
            assert p.grad.abs().sum() > 0, name


def test_gradient_reaches_the_output_conv_at_initialisation():
    net = make_net()
    net(images(2, 1, 8), 0.5).sum().backward()
    assert net.conv_out.weight.grad.abs().sum() > 0
    assert net.conv_out.bias.grad.abs().sum() > 0


def test_cifar10_preset_is_ho_et_al_model():
    with torch.device("meta"):
        net = UNet(3, **UNET_PRESETS["cifar10"])
    count = n_params(net)
    assert count == 35_746_307
    assert round(count / 1e5) == 357  # 35.7 M, as Ho et al. report
    # Attention at 16x16 (level 1) in the down path and the mirrored up level, and in the middle.
    has_attn = [any(isinstance(a, AttnBlock) for a in level.attns) for level in net.down]
    assert has_attn == [False, True, False, False]
    assert [any(isinstance(a, AttnBlock) for a in level.attns) for level in net.up] == has_attn[::-1]
    assert [len(level.blocks) for level in net.down] == [2] * 4
    assert [len(level.blocks) for level in net.up] == [3] * 4
    assert len(net.downsample) == len(net.upsample) == 3
    assert net.temb[0].out_features == net.temb[2].out_features == 512
    assert all(m.num_groups == 32 and m.eps == 1e-6 for m in net.modules() if isinstance(m, nn.GroupNorm))


def test_size_presets():
    with torch.device("meta"):
        digits = n_params(UNet(1, **UNET_PRESETS["digits"]))
        mnist = n_params(UNet(1, **UNET_PRESETS["mnist"]))
    assert digits == 517_537
    assert abs(digits - 518_817) / 518_817 < 0.1
    assert mnist == 6_469_889
    net = perturb_zero_inits(UNet(1, **UNET_PRESETS["digits"])).eval()
    with torch.no_grad():
        assert net(images(2, 1, 8), 0.2).shape == (2, 1, 8, 8)


def test_num_groups():
    expected = {1: 1, 3: 1, 8: 2, 24: 6, 64: 16, 72: 18, 128: 32, 384: 32, 640: 32, 100: 25}
    for channels, groups in expected.items():
        assert num_groups(channels) == groups, channels
    for channels in range(1, 300):
        g = num_groups(channels)
        assert channels % g == 0 and 1 <= g <= max(1, min(32, channels // 4))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(channels=0), dict(channels=1.5), dict(ch=0), dict(ch=True), dict(ch=8.0),
        dict(ch_mult=()), dict(ch_mult=(1, 0)), dict(ch_mult=(1, 2.0)), dict(ch_mult=None),
        dict(num_res_blocks=0), dict(attn_resolutions=(0,)), dict(attn_resolutions=4),
        dict(dropout=1.0), dict(dropout=-0.1), dict(dropout="0.1"), dict(image_size=0),
    ],
)
def test_bad_arguments_raise(kwargs):
    args = {"channels": 1, **SMALL, **kwargs}
    with pytest.raises(ValueError):
        UNet(**args)


def test_bad_inputs_raise():
    net = make_net(1)
    with pytest.raises(ValueError):
        net(torch.rand(2, 3, 8, 8), 0.5)
    with pytest.raises(ValueError):
        net(torch.rand(2, 1, 8), 0.5)
    with pytest.raises(ValueError):
        net(torch.rand(2, 1, 8, 8), torch.ones(3))
