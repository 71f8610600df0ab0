"""`ncsn reproduce`: one runnable entry per finding of the material, each with its figure, numbers and verdict.

Every entry ``NAME`` writes ``OUT/NAME.png`` (its figure; ``cifar10-table`` has none) and ``OUT/NAME.json``
holding at least ``name``, ``finding`` (the claim, with the paper's figure or table), ``budget``
(``quick`` or ``full``), ``settings``, ``seconds``, ``reproduced`` (true, false, or null where nothing was
run) and ``verdict`` (one line). Work that an entry trains or samples goes to ``OUT/NAME/``.

The quick budgets exist for the tests: they run in seconds, and their numbers show the mechanics, not the
finding (the verdict says so).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ncsn.atomic import ensure_folder, write_bytes, write_text
from ncsn.device import single_cpu_thread, synchronize
from ncsn.errors import UserError
from ncsn.experiments import pitfalls

QUICK_NOTE = " [quick budget: checks the mechanics, not the finding]"


@dataclass(frozen=True)
class Entry:
    """One finding: its name, the claim and where it is made, and the function that reproduces it.

    ``run(out, quick, seed, device, progress, run_dir)`` returns the JSON's content (without the fields
    :func:`run_entry` adds) and writes the figure ``out/NAME.png``.
    """

    name: str
    finding: str
    run: Callable[..., dict]


def _pitfall(experiment: Callable[..., dict], plot: Callable, quick_settings, full_settings, figure: str):
    """An entry's ``run`` for one of :mod:`ncsn.experiments.pitfalls`' experiments and its figure."""

    def run(out: Path, quick: bool, seed: int, device: torch.device, progress: bool, run_dir) -> dict:
        settings = quick_settings if quick else full_settings
        with single_cpu_thread(device):  # one thread: as fast for these small nets, and the same numbers anywhere
            result = experiment(settings, seed=seed, device=device, progress=progress)
        plot(result, out / figure)
        return result

    return run


def _mixture(out: Path, quick: bool, seed: int, device: torch.device, progress: bool, run_dir) -> dict:
    from ncsn.toy import DEFAULT_STEPS, run_toy

    work = out / "mixture"
    steps, n_samples = (100, 500) if quick else (DEFAULT_STEPS, 5000)
    result = run_toy(work, dist="mixture", objective="ncsn", steps=steps, seed=seed, device=str(device),
                     n_samples=n_samples, progress=progress)
    write_bytes(out / "mixture.png", (work / "toy.png").read_bytes())
    true_weight = float(result["data"]["mode_weights"][0])
    weights = {name: float(result[name]["mode_weights"][0]) for name in ("langevin", "annealed_langevin")}
    errors = {name: abs(w - 0.2) for name, w in weights.items()}
    reproduced = errors["annealed_langevin"] < errors["langevin"]
    verdict = (f"{'reproduced' if reproduced else 'not reproduced'}: weight of the 1/5 mode: annealed Langevin "
               f"{weights['annealed_langevin']:.3f}, Langevin {weights['langevin']:.3f} (true 0.2; a fresh sample "
               f"{true_weight:.3f})")
    return {"settings": result["settings"], "small_mode_weight": weights | {"data": true_weight},
            "mmd": {name: result[name]["mmd"] for name in ("langevin", "annealed_langevin", "data")},
            "details": str(work / "metrics.json"), "reproduced": bool(reproduced), "verdict": verdict}


def _train_digits(work: Path, quick: bool, device: torch.device, progress: bool) -> Path:
    """A digits NCSN (configs/digits.yaml) trained in ``work`` (resumed if already there)."""
    from ncsn.config import load_config, packaged_config
    from ncsn.train import train

    overrides = ["training.n_iters=10", "training.snapshot_freq=10", "model.ngf=4", "sampling.n_steps_each=10",
                 "sampling.batch_size=64"] if quick else []
    config = load_config(packaged_config("digits"), overrides)
    train(config, work, resume=True, device=str(device), progress=progress)
    return work


def nearest_distances(samples: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """For each sample, the Euclidean distance (over all pixels) to its nearest image in ``reference``."""
    return torch.cdist(samples.flatten(1).double(), reference.flatten(1).double()).min(dim=1).values


def _annealing_strip(out: Path, quick: bool, seed: int, device: torch.device, progress: bool, run_dir) -> dict:
    from ncsn.evaluation import load_real_images
    from ncsn.generate import generate, load_model_for_sampling, sampler_settings
    from ncsn.plotting import save_strip

    source = Path(run_dir) if run_dir else _train_digits(out / "annealing-strip", quick, device, progress)
    model, config, info = load_model_for_sampling(source, device=device)
    if config["data"]["dataset"] != "digits":
        raise UserError(f"annealing-strip measures distances to the digits; {source} was trained on "
                        f"{config['data']['dataset']}")
    n = 16 if quick else 100
    samples, levels = generate(model, config, n, seed=seed, progress=progress, strip=n)
    levels = levels + [samples]
    save_strip([level[:8] for level in levels], out / "annealing-strip.png")
    reference = load_real_images("digits", None, "train", image_size=8, channels=1)
    held_out = load_real_images("digits", None, "test", image_size=8, channels=1, limit=n)
    real = nearest_distances(held_out, reference).mean().item()
    distances = [nearest_distances(level, reference).mean().item() for level in levels]
    reproduced = distances[-1] < distances[0] and distances[-1] < 2.0 * real
    verdict = (f"{'reproduced' if reproduced else 'not reproduced'}: the mean distance to the nearest training digit "
               f"falls from {distances[0]:.2f} after the first snapshot to {distances[-1]:.2f} at the end (held-out "
               f"real digits: {real:.2f})")
    return {"settings": {"run": str(source), "checkpoint": info["checkpoint"], "step": info["step"], "n": n,
                         "seed": seed, **sampler_settings(config)},
            "snapshots": len(levels), "nearest_distance": distances, "nearest_distance_real": real,
            "reproduced": bool(reproduced), "verdict": verdict}


def _ddpm(out: Path, quick: bool, seed: int, device: torch.device, progress: bool, run_dir) -> dict:
    from ncsn.config import load_config, packaged_config
    from ncsn.experiments.compare import run_ladder

    work = out / "ddpm"
    report = run_ladder(work, load_config(packaged_config("digits")), "quick" if quick else "full",
                        device=str(device), seed=seed, progress=progress)
    write_bytes(out / "ddpm.png", (work / "compare.png").read_bytes())
    fids = {rung["name"]: rung["metrics"]["fid"] for rung in report["rungs"]}
    first, last = report["rungs"][0], report["rungs"][-1]
    steps = list(zip(report["rungs"], report["rungs"][1:]))
    before, best = min(steps, key=lambda pair: pair[1]["metrics"]["fid"] - pair[0]["metrics"]["fid"])
    reproduced = fids[last["name"]] < fids[first["name"]]
    verdict = (f"{'reproduced' if reproduced else 'not reproduced'}: FID {fids[first['name']]:.2f} (NCSN) -> "
               f"{fids[last['name']]:.2f} (DDPM) at equal steps and network evaluations; the step that changed FID "
               f"most in its favour: {best['title']} ({best['metrics']['fid'] - before['metrics']['fid']:+.2f}); "
               f"real held-out floor {report['floor']['metrics']['fid']:.2f}")
    return {"settings": report["protocol"], "fid": fids, "floor_fid": report["floor"]["metrics"]["fid"],
            "report": str(work / "report.md"), "reproduced": bool(reproduced), "verdict": verdict}


#: what the papers report for CIFAR-10 (unconditional), and where
PAPER_NUMBERS = {
    "ncsn": {"inception_score": 8.87, "fid": 25.32,
             "source": "Song & Ermon 2019, Table 1 (50,000 samples; FID against the training set)"},
}


def cifar10_plan(device: torch.device, measure: bool) -> dict:
    """The commands that produce NCSN's CIFAR-10 row of Table 1 (training from scratch, or from the authors'
    released checkpoint through ``ncsn import``), what they cost, and whether this machine can run them. With
    ``measure``, one timed forward pass of the CIFAR-10 RefineNet on ``device`` prices them."""
    from ncsn.config import load_config, packaged_config
    from ncsn.data.images import _find_cifar
    from ncsn.generate import nfe_of

    config = load_config(packaged_config("cifar10"))
    t = config["training"]
    nfe = nfe_of(config)
    commands = [
        "ncsn train configs/cifar10.yaml --workdir runs/c10 --procs auto",
        "ncsn sample runs/c10 --n 50000 --npz runs/c10/samples.npz --out runs/c10/samples.png --procs auto",
        f"ncsn eval --fake runs/c10/samples.npz --dataset cifar10 --data-root {config['data']['root']} --split train "
        "--metrics fid,is --inception-weights pt_inception-2015-12-05-6726825d.pth --out runs/c10/table1.json",
    ]
    released = [
        "ncsn import path/to/ncsn/cifar10/checkpoint.pth --format ncsn --config configs/cifar10.yaml "
        "--out runs/ncsn_c10_released",
        f"ncsn eval runs/ncsn_c10_released --n 50000 --metrics fid,is --split train --data-root {config['data']['root']} "
        "--inception-weights pt_inception-2015-12-05-6726825d.pth --procs auto",
    ]
    cost = {"train_steps": t["n_iters"], "batch_size": t["batch_size"], "samples": 50000,
            "network_evaluations_per_sample": nfe}
    if measure:
        cost |= _price(config, device, nfe)
    root = Path(config["data"]["root"])
    return {"commands": commands, "from_released_checkpoint": released, "cost": cost, "paper": PAPER_NUMBERS,
            "has_gpu": torch.cuda.is_available(), "has_cifar10": _find_cifar(root) is not None, "data_root": str(root)}


def _price(config: dict, device: torch.device, nfe: int, batch: int = 8) -> dict:
    """Seconds of one forward pass of batch ``batch`` (the second of two), scaled to the plan's work: training
    counted as 3 forward passes per image (forward + backward), sampling as ``nfe`` per image."""
    from ncsn.build import build_score_model, make_sigmas

    model = build_score_model(config).to(device).eval()
    d = config["data"]
    x = torch.rand(batch, d["channels"], d["image_size"], d["image_size"], device=device)
    sigma = make_sigmas(config)[-1].expand(batch).to(device)
    with torch.no_grad():
        for _ in range(2):
            synchronize(device)
            start = time.perf_counter()
            model(x, sigma)
            synchronize(device)
            per_image = (time.perf_counter() - start) / batch
    t = config["training"]
    train_hours = 3 * per_image * t["n_iters"] * t["batch_size"] / 3600
    sample_hours = per_image * nfe * 50000 / 3600
    return {"measured_on": str(device), "forward_seconds_per_image": per_image,
            "train_hours_estimate": train_hours, "sample_hours_estimate": sample_hours}


def _cifar10_table(out: Path, quick: bool, seed: int, device: torch.device, progress: bool, run_dir) -> dict:
    plan = cifar10_plan(device, measure=not quick)
    missing = [what for what, ok in (("a GPU", plan["has_gpu"]), ("the CIFAR-10 data", plan["has_cifar10"])) if not ok]
    paper = PAPER_NUMBERS["ncsn"]
    verdict = (f"not run: the paper reports IS {paper['inception_score']} / FID {paper['fid']}; "
               + (f"this machine lacks {' and '.join(missing)}" if missing else "this machine can run it")
               + "; the commands are in cifar10-table.json")
    return {"settings": {"config": "configs/cifar10.yaml"}, **plan, "reproduced": None, "verdict": verdict}


ENTRIES = {entry.name: entry for entry in (
    Entry("manifold", "NCSN Figure 1: sliced score matching on raw data fluctuates; on data + N(0, 0.01^2) it "
                      "decreases smoothly (the manifold hypothesis)",
          _pitfall(pitfalls.manifold, pitfalls.plot_manifold, pitfalls.MANIFOLD_QUICK, pitfalls.MANIFOLD_FULL,
                   "manifold.png")),
    Entry("low-density", "NCSN Figure 2: a learned score is accurate near the modes and inaccurate where the data "
                         "density is low",
          _pitfall(pitfalls.low_density, pitfalls.plot_low_density, pitfalls.LOW_DENSITY_QUICK,
                   pitfalls.LOW_DENSITY_FULL, "low-density.png")),
    Entry("mixture", "NCSN Figure 3: on 1/5 N((-5,-5), I) + 4/5 N((5,5), I), Langevin dynamics gets the modes' "
                     "weights wrong, annealed Langevin dynamics gets them right", _mixture),
    Entry("annealing-strip", "NCSN Figure 4: annealed Langevin dynamics turns noise into digits level by level",
          _annealing_strip),
    Entry("ddpm", "NCSN vs DDPM at equal data, steps and network evaluations, one difference at a time (the "
                  "README's ladder, `ncsn compare`)", _ddpm),
    Entry("cifar10-table", "NCSN Table 1: CIFAR-10 Inception Score 8.87, FID 25.32 (needs a GPU for days)",
          _cifar10_table),
)}


def names() -> list[str]:
    """The names of the entries of ``ncsn reproduce``, in order."""
    return list(ENTRIES)


def check_names(requested: list[str]) -> list[str]:
    """The entries to run: ``requested`` in order (``all`` for every entry); a UserError for an unknown name."""
    if not requested:
        raise UserError(f"name an entry to reproduce (or all): {', '.join(ENTRIES)}; --list describes them")
    chosen: list[str] = []
    for name in requested:
        for each in (ENTRIES if name == "all" else [name]):
            if each not in ENTRIES:
                raise UserError(f"unknown entry {each!r}; choose from: {', '.join(ENTRIES)}, all")
            if each not in chosen:
                chosen.append(each)
    return chosen


def run_entry(name: str, out: str | Path, quick: bool = False, seed: int = 0, device: str = "auto",
              progress: bool = True, run_dir: str | Path | None = None) -> dict:
    """Reproduce the entry ``name`` into ``out``; returns what it wrote to ``out/NAME.json``."""
    from ncsn.device import resolve_device

    entry = ENTRIES[check_names([name])[0]]
    out = ensure_folder(out)
    start = time.perf_counter()
    result = entry.run(out, quick, seed, resolve_device(device), progress, run_dir)
    if quick and result["reproduced"] is not None:
        result["verdict"] += QUICK_NOTE
    payload = {"name": name, "finding": entry.finding, "budget": "quick" if quick else "full",
               "seconds": time.perf_counter() - start, **result}
    write_text(out / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    return payload
