"""NCSN vs DDPM, difference by difference: the attribution ladder behind ``ncsn compare``.

Ho et al. (2020, "Denoising Diffusion Probabilistic Models", Section 4.3 and Appendix) name four
differences between NCSN and DDPM: (1) the network (a U-Net with self-attention and a sinusoidal
time embedding in every block vs NCSN's RefineNet conditioned through its normalisations);
(2) the forward process scales the data down (VP) instead of only adding noise (VE); (3) VP's
last level destroys the signal, so its prior matches the aggregate posterior; (4) the sampler's
coefficients follow from beta_t instead of hand-set Langevin step sizes. The ladder switches
them on one at a time, with everything else equal (data, steps, batch, optimiser, EMA, network
evaluations per sample):

1. NCSN: RefineNet, VE, annealed Langevin
2. + U-Net                                   (difference 1)
3. + VP forward process, annealed Langevin   (differences 2 and 3)
4. + DDPM's ancestral sampler = DDPM         (difference 4; the model of rung 3)

Each trained model lives in ``DIR/<model>/`` (an ordinary run directory: ``ncsn sample`` and
``ncsn eval`` work on it), its samples in ``DIR/<rung>.npz``; both are reused when they match the
requested configuration, so an interrupted ladder continues where it stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ncsn.atomic import ensure_folder, write_npz, write_text
from ncsn.errors import UserError


@dataclass(frozen=True)
class Rung:
    name: str
    title: str
    difference: str
    model_dir: str
    model: dict
    sampling: dict = field(default_factory=dict)


def unet_sizes(image_size: int) -> dict:
    """The U-Net size keys for an image size (:data:`ncsn.models.unet.UNET_PRESETS`)."""
    from ncsn.models.unet import UNET_PRESETS

    preset = {8: "digits", 28: "mnist", 32: "cifar10"}.get(image_size, "cifar10")
    p = UNET_PRESETS[preset]
    return {"arch": "unet", "ngf": p["ch"], "ch_mult": list(p["ch_mult"]), "num_res_blocks": p["num_res_blocks"],
            "attn_resolutions": [r for r in p["attn_resolutions"] if r <= image_size], "dropout": p["dropout"]}


@dataclass(frozen=True)
class Preset:
    """Training and sampling budget of a ladder; ``nfe`` network evaluations per sample on every rung."""

    n_iters: int
    snapshot_freq: int
    n_samples: int
    nfe: int
    batch_size: int | None = None  # None: the base config's
    unet_width: int | None = None  # None: the U-Net preset's base width for the image size
    extra: dict = field(default_factory=dict)


PRESETS = {
    # a smoke run for CI: a few steps, few samples, T = 20 so DDPM's chain has 20 steps like the others
    "quick": Preset(n_iters=6, snapshot_freq=6, n_samples=24, nfe=20, batch_size=16, unet_width=16,
                    extra={"model": {"ngf": 4}, "sampling": {"batch_size": 64}}),
    # the README's ladder: each rung near its plateau, 1,000 samples, 1,000 network evaluations per sample
    "full": Preset(n_iters=6000, snapshot_freq=500, n_samples=1000, nfe=1000),
}


def ladder(base: dict, preset: Preset) -> list[tuple[Rung, dict]]:
    """The four rungs and each one's complete config, built from ``base`` and ``preset``."""
    image_size = base["data"]["image_size"]
    unet = unet_sizes(image_size)
    if preset.unet_width:
        unet["ngf"] = preset.unet_width
    n_levels = base["model"]["num_classes"]
    per_level = max(1, preset.nfe // n_levels)
    vp = {"process": "vp", "num_timesteps": preset.nfe}
    vp_levels = min(100, preset.nfe)
    trained = {"sigmas": "trained", "n_levels": 0}
    rungs = [
        Rung("ncsn", "NCSN: RefineNet, VE, annealed Langevin", "-", "refinenet_ve",
             {"arch": "refinenet", "process": "ve"},
             {**trained, "method": "annealed_langevin", "n_steps_each": per_level}),
        Rung("unet", "+ U-Net", "1", "unet_ve", {**unet, "process": "ve"},
             {**trained, "method": "annealed_langevin", "n_steps_each": per_level}),
        Rung("vp", "+ VP forward process (annealed Langevin on its scores)", "2, 3", "unet_vp", {**unet, **vp},
             {**trained, "method": "annealed_langevin", "n_levels": vp_levels,
              "n_steps_each": max(1, preset.nfe // vp_levels)}),
        Rung("ddpm", "+ ancestral sampler: DDPM", "4", "unet_vp", {**unet, **vp}, {**trained, "method": "ddpm"}),
    ]
    method = base["sampling"]["method"]
    if method not in ("auto", "annealed_langevin", "ddpm"):
        # --set sampling.method=...: one more rung, the DDPM model under that sampler with the given settings
        rungs.append(Rung("sampler", f"+ {method.replace('_', ' ')} (DDPM's model)", "sampler", "unet_vp",
                          {**unet, **vp}, {}))
    out = []
    for rung in rungs:
        config = copy.deepcopy(base)
        t = config["training"]
        t.update(n_iters=preset.n_iters, snapshot_freq=preset.snapshot_freq, sample_freq=0,
                 keep_checkpoints=max(t["keep_checkpoints"], preset.n_iters // preset.snapshot_freq + 1),
                 objective="auto")
        if preset.batch_size:
            t["batch_size"] = preset.batch_size
        for section, values in preset.extra.items():
            config[section].update(values)
        config["model"].update(rung.model)
        config["sampling"].update(rung.sampling)
        out.append((rung, config))
    return out


TRAINING_SECTIONS = ("training", "data", "model", "optim")
IGNORED_TRAINING_KEYS = ("cpu_threads", "num_workers", "sample_freq", "log_freq")


def _training_part(config: dict) -> dict:
    part = {k: copy.deepcopy(config[k]) for k in TRAINING_SECTIONS}
    for key in IGNORED_TRAINING_KEYS:
        part["training"].pop(key, None)
    return part


def trained_step(workdir: Path, config: dict) -> int:
    """The newest checkpoint's step in ``workdir`` (0 if none); an error if it was trained with another config."""
    from ncsn import checkpoint as ckpt
    from ncsn.build import complete_config

    found = ckpt.list_checkpoints(workdir)
    if not found:
        return 0
    saved = workdir / "config.yaml"
    if saved.exists():
        import yaml

        theirs = complete_config(yaml.safe_load(saved.read_text()))
        if _training_part(theirs) != _training_part(config):
            diff = [f"{s}.{k}" for s in TRAINING_SECTIONS for k in config[s]
                    if k not in IGNORED_TRAINING_KEYS and theirs[s].get(k) != config[s][k]]
            raise UserError(f"{workdir} holds a run with other settings ({', '.join(diff)}); "
                            f"use another --out or delete it")
    return found[-1][0]


def train_seconds(log_csv: Path) -> float:
    """Training time from a run's log.csv: sum over rows of (steps in the interval) / (steps/s), across resumes."""
    if not log_csv.exists():
        return float("nan")
    total, previous = 0.0, 0
    with open(log_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            step, rate = int(row["step"]), float(row["steps_per_s"])
            if step > previous and rate > 0:
                total += (step - previous) / rate
            previous = step
    return total


def eps_mse_curve(log_csv: Path, config: dict) -> tuple[list[int], list[float]]:
    """The training loss as the per-dimension noise-prediction error (NCSN's loss x 2 / D = L_simple)."""
    from ncsn.build import objective_of

    d = config["data"]
    dims = d["channels"] * d["image_size"] ** 2
    factor = 2.0 / dims if objective_of(config) == "ncsn" else 1.0
    steps, values = [], []
    if log_csv.exists():
        with open(log_csv, newline="") as handle:
            for row in csv.DictReader(handle):
                steps.append(int(row["step"]))
                values.append(float(row["loss"]) * factor)
    return steps, values


def _sample_key(config: dict, info: dict, n: int, seed: int) -> dict:
    from ncsn.generate import sampler_settings

    return {"checkpoint_step": info["step"], "n": n, "seed": seed, **sampler_settings(config)}


def _cached(path: Path, key: dict):
    """The samples and seconds stored at ``path`` if they were drawn with ``key``'s settings, else None."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as cached:
        if "key" in cached and json.loads(str(cached["key"])) == key:
            return torch.from_numpy(cached["samples"]), float(cached["seconds"])
    return None


def sample_rung(model_dir: Path, config: dict, path: Path, n: int, seed: int, device, progress: bool):
    """Samples of a rung (reused from ``path`` when they were drawn with the same settings), and the seconds spent."""
    from ncsn.generate import generate, load_model_for_sampling

    model, saved_config, info = load_model_for_sampling(model_dir, device=device)
    saved_config["sampling"] = copy.deepcopy(config["sampling"])
    key = _sample_key(saved_config, info, n, seed)
    hit = _cached(path, key)
    if hit is not None:
        return (*hit, key)
    began = time.perf_counter()
    samples = generate(model, saved_config, n, seed=seed, progress=progress)
    seconds = time.perf_counter() - began
    write_npz(path, compressed=True, samples=samples.numpy().astype(np.float32), key=np.array(json.dumps(key)),
              seconds=np.array(seconds))
    return samples, seconds, key


def estimate_seconds(models: dict[str, dict], done: dict[str, int], rungs: list[tuple[Rung, dict]],
                     preset: Preset, device, sampled: set[str] = frozenset()) -> float:
    """Expected time of the remaining work, from one timed training step and network evaluation per model."""
    from ncsn.build import build_score_model, objective_of
    from ncsn.train import objective_loss

    per_eval, total = {}, 0.0
    for name, config in models.items():
        torch.manual_seed(0)
        model = build_score_model(config).to(device)
        d, b = config["data"], config["training"]["batch_size"]
        x = torch.rand(b, d["channels"], d["image_size"], d["image_size"], device=device)
        levels = torch.randint(0, model.process.num_levels, (b,), device=device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-6)

        def step():
            loss = objective_loss(model, model, objective_of(config), x, levels)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        began = time.perf_counter()
        step()
        total += (time.perf_counter() - began) * max(0, config["training"]["n_iters"] - done[name])
        model.eval()
        with torch.no_grad():
            xs = torch.rand(min(preset.n_samples, config["sampling"]["batch_size"]), *x.shape[1:], device=device)
            std = model.level_stds[:1].expand(xs.shape[0])
            model(xs, std)
            began = time.perf_counter()
            model(xs, std)
            per_eval[name] = (time.perf_counter() - began) * math.ceil(preset.n_samples / xs.shape[0])
    from ncsn.generate import nfe_of

    for rung, config in rungs:
        if rung.name not in sampled:
            total += per_eval[rung.model_dir] * nfe_of(config)
    return total


def run_ladder(out: str | Path, base: dict, preset_name: str = "quick", device: str = "auto", seed: int = 0,
               progress: bool = True, log=print) -> dict:
    """Train (or reuse), sample and evaluate every rung; write ``report.json``, ``report.md`` and ``compare.png``."""
    from tqdm.auto import tqdm

    from ncsn import evaluation as ev
    from ncsn.device import resolve_device
    from ncsn.metrics.features import get_extractor
    from ncsn.train import train

    if preset_name not in PRESETS:
        raise UserError(f"unknown preset {preset_name!r}; choose from {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    out = ensure_folder(out)
    dev = resolve_device(device)
    rungs = ladder(base, preset)
    models: dict[str, dict] = {}
    for rung, config in rungs:
        models.setdefault(rung.model_dir, config)
    done = {name: trained_step(out / name, config) for name, config in models.items()}
    sampled = {rung.name for rung, config in rungs if done[rung.model_dir] >= preset.n_iters and
               _cached(out / f"{rung.name}.npz", _sample_key(config, {"step": done[rung.model_dir]},
                                                             preset.n_samples, seed)) is not None}
    expected = estimate_seconds(models, done, rungs, preset, dev, sampled)
    trained_already = [n for n, s in done.items() if s >= preset.n_iters]
    log(f"ncsn compare --preset {preset_name}: {len(rungs)} rungs, {len(models)} models "
        f"({preset.n_iters} steps, batch {rungs[0][1]['training']['batch_size']}), {preset.n_samples} samples of "
        f"~{preset.nfe} network evaluations each; expected time about {expected / 60:.0f} min on {dev}"
        + (f" ({', '.join(trained_already)} already trained)" if trained_already else "")
        + (f" ({', '.join(sorted(sampled))} already sampled)" if sampled else ""))

    stages = len(models) + 2 * len(rungs)
    bar = tqdm(total=stages, desc="ladder", unit="stage", disable=not progress, dynamic_ncols=True, position=0)
    train_info = {}
    for name, config in models.items():
        bar.set_postfix_str(f"train {name}")
        if done[name] < preset.n_iters:
            train(config, out / name, resume=True, device=str(dev), progress=progress)
        train_info[name] = {"train_steps": preset.n_iters, "train_seconds": train_seconds(out / name / "log.csv")}
        bar.update(1)

    dataset = base["data"]["dataset"]
    d = base["data"]
    extractor = get_extractor(dataset, device=dev)
    real = ev.real_features(extractor, dataset, d["root"], "train", d["image_size"], d["channels"], None, False)
    names = ["fid", "is", "kid", "pr", "dc"]
    results, samples_of = [], {}
    for rung, config in rungs:
        bar.set_postfix_str(f"sample {rung.name}")
        images, seconds, key = sample_rung(out / rung.model_dir, config, out / f"{rung.name}.npz",
                                           preset.n_samples, seed, dev, progress)
        bar.update(1)
        bar.set_postfix_str(f"evaluate {rung.name}")
        metrics = ev.compute_metrics(names, extractor.extract(images), real, seed=seed)
        bar.update(1)
        samples_of[rung.name] = images
        results.append({"name": rung.name, "title": rung.title, "difference": rung.difference,
                        "arch": config["model"]["arch"], "process": config["model"]["process"],
                        "sampler": key["sampler"], "nfe": key["nfe"], "model_dir": rung.model_dir,
                        **train_info[rung.model_dir], "sample_seconds": seconds,
                        "metrics": {k: metrics[k] for k in ("fid", "is", "kid", "precision", "recall",
                                                             "density", "coverage")},
                        "sampler_settings": key})
    bar.close()

    held_out = ev.load_real_images(dataset, d["root"], "test", d["image_size"], d["channels"], preset.n_samples)
    floor = ev.compute_metrics(names, extractor.extract(held_out), real, seed=seed)
    from ncsn.build import make_process

    prior_kl = {}
    reference = ev.load_real_images(dataset, d["root"], "train", d["image_size"], d["channels"])
    for name, config in models.items():
        process = make_process(config)
        dims = reference[0].numel()
        prior_kl[name] = float(process.prior_kl(process.to_model(reference)).mean()) / dims
    report = {
        "rungs": results,
        "floor": {"source": f"real {dataset}/test images", "n": int(held_out.shape[0]),
                  "metrics": {k: floor[k] for k in ("fid", "is", "kid", "precision", "recall", "density", "coverage")}},
        "protocol": {"preset": preset_name, "dataset": dataset, "reference": f"{dataset}/train", "n_real": real["n"],
                     "n_fake": preset.n_samples, "features": extractor.name,
                     "features_sha256": extractor.weights_sha256, "seed": seed, "pr_k": 3, "dc_k": 5,
                     "train_steps": preset.n_iters, "batch_size": rungs[0][1]["training"]["batch_size"],
                     "lr": base["optim"]["lr"], "ema_rate": base["model"]["ema_rate"], "device": str(dev),
                     "note": ("FID on fewer than 1,000 samples is a rough guide" if preset.n_samples < 1000
                              else "FID from the digits classifier's features, not Inception: compare rows "
                                   "with each other and with the floor")},
        "prior_kl_nats_per_dim": prior_kl,
    }
    ev.write_json(out / "report.json", report)
    write_text(out / "report.md", format_report(report))
    plot_ladder(out / "compare.png", results, samples_of, {n: (out / n / "log.csv", c) for n, c in models.items()})
    return report


def format_report(report: dict) -> str:
    """The ladder as a markdown table with what each difference bought."""
    p = report["protocol"]
    lines = [f"# NCSN vs DDPM on {p['dataset']}, difference by difference", "",
             f"{p['train_steps']} training steps of batch {p['batch_size']} (Adam lr {p['lr']}, EMA {p['ema_rate']}) "
             f"per model; {p['n_fake']} samples per rung against {p['n_real']} {p['reference']} images, features "
             f"from `{p['features']}`. {p['note']}.", "",
             "| rung | difference | arch | process | sampler | NFE | FID | IS | KID | precision | recall | density "
             "| coverage | train s | sample s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(report["rungs"], 1):
        m = r["metrics"]
        lines.append(f"| {i}. {r['title']} | {r['difference']} | {r['arch']} | {r['process']} | {r['sampler']} | "
                     f"{r['nfe']} | {m['fid']:.2f} | {m['is']:.2f} | {m['kid']:.2f} | {m['precision']:.2f} | "
                     f"{m['recall']:.2f} | {m['density']:.2f} | {m['coverage']:.2f} | {r['train_seconds']:.0f} | "
                     f"{r['sample_seconds']:.0f} |")
    f = report["floor"]["metrics"]
    lines.append(f"| real held-out ({report['floor']['n']}) | floor | | | | | {f['fid']:.2f} | {f['is']:.2f} | "
                 f"{f['kid']:.2f} | {f['precision']:.2f} | {f['recall']:.2f} | {f['density']:.2f} | "
                 f"{f['coverage']:.2f} | | |")
    lines += ["", "What each difference bought (FID, lower is better):", ""]
    rungs = report["rungs"]
    for prev, cur in zip(rungs, rungs[1:]):
        delta = cur["metrics"]["fid"] - prev["metrics"]["fid"]
        lines.append(f"- {cur['title']} (difference {cur['difference']}): FID {prev['metrics']['fid']:.2f} -> "
                     f"{cur['metrics']['fid']:.2f} ({delta:+.2f})")
    kl = report["prior_kl_nats_per_dim"]
    lines += ["", "Prior mismatch KL(q(x_last | x0) || prior), nats per dimension, averaged over the training "
                  "images: " + ", ".join(f"{k} {v:.2g}" for k, v in kl.items()), ""]
    return "\n".join(lines)


SHORT_TITLES = {"ncsn": "NCSN", "unet": "+ U-Net", "vp": "+ VP process", "ddpm": "+ ancestral sampler = DDPM"}


def plot_ladder(path: Path, results: list[dict], samples_of: dict, logs: dict) -> None:
    """Each rung's first 64 samples side by side, and the training curves as per-dimension noise-prediction error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncsn.plotting import make_grid, save_figure

    n = len(results)
    fig = plt.figure(figsize=(3.3 * n, 6.6), dpi=110)
    grid_spec = fig.add_gridspec(2, n, height_ratios=[3.2, 2.0])
    for i, r in enumerate(results):
        ax = fig.add_subplot(grid_spec[0, i])
        grid = make_grid(samples_of[r["name"]][:64], nrow=8)
        ax.imshow(grid[:, :, 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(f"{i + 1}. {SHORT_TITLES.get(r['name'], r['name'])}\n{r['arch']}, {r['process'].upper()}, "
                     f"{r['sampler'].replace('_', ' ')}\nFID {r['metrics']['fid']:.2f}, NFE {r['nfe']}", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(grid_spec[1, :])
    for name, (log_csv, config) in logs.items():
        steps, values = eps_mse_curve(log_csv, config)
        if steps:
            ax.plot(steps, values, label=name, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE per dim")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
