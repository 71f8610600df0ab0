"""`ncsn eval WORKDIR|CKPT --n N --metrics fid,is,pr,kid` (or `--fake samples.npz`)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from ncsn.argtypes import nonnegative_int, positive_float, positive_int
from ncsn.errors import UserError
from ncsn.launch import add_procs_argument


def add_parser(subparsers) -> None:
    """Register ``ncsn eval`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser("eval", help="FID, Inception Score, KID, precision/recall of samples",
                              description="Sample a trained model (or read samples made elsewhere) and compare "
                                          "them with the dataset's real images; prints a table, writes JSON.")
    p.add_argument("target", nargs="?", help="a run directory (its newest checkpoint) or a checkpoint file")
    p.add_argument("--fake", help="evaluate these samples instead: .npz with key 'samples', (N, C, H, W) in [0, 1]")
    p.add_argument("--dataset", help="reference dataset for --fake (default: the run's dataset, else digits)")
    p.add_argument("--data-root", help="where the reference dataset lives (default: the run's data.root)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"],
                   help="reference split (default: train, as FID on CIFAR-10 is usually reported)")
    p.add_argument("--download", action="store_true",
                   help="fetch MNIST / CIFAR-10 into --data-root when they are not there (MD5-checked)")
    p.add_argument("--real-n", type=positive_int,
                   help="use at most this many reference images, and held-out images for bpd (default: all)")
    p.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=1000,
                   help="samples to generate (default 1000; under torchrun spell it --num-samples)")
    p.add_argument("--metrics", default="fid,is,kid,pr",
                   help="comma list of fid, is, kid, pr, dc, bpd (bpd: bits/dim on the held-out split, the exact "
                        "likelihood through the probability-flow ODE, and for VP models also DDPM's variational "
                        "bound, bpd_vlb)")
    p.add_argument("--ode-tol", type=positive_float, default=1e-5,
                   help="bpd: the ODE solver's rtol = atol (default 1e-5)")
    p.add_argument("--probes", type=positive_int, default=1, help="bpd: Hutchinson probes per image (default 1)")
    p.add_argument("--every-checkpoint", action="store_true",
                   help="evaluate each saved checkpoint of the run; writes a metric-vs-step table and plot")
    p.add_argument("--baselines", action="store_true",
                   help="also score held-out real images (the floor) and uniform noise against the reference")
    p.add_argument("--inception-weights", help="pt_inception-2015-12-05-6726825d.pth for CIFAR-10/CelebA/folders")
    p.add_argument("--classifier", help="classifier weights giving the features for mnist (from train-classifier)")
    p.add_argument("--out", help="JSON to write (default: WORKDIR/eval.json, or eval.json)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA weights")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.KEY=VALUE")
    p.add_argument("--batch-size", type=positive_int, help="sampler batch size (default: sampling.batch_size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    add_procs_argument(p)
    p.set_defaults(func=run)


def read_fake(path: str | Path) -> tuple[torch.Tensor, dict]:
    """Samples from an .npz (key ``samples``, ``(N, C, H, W)`` floats in [0, 1]), checked,
    with the provenance ``ncsn sample`` records beside them (checkpoint, step, sampler)."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise UserError(f"cannot read samples from {path}: the file is empty")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read samples from {path}: {_first_line(err)}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise UserError(f"{path} is a bare array, not an .npz archive with an array named 'samples'")
    try:
        with data:
            if "samples" not in data.files:
                raise UserError(f"{path} has no array named 'samples' (found: {', '.join(data.files) or 'none'})")
            samples = data["samples"]
            provenance = json.loads(str(data["provenance"])) if "provenance" in data.files else {}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read samples from {path}: {_first_line(err)}") from None
    if samples.ndim != 4 or samples.shape[1] not in (1, 3):
        raise UserError(f"{path}: samples must have shape (N, C, H, W) with C in (1, 3), got {samples.shape}")
    if samples.dtype.kind not in "fiu" or samples.size == 0:
        raise UserError(f"{path}: samples must be a non-empty array of numbers in [0, 1], got {samples.size} of "
                        f"dtype {samples.dtype}")
    samples = samples.astype(np.float32)
    finite = np.isfinite(samples)
    if not finite.all():
        raise UserError(f"{path}: samples must be finite floats in [0, 1] ({samples.size - int(finite.sum())} of "
                        f"{samples.size} values are NaN or infinite)")
    if samples.min() < -1e-3 or samples.max() > 1 + 1e-3:
        raise UserError(f"{path}: samples must be finite floats in [0, 1] "
                        f"(found range [{samples.min():.3g}, {samples.max():.3g}])")
    return torch.from_numpy(samples).clamp(0, 1), provenance


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def run(args) -> int:
    """Run ``ncsn eval`` with the parsed ``args``; returns the exit status."""
    from ncsn import distributed
    from ncsn import evaluation as ev
    from ncsn.commands.sample import apply_sampling_overrides
    from ncsn.device import resolve_device
    from ncsn.generate import generate, sampler_settings
    from ncsn.metrics.features import get_extractor

    names = ev.parse_metrics(args.metrics)
    sample_names = [m for m in names if m in ev.SAMPLE_METRICS]
    if "bpd" in names and args.fake:
        raise UserError("bpd evaluates a model's likelihood: give a run directory or checkpoint, not --fake samples")
    if bool(args.target) == bool(args.fake):
        raise UserError("give either a run directory / checkpoint or --fake samples.npz")
    if args.every_checkpoint and not args.target:
        raise UserError("--every-checkpoint needs a run directory")
    from ncsn.launch import relaunch_if_asked

    code = relaunch_if_asked(args) if args.target else None
    if code is not None:
        return code
    with distributed.session(resolve_device(args.device)) as ctx:
        progress = not args.no_progress and ctx.is_main
        if args.fake:
            fake_images, provenance = read_fake(args.fake)
            dataset = args.dataset or "digits"
            size, channels = fake_images.shape[-1], fake_images.shape[1]
            root = args.data_root
            sources = [({"samples": str(args.fake), **provenance}, fake_images, f"samples {Path(args.fake).name}")]
        else:
            sources = []
            for model, config, info in checkpoints_to_evaluate(args, ctx):
                config = apply_sampling_overrides(config, args.overrides)
                meta = {"checkpoint": info["checkpoint"], "step": info["step"], "ema": info["ema"],
                        "seed": args.seed, **sampler_settings(config)}
                if "bpd" in names:
                    held_out = "test" if args.split == "train" else "train"
                    meta["likelihood"] = ev.bits_per_dim(
                        model, config, held_out, args.real_n, args.batch_size or config["sampling"]["batch_size"],
                        args.seed, progress, args.download, ctx=ctx, rtol=args.ode_tol, atol=args.ode_tol,
                        n_probes=args.probes)
                images = (generate(model, config, args.n, seed=args.seed, progress=progress,
                                   batch_size=args.batch_size, ctx=ctx) if sample_names else None)
                sources.append((meta, images, f"step {info['step']}{' (EMA)' if info['ema'] else ''}"))
            d = config["data"]
            dataset, size, channels = args.dataset or d["dataset"], d["image_size"], d["channels"]
            root = args.data_root or d["root"]
    if not ctx.is_main:
        return 0

    out = Path(args.out) if args.out else (Path(args.target) / "eval.json" if args.target and Path(args.target).is_dir()
                                          else Path("eval.json"))
    if not sample_names:  # bpd alone: no samples, no features
        rows = [{"label": label, "metrics": likelihood_values(meta), "protocol": meta} for meta, _, label in sources]
        for row in rows:
            print_likelihood(row["label"], row["protocol"]["likelihood"])
        ev.write_json(out, {"metrics": names, "results": rows})
        print(f"wrote {out}")
        return 0
    extractor = get_extractor(dataset, inception_weights=args.inception_weights, classifier=args.classifier,
                              device=ctx.device)
    real = ev.real_features(extractor, dataset, root, args.split, size, channels, args.real_n, progress,
                           args.download)
    if args.baselines:
        held_out = "test" if args.split == "train" else "train"
        n_base = min(args.n if args.target else len(sources[0][1]), 10_000)
        real_other = ev.load_real_images(dataset, root, held_out, size, channels, n_base, args.download,
                                         progress)
        noise = torch.rand((n_base, channels, size, size), generator=torch.Generator().manual_seed(args.seed))
        sources += [({"baseline": f"real {dataset}/{held_out} images"}, real_other, f"real ({held_out})"),
                    ({"baseline": "uniform noise"}, noise, "uniform noise")]

    rows = []
    for meta, images, label in sources:
        fake = extractor.extract(images, progress=progress)
        values = ev.compute_metrics(sample_names, fake, real, seed=args.seed)
        values.update(likelihood_values(meta))
        rows.append({"label": label, "metrics": values,
                     "protocol": ev.protocol(extractor, dataset, args.split, real["n"], len(images), meta)})
    first = rows[0]["protocol"]
    print(f"reference: {first['reference']} ({real['n']} images) | features: {extractor.name} "
          f"(sha256 {extractor.weights_sha256[:12]}) | generated: {len(sources[0][1])}")
    if "sampler" in sources[0][0]:
        print("sampler: " + ", ".join(f"{k}={sources[0][0][k]}" for k in sampler_settings_keys()
                                      if k in sources[0][0]))
    print(ev.format_table(rows, names))
    if "bpd" in names:
        print_likelihood("protocol", sources[0][0]["likelihood"], values=False)

    ev.write_json(out, {"metrics": names, "results": rows})
    written = [str(out)]
    if args.every_checkpoint:
        written += write_metric_vs_step(rows, names, out.with_name("eval_vs_step"))
    print("wrote " + ", ".join(written))
    return 0


def checkpoints_to_evaluate(args, ctx):
    """``(model, config, info)`` of the target's newest readable checkpoint, or with ``--every-checkpoint``
    of each readable one (the others named in one note on stderr, and left in place)."""
    from ncsn import checkpoint as ckpt
    from ncsn.errors import CheckpointError, note
    from ncsn.generate import load_model_for_sampling

    if not args.every_checkpoint:
        yield load_model_for_sampling(args.target, use_ema=not args.no_ema, device=ctx.device)
        return
    found = ckpt.list_checkpoints(args.target)
    if not found:
        raise CheckpointError(f"no checkpoint found in {ckpt.checkpoint_dir(args.target)}")
    skipped = []
    for _, path in found:  # one model at a time
        try:
            loaded = load_model_for_sampling(path, use_ema=not args.no_ema, device=ctx.device)
        except CheckpointError as err:
            skipped.append(str(err))
            continue
        yield loaded
    if len(skipped) == len(found):
        raise CheckpointError(f"no readable checkpoint in {ckpt.checkpoint_dir(args.target)}: {'; '.join(skipped)}")
    if skipped:
        note(f"evaluated {len(found) - len(skipped)} of {len(found)} checkpoints; skipped (not deleted): "
             f"{'; '.join(skipped)}")


def likelihood_values(meta: dict) -> dict:
    """The likelihood numbers of an evaluated source (``bpd``, ``bpd_vlb``), without their protocols."""
    return {name: value for name, (value, _) in meta.get("likelihood", {}).items()}


def print_likelihood(label: str, likelihood: dict, values: bool = True) -> None:
    """One line per likelihood number, saying which it is and how it was measured."""
    for name, (value, p) in likelihood.items():
        how = f"{p['n']} images of {p['split']} on {p['grey_levels']} grey levels, {p['nfe_per_image']:.0f} NFE each"
        if name == "bpd":
            how += f"; {p['dequantisation']}; {p['ode']}; trace {p['trace']}; prior {p['prior']}"
        head = f"{label}: {name} = {value:.4f} bits/dim, " if values else f"{name}: "
        print(f"{head}{p['bound']} ({how})")


def sampler_settings_keys() -> list[str]:
    """The keys of a source's sampler settings that ``ncsn eval`` prints, in order."""
    return ["checkpoint", "step", "ema", "seed", "sampler", "arch", "process", "nfe", "sigma_begin", "sigma_end",
            "num_classes", "num_timesteps", "beta_schedule", "sigmas", "n_levels", "rho", "step_lr", "n_steps_each",
            "eta", "predictor", "corrector", "snr", "n_corrector", "solver", "denoise", "variance", "clip_x0"]


def write_metric_vs_step(rows: list[dict], names: list[str], stem: Path) -> list[str]:
    """CSV and PNG of each metric against the checkpoint step (NCSNv2 picks checkpoints by FID)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncsn.atomic import atomic_write
    from ncsn.plotting import save_figure

    steps = [r for r in rows if "step" in r["protocol"]]
    keys = sorted({k for r in steps for k in r["metrics"]})
    csv_path, png_path = stem.with_suffix(".csv"), stem.with_suffix(".png")
    with atomic_write(csv_path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step"] + keys)
        for r in steps:
            writer.writerow([r["protocol"]["step"]] + [r["metrics"][k] for k in keys])
    main_key = "fid" if "fid" in keys else keys[0]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["protocol"]["step"] for r in steps], [r["metrics"][main_key] for r in steps], "o-")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel(main_key.upper())
    ax.grid(alpha=0.3)
    save_figure(fig, png_path)
    return [str(csv_path), str(png_path)]
