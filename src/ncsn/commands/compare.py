"""`ncsn compare [--preset quick|full] [--config CONFIG] --out DIR`: NCSN vs DDPM, difference by difference."""

from __future__ import annotations

from ncsn.argtypes import nonnegative_int


def add_parser(subparsers) -> None:
    """Register ``ncsn compare`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser(
        "compare", help="NCSN vs DDPM at equal data, steps, batch and network evaluations, one difference at a time",
        description="Train and sample the attribution ladder (1. NCSN: RefineNet, VE, annealed Langevin; 2. + U-Net; "
                    "3. + VP forward process; 4. + DDPM's ancestral sampler), evaluate every rung against the "
                    "training images, and write DIR/report.md, DIR/report.json and DIR/compare.png. Models and "
                    "samples already in DIR are reused.")
    p.add_argument("--preset", default="quick", help="quick (a smoke run, seconds) | full (the README's ladder: "
                                                     "6,000 steps per model, 1,000 samples of 1,000 NFE; about 2 "
                                                     "hours on 2 CPU cores) (default: quick)")
    p.add_argument("--config", default=None,
                   help="base config whose data, optimiser and RefineNet the ladder uses (default: configs/digits.yaml "
                        "as shipped with the package)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the base config (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the runs, samples and report go")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``ncsn compare`` with the parsed ``args``; returns the exit status."""
    from ncsn.config import load_config, packaged_config
    from ncsn.experiments.compare import run_ladder

    base = load_config(args.config or packaged_config("digits"), args.overrides)
    report = run_ladder(args.out, base, args.preset, device=args.device, seed=args.seed,
                        progress=not args.no_progress)
    from ncsn.experiments.compare import format_report

    print(format_report(report))
    print(f"wrote {args.out}/report.md, {args.out}/report.json, {args.out}/compare.png")
    return 0
