"""`ncsn compare`: the NCSN -> DDPM attribution ladder, on the quick preset."""

from __future__ import annotations

import json

import pytest

from ncsn.cli import main


@pytest.fixture(scope="module")
def ladder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--preset", "quick", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out


def test_quick_ladder_writes_the_report_with_every_rung(ladder_dir):
    report = json.loads((ladder_dir / "report.json").read_text())
    rungs = report["rungs"]
    assert [r["name"] for r in rungs] == ["ncsn", "unet", "vp", "ddpm"]
    assert [(r["arch"], r["process"], r["sampler"]) for r in rungs] == [
        ("refinenet", "ve", "annealed_langevin"), ("unet", "ve", "annealed_langevin"),
        ("unet", "vp", "annealed_langevin"), ("unet", "vp", "ddpm")]
    # equal budgets: the same steps, and the same network evaluations per sample (+1 for the denoising step)
    assert {r["train_steps"] for r in rungs} == {6}
    assert [r["nfe"] for r in rungs] == [21, 21, 21, 20]
    for r in rungs:
        assert set(r["metrics"]) == {"fid", "is", "kid", "precision", "recall", "density", "coverage"}
        assert r["train_seconds"] > 0 and r["sample_seconds"] >= 0
    assert rungs[2]["model_dir"] == rungs[3]["model_dir"] == "unet_vp"  # rung 4 samples rung 3's model
    assert report["floor"]["metrics"]["fid"] < min(r["metrics"]["fid"] for r in rungs)
    assert report["protocol"]["n_fake"] == 24 and "rough guide" in report["protocol"]["note"]
    md = (ladder_dir / "report.md").read_text()
    assert "| 4. + ancestral sampler: DDPM | 4 |" in md and "What each difference bought" in md
    assert (ladder_dir / "compare.png").stat().st_size > 10_000


def test_a_second_run_reuses_models_and_samples(ladder_dir, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in ladder_dir.glob("*/checkpoints/*.pt")}
    samples = {p: p.stat().st_mtime_ns for p in ladder_dir.glob("*.npz")}
    before = json.loads((ladder_dir / "report.json").read_text())
    assert main(["compare", "--preset", "quick", "--out", str(ladder_dir), "--device", "cpu", "--no-progress"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in ladder_dir.glob("*/checkpoints/*.pt")} == stamps
    assert {p: p.stat().st_mtime_ns for p in ladder_dir.glob("*.npz")} == samples
    after = json.loads((ladder_dir / "report.json").read_text())
    assert [r["metrics"] for r in after["rungs"]] == [r["metrics"] for r in before["rungs"]]


def test_a_chosen_sampler_adds_a_rung_on_the_trained_models(ladder_dir, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in ladder_dir.glob("*/checkpoints/*.pt")}
    assert main(["compare", "--preset", "quick", "--out", str(ladder_dir), "--device", "cpu", "--no-progress",
                 "--set", "sampling.method=pf_ode", "--set", "sampling.sigmas=karras",
                 "--set", "sampling.n_levels=5"]) == 0
    capsys.readouterr()
    assert {p: p.stat().st_mtime_ns for p in ladder_dir.glob("*/checkpoints/*.pt")} == stamps  # nothing retrained
    rungs = json.loads((ladder_dir / "report.json").read_text())["rungs"]
    assert [r["name"] for r in rungs] == ["ncsn", "unet", "vp", "ddpm", "sampler"]
    fast = rungs[-1]
    assert (fast["sampler"], fast["nfe"], fast["model_dir"]) == ("pf_ode", 9, "unet_vp")
    assert "| 5. + pf ode (DDPM's model) | sampler |" in (ladder_dir / "report.md").read_text()


def test_a_ladder_directory_with_other_settings_is_refused(ladder_dir, capsys):
    assert main(["compare", "--preset", "quick", "--out", str(ladder_dir), "--device", "cpu", "--no-progress",
                 "--set", "optim.lr=0.002"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings (optim.lr)" in err and len(err.strip().splitlines()) == 1


def test_unknown_preset_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
