"""`ncsn toy --dist mixture --objective ncsn|dsm|ssm|exact --out DIR [--steps N] [--seed S] [--energy]`."""

from __future__ import annotations

from ncsn.argtypes import nonnegative_int, positive_int


def add_parser(subparsers) -> None:
    """Register ``ncsn toy`` and its options with the CLI's ``subparsers``."""
    from ncsn.toy import DEFAULT_STEPS

    p = subparsers.add_parser(
        "toy", help="learn the score of a 2-D toy distribution and compare Langevin with annealed Langevin",
        description="Train a noise-conditional score network on a 2-D toy distribution, sample it with "
                    "Langevin and annealed Langevin dynamics from a uniform start (NCSN, Figure 3), and "
                    "write DIR/toy.png and DIR/metrics.json.")
    p.add_argument("--dist", default="mixture",
                   help="mixture (the paper's 1/5 : 4/5 Gaussians) | 8gaussians | moons | swissroll | "
                        "checkerboard | rings (default: mixture)")
    p.add_argument("--objective", default="ncsn",
                   help="ncsn (multi-level DSM) | dsm | ssm | exact; the last three are applied per noise "
                        "level (default: ncsn)")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help=f"training steps (default: {DEFAULT_STEPS})")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for toy.png and metrics.json")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--n-samples", type=positive_int, default=5000, help="samples per sampler (default: 5000)")
    p.add_argument("--energy", action="store_true", help="train an energy network E(x, sigma), s = -grad E")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``ncsn toy`` with the parsed ``args``; returns the exit status."""
    from ncsn.toy import run_toy, summary_table

    result = run_toy(args.out, dist=args.dist, objective=args.objective, steps=args.steps, seed=args.seed,
                     device=args.device, n_samples=args.n_samples, energy=args.energy,
                     progress=not args.no_progress)
    print(f"{args.dist} / {args.objective}{' (energy)' if args.energy else ''}: trained {args.steps} steps "
          f"in {result['train_seconds']:.1f} s (final loss {result['final_loss']:.4f}), "
          f"sampled in {result['sample_seconds']:.1f} s")
    print(summary_table(result))
    print(f"wrote {args.out}/toy.png and {args.out}/metrics.json")
    return 0
