"""`ncsn sample WORKDIR|CKPT --n N --out grid.png [--npz samples.npz] [--strip strip.png]`."""

from __future__ import annotations

import json

from ncsn.argtypes import nonnegative_int, positive_int
from ncsn.launch import add_procs_argument


def add_parser(subparsers) -> None:
    """Register ``ncsn sample`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser("sample", help="draw samples (annealed Langevin or DDPM's ancestral sampler)",
                              description="Sample a trained score model with sampling.method (NCSN Algorithm 1 "
                                          "for VE models, DDPM Algorithm 2 for VP ones by default) and save a grid.")
    p.add_argument("target", help="a run directory (its newest checkpoint) or a checkpoint file")
    p.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=64,
                   help="number of samples (default 64; under torchrun spell it --num-samples)")
    p.add_argument("--out", default="samples.png", help="PNG grid to write")
    p.add_argument("--grid-n", type=positive_int, default=100, help="samples shown in the grid (default: up to 100)")
    p.add_argument("--npz", help="also write the raw samples: key 'samples', (N, C, H, W) floats in [0, 1]")
    p.add_argument("--strip", help="also write the samples along the sampler's way (each noise level) as one picture")
    p.add_argument("--strip-n", type=positive_int, default=8, help="samples shown in the strip (default 8)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed for the initial noise and Langevin noise")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.KEY=VALUE",
                   help="override a sampling key, e.g. --set sampling.n_steps_each=50")
    p.add_argument("--batch-size", type=positive_int, help="samples per batch (default: sampling.batch_size)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--no-progress", action="store_true")
    add_procs_argument(p)
    p.set_defaults(func=run)


def apply_sampling_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply ``--set sampling.key=value`` to a checkpoint's config (other sections are fixed by training)."""
    from ncsn.config import merge, parse_override, validate
    from ncsn.errors import UserError

    for text in overrides:
        update = parse_override(text)
        if list(update) != ["sampling"]:
            raise UserError(f"only sampling.* keys can be changed when sampling, got {text!r}")
        config = merge(config, update, origin="--set")
    validate(config)
    return config


def run(args) -> int:
    """Run ``ncsn sample`` with the parsed ``args``; returns the exit status."""
    import numpy as np

    from ncsn import distributed
    from ncsn.atomic import write_npz
    from ncsn.device import resolve_device
    from ncsn.generate import generate, load_model_for_sampling, sampler_settings
    from ncsn.plotting import save_image_grid, save_strip

    from ncsn.launch import relaunch_if_asked

    code = relaunch_if_asked(args)
    if code is not None:
        return code
    with distributed.session(resolve_device(args.device)) as ctx:
        model, config, info = load_model_for_sampling(args.target, use_ema=not args.no_ema, device=ctx.device)
        config = apply_sampling_overrides(config, args.overrides)
        strip_n = min(args.strip_n, args.n) if args.strip else 0
        result = generate(model, config, args.n, seed=args.seed, progress=not args.no_progress,
                          strip=strip_n, batch_size=args.batch_size, ctx=ctx)
    if result is None:  # not rank 0
        return 0
    samples, levels = result if strip_n else (result, None)
    save_image_grid(samples[: args.grid_n], args.out)
    written = [args.out]
    if args.npz:
        provenance = {**info, "seed": args.seed, **sampler_settings(config)}
        write_npz(args.npz, compressed=True, samples=samples.numpy().astype(np.float32),
                  provenance=np.array(json.dumps(provenance)))
        written.append(args.npz)
    if levels:
        # these two end with Tweedie's step after their last level: show its result too
        if config["sampling"]["denoise"] and sampler_settings(config)["sampler"] in ("annealed_langevin",
                                                                                    "consistent_annealing"):
            levels = levels + [samples[:strip_n]]
        save_strip(levels, args.strip)
        written.append(args.strip)
    print(f"{args.n} samples from {info['checkpoint']} (step {info['step']}, "
          f"{'EMA' if info['ema'] else 'raw'} weights, {ctx.world_size} process(es)) -> {', '.join(written)}")
    return 0
