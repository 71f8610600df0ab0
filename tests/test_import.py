"""`ncsn import`: the authors' released checkpoints (random weights in their layouts) become runs that
compute what the reference networks compute, and sample and evaluate through the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from _payload import CodeRunningPayload
from _released import key_shapes, random_state, reference_forward, released_file
from ncsn import checkpoint as ckpt
from ncsn import importing
from ncsn.build import load_score_model, make_sigmas
from ncsn.cli import main
from ncsn.config import load_config
from ncsn.models.ncsnv2 import NCSNv2
from ncsn.models.refinenet import RefineNet

TINY = ["model.ngf=4", "data.image_size={size}", "sampling.n_steps_each=2"]
# (format, config, the released network, image size for the tests)
CASES = [("ncsn", "configs/cifar10.yaml", "ncsn", 8), ("ncsnv2", "configs/ncsnv2_cifar10.yaml", "ncsnv2", 8),
         ("ncsnv2", "configs/ncsnv2_church.yaml", "ncsnv2_deeper", 16),
         ("ncsnv2", "configs/ncsnv2_ffhq.yaml", "ncsnv2_deepest", 16)]


def tiny_config(path: str, size: int, *extra: str) -> dict:
    return load_config(path, [s.format(size=size) for s in TINY] + list(extra))


def released(tmp_path, arch: str, config: dict, seed: int = 0, ema: bool = True, legacy: bool = False):
    """A released-format file of ``arch`` fitting ``config``; returns (path, weights, EMA weights or None)."""
    sigmas = make_sigmas(config)
    state = random_state(arch, config["data"]["channels"], config["model"]["ngf"], sigmas, seed)
    shadow = None
    if arch != "ncsn" and ema:
        shadow = {k: v for k, v in random_state(arch, 3, config["model"]["ngf"], sigmas, seed + 1).items()
                  if k != "sigmas"}  # the EMA helper averages parameters only
    path = tmp_path / f"{arch}.pth"
    released_file(path, arch, state, shadow, legacy=legacy)
    return path, state, shadow


def test_the_released_layout_has_the_papers_parameter_counts():
    # the counts of the reference CondRefineNetDilated: 7,638,657 (MNIST, ngf 64) and 30,117,635 (CIFAR-10, ngf 128)
    for channels, ngf, count in ((1, 64, 7_638_657), (3, 128, 30_117_635)):
        assert sum(math.prod(s) for s in key_shapes("ncsn", channels, ngf, 10).values()) == count
        ours = RefineNet(channels, ngf, torch.logspace(0, -2, 10), numerics=2)
        assert sum(p.numel() for p in ours.parameters()) == count
    for arch in ("ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest"):
        with torch.device("meta"):
            ours = NCSNv2(3, 128, arch)
        theirs = {k: s for k, s in key_shapes(arch, 3, 128, 10).items() if k != "sigmas"}
        assert sum(p.numel() for p in ours.parameters()) == sum(math.prod(s) for s in theirs.values())


@pytest.mark.parametrize("fmt,config_path,arch,size", CASES)
def test_every_key_is_used_exactly_once(fmt, config_path, arch, size):
    config = tiny_config(config_path, size, "model.numerics=2")
    from ncsn.build import build_score_model

    net = build_score_model(config).net
    state = random_state(arch, 3, 4, make_sigmas(config), seed=0)
    converted, used = importing.convert(state, net, fmt == "ncsn", make_sigmas(config))
    assert sorted(used) == sorted(state) and len(used) == len(set(used))
    assert set(converted) == set(net.state_dict())


@pytest.mark.parametrize("fmt,config_path,arch,size", CASES)
def test_imported_model_computes_what_the_reference_network_computes(tmp_path, fmt, config_path, arch, size):
    config = tiny_config(config_path, size)
    path, state, shadow = released(tmp_path, arch, config, legacy=fmt == "ncsn")
    summary = importing.import_run(path, fmt, config, tmp_path / "run")
    assert summary["keys"] == len(state) and summary["ema"] == (shadow is not None)
    L = config["model"]["num_classes"]
    y = torch.tensor([0, L // 2, L - 1])
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for use_ema, weights in ((False, state), (True, {**state, **(shadow or {})})):
        model, saved, info = load_score_model(tmp_path / "run", use_ema=use_ema)
        assert saved["model"]["numerics"] == 2 and info["ema"] == (use_ema and shadow is not None)
        model.double()
        with torch.no_grad():
            ours = model(x, model.sigmas.double()[y])
            theirs = reference_forward({k: v.double() for k, v in weights.items()}, arch, x, y)
        assert theirs.abs().max() > 1.0  # a real signal, not zeros
        # in float64 from float32 files: all that differs is alpha = gamma a, stored rounded to float32
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6 * theirs.abs().max().item())


def test_float32_agreement_and_the_numerics_it_needs(tmp_path):
    config = tiny_config("configs/cifar10.yaml", 8)
    path, state, _ = released(tmp_path, "ncsn", config)
    importing.import_run(path, "ncsn", config, tmp_path / "run")
    model, _, _ = load_score_model(tmp_path / "run")
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 3, 6, 9])
    with torch.no_grad():
        theirs = reference_forward(state, "ncsn", x, y)
        ours = model(x, model.sigmas[y])
        project = RefineNet(3, 4, model.net.sigmas, numerics=1)
        project.load_state_dict(model.net.state_dict())
        other = project(x, model.sigmas[y])
    scale = theirs.abs().max()
    assert (ours - theirs).abs().max() < 1e-5 * scale
    assert (other - theirs).abs().max() > 1e-2 * scale  # the project's numerics would not reproduce it


def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save([{"module.begin_conv.weight": CodeRunningPayload(marker)}, {}], path)
    assert main(["import", str(path), "--format", "ncsn", "--config", "configs/cifar10.yaml",
                 "--out", str(tmp_path / "run")]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


def one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err, err


def test_clear_one_line_errors(tmp_path, capsys):
    config = tiny_config("configs/ncsnv2_cifar10.yaml", 8)
    v2, state, _ = released(tmp_path, "ncsnv2", config)
    v1, v1_state, _ = released(tmp_path, "ncsn", tiny_config("configs/cifar10.yaml", 8))
    tiny = ["--set", "model.ngf=4", "--set", "data.image_size=8"]
    out = ["--out", str(tmp_path / "run")]
    cfg_v1 = ["--config", "configs/cifar10.yaml"]
    cfg_v2 = ["--config", "configs/ncsnv2_cifar10.yaml"]
    one_line_error(capsys, ["import", str(v2), "--format", "ncsn", *cfg_v1, *out, *tiny], "looks like --format ncsnv2")
    one_line_error(capsys, ["import", str(v1), "--format", "ncsnv2", *cfg_v2, *out, *tiny], "looks like --format ncsn")
    one_line_error(capsys, ["import", str(v2), "--format", "ncsnv2", *cfg_v1, *out, *tiny],
                   "needs a config with model.arch=ncsnv2")
    one_line_error(capsys, ["import", str(v2), "--format", "ncsnv2", *cfg_v2, *out, "--set", "model.ngf=8"],
                   "has shape (4, 3, 3, 3), but the config's network needs (8, 3, 3, 3)")
    one_line_error(capsys, ["import", str(v2), "--format", "ncsnv2", *cfg_v2, *out, *tiny,
                            "--set", "model.num_classes=100"], "noise levels, 232 (50 -> 0.01), are not the config's 100")
    missing = dict(state)
    del missing["res2.0.conv1.weight"]
    released_file(tmp_path / "missing.pth", "ncsnv2", missing)
    one_line_error(capsys, ["import", str(tmp_path / "missing.pth"), "--format", "ncsnv2", *cfg_v2, *out, *tiny],
                   "has no weight 'res2.0.conv1.weight'")
    released_file(tmp_path / "extra.pth", "ncsnv2", {**state, "res9.0.conv1.weight": torch.zeros(1)})
    one_line_error(capsys, ["import", str(tmp_path / "extra.pth"), "--format", "ncsnv2", *cfg_v2, *out, *tiny],
                   "1 weight(s) this network does not use (first: 'res9.0.conv1.weight')")
    torch.save({"step": 3, "model": {}, "config": {}}, tmp_path / "ours.pt")
    one_line_error(capsys, ["import", str(tmp_path / "ours.pt"), "--format", "ncsn", *cfg_v1, *out, *tiny],
                   "an ncsn run checkpoint")
    assert not ckpt.list_checkpoints(tmp_path / "run")  # nothing written by a refused import
    assert main(["import", str(v2), "--format", "ncsnv2", *cfg_v2, *out, *tiny]) == 0
    before = ckpt.list_checkpoints(tmp_path / "run")[0][1].read_bytes()
    one_line_error(capsys, ["import", str(v2), "--format", "ncsnv2", *cfg_v2, *out, *tiny], "already holds checkpoints")
    assert ckpt.list_checkpoints(tmp_path / "run")[0][1].read_bytes() == before


@pytest.mark.parametrize("fmt,arch,sets", [
    ("ncsn", "ncsn", ["model.num_classes=3"]),
    ("ncsnv2", "ncsnv2", ["model.arch=ncsnv2", "model.num_classes=3", "model.sigma_begin=5.0"])])
def test_imported_models_sample_inpaint_and_evaluate_through_the_cli(tmp_path, capsys, monkeypatch, fmt, arch, sets):
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))
    overrides = ["model.ngf=4", "sampling.n_steps_each=2", *sets]
    config = load_config("configs/digits.yaml", overrides)
    state = random_state(arch, 1, 4, make_sigmas(config), seed=0)
    ema = None if fmt == "ncsn" else {k: v for k, v in state.items() if k != "sigmas"}
    released_file(tmp_path / "file.pth", arch, state, ema, step=5000)
    run = tmp_path / "run"
    assert main(["import", str(tmp_path / "file.pth"), "--format", fmt, "--config", "configs/digits.yaml",
                 "--out", str(run), *[a for s in overrides for a in ("--set", s)]]) == 0
    said = capsys.readouterr().out
    assert f"{len(state)} keys, each used once" in said and "model.numerics=2" in said
    assert (run / "config.yaml").is_file()
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "grid.png"), "--no-progress"]) == 0
    assert "4 samples" in capsys.readouterr().out
    assert main(["inpaint", str(run), "--n-images", "2", "--completions", "2", "--mask", "right",
                 "--out", str(tmp_path / "paint.png"), "--no-progress"]) == 0
    assert (tmp_path / "paint.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "20", "--metrics", "fid", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "reference: digits/train" in table and "sampler: " in table and "n_steps_each=2" in table
    assert f"step={5000 if fmt == 'ncsnv2' else 0}" in table
