"""The training loop: exact resume, interruption, divergence, and the CLI on tiny budgets."""

import csv
import os
import signal
import types

import numpy as np
import pytest
import torch

from ncsn import checkpoint as ckpt
from ncsn.cli import main
from ncsn.config import load_config
from ncsn.errors import DivergenceError
from ncsn.train import global_batch_indices, train

TINY = [
    "training.batch_size=16", "training.n_iters=6", "training.snapshot_freq=3", "training.log_freq=1",
    "model.ngf=8", "model.num_classes=4", "model.sigma_begin=2.0", "model.sigma_end=0.05",
    "sampling.n_steps_each=3", "sampling.batch_size=16",
]


def tiny_config(*extra):
    return load_config("configs/digits.yaml", TINY + list(extra))


def final_weights(workdir):
    return ckpt.load_checkpoint(workdir)


def assert_same_state(a, b):
    for part in ["model", "ema"]:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


def test_resume_after_interruption_is_bit_exact(tmp_path):
    config = tiny_config()
    train(config, tmp_path / "straight", progress=False)
    first = train(config, tmp_path / "split", max_steps=4, progress=False)  # stops mid-run, after a snapshot at 3
    assert first["step"] == 4
    second = train(config, tmp_path / "split", resume=True, progress=False)
    assert second["step"] == 6
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b)
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    config = tiny_config("training.n_iters=1")
    train(config, tmp_path, progress=False)
    with pytest.raises(Exception, match="--resume"):
        train(config, tmp_path, progress=False)


def test_sigint_saves_a_checkpoint_and_resume_matches(tmp_path, monkeypatch):
    import ncsn.train as train_module

    config = tiny_config()
    train(config, tmp_path / "straight", progress=False)
    real_loss, calls = train_module.ncsn_loss, {"n": 0}

    def loss_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "ncsn_loss", loss_then_interrupt)
    summary = train(config, tmp_path / "split", progress=False)
    assert summary["status"] == "interrupted" and summary["step"] == 2 and summary["signal"] == signal.SIGINT
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "split")] == [2]
    monkeypatch.setattr(train_module, "ncsn_loss", real_loss)
    train(config, tmp_path / "split", resume=True, progress=False)
    assert_same_state(final_weights(tmp_path / "straight"), final_weights(tmp_path / "split"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import ncsn.train as train_module

    config = tiny_config("training.n_iters=8")
    real_loss, calls = train_module.ncsn_loss, {"n": 0}

    def diverging(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(train_module, "ncsn_loss", diverging)
    with pytest.raises(DivergenceError, match=r"diverged at step 5.*last good checkpoint is step 3"):
        train(config, tmp_path, progress=False)
    found = ckpt.list_checkpoints(tmp_path)
    assert [s for s, _ in found] == [3]
    state = ckpt.load_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_batches_cover_each_epoch_once():
    seen = torch.cat([global_batch_indices(100, 10, seed=3, step=s) for s in range(10)])
    assert sorted(seen.tolist()) == list(range(100))
    nxt = torch.cat([global_batch_indices(100, 10, seed=3, step=s) for s in range(10, 20)])
    assert not torch.equal(seen, nxt)  # a fresh order each epoch


def test_cli_train_sample_inpaint_on_a_tiny_budget(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--no-progress", *sets]) == 0
    assert (run / "log.csv").read_text().count("\n") == 7  # header + a row per step
    assert (run / "config.yaml").exists()
    out, npz, strip = tmp_path / "grid.png", tmp_path / "s.npz", tmp_path / "strip.png"
    assert main(["sample", str(run), "--n", "10", "--out", str(out), "--npz", str(npz), "--strip", str(strip),
                 "--strip-n", "3", "--batch-size", "4", "--no-progress"]) == 0
    samples = np.load(npz)["samples"]
    assert samples.shape == (10, 1, 8, 8) and samples.dtype == np.float32
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert out.stat().st_size > 0 and strip.stat().st_size > 0
    # same seed, same samples; another seed differs
    again = tmp_path / "again.npz"
    main(["sample", str(run), "--n", "10", "--out", str(out), "--npz", str(again), "--batch-size", "4", "--no-progress"])
    assert np.array_equal(np.load(again)["samples"], samples)
    main(["sample", str(run), "--n", "10", "--seed", "1", "--out", str(out), "--npz", str(again), "--no-progress"])
    assert not np.array_equal(np.load(again)["samples"], samples)
    paint = tmp_path / "paint.png"
    assert main(["inpaint", str(run), "--n-images", "2", "--completions", "2", "--mask", "right",
                 "--out", str(paint), "--no-progress"]) == 0
    assert paint.exists()
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_ema_rate_warms_up_then_holds():
    from ncsn.train import ema_rate_at, update_ema

    assert ema_rate_at(0.999, 0) == pytest.approx(0.1)
    assert ema_rate_at(0.999, 90) == pytest.approx(0.91)
    assert ema_rate_at(0.999, 100_000) == 0.999
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = ema.weight.detach().clone()
    update_ema(ema, model, 0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * model.weight)


def test_sample_grids_during_training(tmp_path):
    config = tiny_config("training.n_iters=4", "training.sample_freq=2", "training.sample_n=4")
    train(config, tmp_path, progress=False)
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step_0000002.png", "step_0000004.png"]
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_logged_steps_per_second_cover_the_last_interval_only(tmp_path, monkeypatch):
    """A slow first step (as when torch.compile compiles) must not drag down the later rates."""
    import ncsn.train as train_module

    ticks = iter([0.0, 100.0] + [100.0 + k for k in range(1, 50)])  # start, step 1 after 100 s, then 1 s per step
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    config = load_config("configs/digits.yaml", TINY + ["training.n_iters=4"])
    train(config, tmp_path, device="cpu", progress=False)
    with open(tmp_path / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["steps_per_s"]) for r in rows] == [0.01, 1.0, 1.0, 1.0]
    assert [float(r["elapsed_s"]) for r in rows] == [100.0, 101.0, 102.0, 103.0]


def test_train_announces_what_it_trains(tmp_path, capsys):
    sets = [a for s in TINY + ["training.n_iters=2"] for a in ("--set", s)]
    assert main(["train", "configs/digits.yaml", "--workdir", str(tmp_path), "--device", "cpu", *sets]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("digits/train: 1500 images 1x8x8 | RefineNet ngf=8, ")
    assert ("| VE, 4 sigmas 2 -> 0.05 | objective ncsn | batch 16 over 1 process(es) on cpu | amp off | "
            "steps 0 -> 2") in first
    assert main(["train", "configs/digits.yaml", "--workdir", str(tmp_path), "--device", "cpu", "--resume",
                 *sets, "--set", "training.n_iters=3"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("steps 2 -> 3 (resumed)")
