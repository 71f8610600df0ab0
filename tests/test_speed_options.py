"""AMP and torch.compile paths train and sample on the CPU."""

import numpy as np
import pytest
import torch

from ncsn import checkpoint as ckpt
from ncsn.cli import main

TINY = ["training.batch_size=8", "training.n_iters=3", "training.snapshot_freq=3", "model.ngf=8",
        "model.num_classes=3", "model.sigma_begin=2.0", "model.sigma_end=0.05", "sampling.n_steps_each=2"]


def train_and_sample(tmp_path, *extra):
    run = tmp_path / "run"
    sets = [a for s in TINY + list(extra) for a in ("--set", s)]
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--device", "cpu", "--no-progress", *sets]) == 0
    state = ckpt.load_checkpoint(run)
    npz = tmp_path / "s.npz"
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "g.png"), "--npz", str(npz),
                 "--device", "cpu", "--no-progress"]) == 0
    samples = np.load(npz)["samples"]
    assert samples.shape == (4, 1, 8, 8) and np.isfinite(samples).all()
    return state


def initial_state():
    from ncsn.config import load_config
    from ncsn.train import build_score_model

    torch.manual_seed(0)
    return build_score_model(load_config("configs/digits.yaml", TINY)).state_dict()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_and_samples(tmp_path, amp):
    state = train_and_sample(tmp_path, f"training.amp={amp}")
    init = initial_state()
    assert all(v.dtype == init[k].dtype for k, v in state["model"].items())  # master weights stay float32
    moved = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], state["model"][k])]
    assert len(moved) > len(init) // 2
    if amp == "fp16":
        assert state["scaler"] and state["scaler"]["scale"] > 0


def test_compile_trains_and_samples(tmp_path):
    state = train_and_sample(tmp_path, "training.compile=true", "training.compile_backend=aot_eager",
                             "training.channels_last=true")
    init = initial_state()
    assert state["model"].keys() == init.keys()  # saved without the compile wrapper's prefixes
    assert any(not torch.equal(init[k], state["model"][k]) for k in init if init[k].is_floating_point())


def test_a_unet_on_the_vp_process_trains_and_samples_with_bf16_and_compile(tmp_path):
    state = train_and_sample(tmp_path, "model.arch=unet", "model.process=vp", "model.num_timesteps=20",
                             "model.ch_mult=[1,2]", "model.attn_resolutions=[4]", "training.amp=bf16",
                             "training.compile=true", "training.compile_backend=aot_eager")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert any(k.startswith("net.") for k in state["model"])
