"""The main job's own commands (the Makefile's `demo` recipe) on a tiny budget."""

import json
import re
import shlex
from pathlib import Path

from ncsn.cli import main

TINY = {
    "train": ["--set", "training.n_iters=3", "--set", "training.snapshot_freq=3", "--set", "training.batch_size=8",
              "--set", "model.ngf=8", "--set", "model.num_timesteps=40", "--no-progress"],
    "sample": ["--set", "sampling.n_levels=8", "--no-progress"],
    "inpaint": ["--set", "sampling.n_steps_each=1", "--no-progress"],
    "eval": ["--no-progress"],
}


def demo_commands() -> list[list[str]]:
    """The `ncsn ...` lines of the Makefile's demo recipe, as argument lists."""
    text = Path("Makefile").read_text()
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    return [shlex.split(line.strip())[1:] for line in recipe.splitlines()[1:] if line.strip().startswith("$(NCSN)")]


def test_the_demo_recipe_runs_on_a_tiny_budget(tmp_path, monkeypatch, capsys):
    commands = demo_commands()
    assert [c[0] for c in commands] == ["train", "sample", "eval", "inpaint", "toy"]
    assert commands[0][1] == "configs/demo.yaml" and "--procs" in commands[0]
    config = Path("configs/demo.yaml").resolve()
    monkeypatch.chdir(tmp_path)
    for args in commands[:4]:  # the toy has its own tests
        args = [str(config) if a == "configs/demo.yaml" else a for a in args]
        args = [re.sub(r"^1000$", "12", a) for a in args]  # --n 1000
        if "--procs" in args:
            args[args.index("--procs") + 1] = "1"
        assert main(args + TINY[args[0]]) == 0, args
    report = json.loads((tmp_path / "demo" / "eval.json").read_text())
    labels = [row["label"] for row in report["results"]]
    assert labels[1:] == ["real (test)", "uniform noise"]
    provenance = report["results"][0]["protocol"]
    assert provenance["sampler"] == "consistent_annealing" and provenance["process"] == "vp"
    assert provenance["nfe"] == 8  # the sampler's levels, as recorded next to the samples
    for name in ("samples.png", "strip.png", "inpainting.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    capsys.readouterr()
