"""NCSNv2's networks (Song & Ermon 2020): unconditional InstanceNorm++, plain refine blocks with
max-pooling, output f(x) / sigma; trainable and sampleable like any model, with the paper's configs."""

from __future__ import annotations

import pytest
import torch

from ncsn.cli import main
from ncsn.config import load_config
from ncsn.errors import UserError
from ncsn.models.layers import CondCRP, InstanceNormPlus
from ncsn.models.ncsnv2 import NCSNv2


def make(arch: str = "ncsnv2", channels: int = 3, ngf: int = 4, seed: int = 0) -> NCSNv2:
    torch.manual_seed(seed)
    return NCSNv2(channels, ngf, arch)


@pytest.mark.parametrize("arch,size,coarsest", [("ncsnv2", 8, 4), ("ncsnv2_deeper", 16, 4), ("ncsnv2_deepest", 16, 2)])
def test_shapes_and_subsampling(arch, size, coarsest):
    net = make(arch)
    seen = {}
    last = f"stage{net.depth}"
    getattr(net, last)[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("coarsest", o.shape[-1]))
    x = torch.rand(2, 3, size, size)
    out = net(x, torch.tensor([1.0, 0.1]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert seen["coarsest"] == coarsest
    assert net.depth == {"ncsnv2": 4, "ncsnv2_deeper": 5, "ncsnv2_deepest": 6}[arch]


def test_odd_sizes_round_down_and_come_back():
    net = make("ncsnv2", channels=1)
    assert net(torch.rand(1, 1, 7, 10), 0.5).shape == (1, 1, 7, 10)


def test_output_is_one_network_divided_by_sigma():
    net = make()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a, b = net(x, torch.tensor([3.0, 3.0])), net(x, torch.tensor([0.02, 0.5]))
    torch.testing.assert_close(a * 3.0, b * torch.tensor([0.02, 0.5])[:, None, None, None], rtol=1e-5, atol=1e-5)
    assert NCSNv2.continuous_noise_level  # any sigma works, not only trained levels


def test_normalisation_is_unconditional_and_refine_blocks_have_none():
    net = make("ncsnv2_deeper")
    for name, p in net.named_parameters():
        assert not name.startswith("refine") or ".norms." not in name, name
        if name.endswith((".gamma", ".alpha", ".beta")):
            assert p.ndim == 1, name  # one value per channel, shared by every noise level
    assert all(m.pool == "max" for m in net.modules() if isinstance(m, CondCRP))
    assert isinstance(net.end_norm, InstanceNormPlus) and isinstance(net.stage1[0].norm1, InstanceNormPlus)


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch must be one of"):
        NCSNv2(3, 4, "ncsnv3")
    with pytest.raises(ValueError, match="numerics"):
        NCSNv2(3, 4, numerics=3)
    with pytest.raises(UserError, match="needs model.process=ve"):
        load_config("configs/ncsnv2_cifar10.yaml", ["model.process=vp"])
    with pytest.raises(UserError, match=r"model.numerics = 3 is out of range \(allowed: one of 1, 2\)"):
        load_config("configs/ncsnv2_cifar10.yaml", ["model.numerics=3"])


@pytest.mark.parametrize("name,arch,sigma_1,levels,ref_step,steps", [
    ("cifar10", "ncsnv2", 50.0, 232, 6.2e-6, 5), ("celeba", "ncsnv2", 90.0, 500, 3.3e-6, 5),
    ("church", "ncsnv2_deeper", 140.0, 788, 4.9e-6, 4), ("bedroom", "ncsnv2_deeper", 190.0, 1086, 1.8e-6, 3),
    ("tower", "ncsnv2_deeper", 190.0, 1086, 1.8e-6, 3), ("ffhq", "ncsnv2_deepest", 348.0, 2311, 9e-7, 3)])
def test_configs_carry_the_reference_settings(name, arch, sigma_1, levels, ref_step, steps):
    c = load_config(f"configs/ncsnv2_{name}.yaml")
    m, s = c["model"], c["sampling"]
    assert (m["arch"], m["sigma_begin"], m["sigma_end"], m["num_classes"], m["ngf"]) == (arch, sigma_1, 0.01, levels, 128)
    assert m["ema"] and m["ema_rate"] == 0.999 and c["optim"]["lr"] == 1e-4 and m["numerics"] == 2
    # the reference steps x + a s + sqrt(2 a) z; Algorithm 1's epsilon here is 2 a
    assert s["step_lr"] == pytest.approx(2 * ref_step) and s["n_steps_each"] == steps and s["denoise"]


def test_trains_and_samples_through_the_cli(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["model.arch=ncsnv2", "model.numerics=2", "model.ngf=4", "model.num_classes=3", "training.n_iters=2",
            "training.batch_size=8", "training.snapshot_freq=2", "sampling.n_steps_each=2"]
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    assert "NCSNv2 ngf=4" in capsys.readouterr().out
    assert main(["sample", str(run), "--n", "3", "--out", str(tmp_path / "grid.png"), "--no-progress"]) == 0
    assert "3 samples" in capsys.readouterr().out and (tmp_path / "grid.png").stat().st_size > 0
