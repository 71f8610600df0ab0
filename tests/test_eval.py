"""`ncsn eval`: real-vs-real near the floor, noise far away, every number with its protocol."""

import json

import numpy as np
import pytest
import torch

from ncsn.cli import main
from ncsn.data.images import get_dataset


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NCSN_CACHE", str(tmp_path / "cache"))


def save_npz(path, images):
    np.savez(path, samples=np.asarray(images, dtype=np.float32))
    return path


def test_real_near_floor_noise_far_with_protocol(tmp_path, capsys):
    test = get_dataset("digits", train=False)
    real = save_npz(tmp_path / "real.npz", test.get_batch(torch.arange(len(test))))
    noise = save_npz(tmp_path / "noise.npz", torch.rand(len(test), 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    out_real, out_noise = tmp_path / "real.json", tmp_path / "noise.json"
    assert main(["eval", "--fake", str(real), "--metrics", "fid,is,kid,pr,dc", "--out", str(out_real),
                 "--no-progress"]) == 0
    assert main(["eval", "--fake", str(noise), "--metrics", "fid,is,kid,pr", "--out", str(out_noise),
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "digits-cnn" in table and "precision" in table
    r = json.loads(out_real.read_text())["results"][0]
    n = json.loads(out_noise.read_text())["results"][0]
    assert r["metrics"]["fid"] < 10 and n["metrics"]["fid"] > 100
    assert r["metrics"]["is"] > 8 and n["metrics"]["is"] < 3
    assert r["metrics"]["precision"] > 0.7 and n["metrics"]["precision"] < 0.3
    assert r["metrics"]["kid"] < 0.1 * n["metrics"]["kid"]
    proto = r["protocol"]
    assert proto["reference"] == "digits/train" and proto["n_real"] == 1500 and proto["n_fake"] == len(test)
    assert proto["extractor"] == "digits-cnn" and len(proto["extractor_weights_sha256"]) == 64
    assert list((tmp_path / "cache" / "features").iterdir())  # reference features cached


def test_bad_fake_files_are_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 1, 8, 8), np.float32))
    assert main(["eval", "--fake", str(bad)]) == 2
    assert "no array named 'samples'" in capsys.readouterr().err
    np.savez(bad, samples=np.full((2, 1, 8, 8), 3.0, np.float32))
    assert main(["eval", "--fake", str(bad)]) == 2
    assert "in [0, 1]" in capsys.readouterr().err
    assert main(["eval", "--fake", str(bad), "--metrics", "fid,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_every_checkpoint_writes_a_table_and_plot(tmp_path):
    run = tmp_path / "run"
    tiny = ["training.batch_size=16", "training.n_iters=4", "training.snapshot_freq=2", "training.keep_checkpoints=5",
            "model.ngf=8", "model.num_classes=3", "model.sigma_begin=2.0", "model.sigma_end=0.05",
            "sampling.n_steps_each=2"]
    assert main(["train", "configs/digits.yaml", "--workdir", str(run), "--no-progress",
                 *[a for s in tiny for a in ("--set", s)]]) == 0
    assert main(["eval", str(run), "--every-checkpoint", "--n", "40", "--metrics", "fid,pr", "--no-progress"]) == 0
    rows = json.loads((run / "eval.json").read_text())["results"]
    assert [r["protocol"]["step"] for r in rows] == [2, 4]
    assert all(r["protocol"]["ema"] is True and r["protocol"]["n_steps_each"] == 2 for r in rows)
    csv_lines = (run / "eval_vs_step.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,") and len(csv_lines) == 3
    assert (run / "eval_vs_step.png").stat().st_size > 0
