"""`ncsn train CONFIG.yaml --workdir DIR [--set section.key=value ...] [--resume]`."""

from __future__ import annotations

import signal
import sys

from ncsn.launch import add_procs_argument


def add_parser(subparsers) -> None:
    """Register ``ncsn train`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser("train", help="train a noise-conditional score network on images",
                              description="Train NCSN (RefineNet, multi-scale DSM, EMA) from a YAML config.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--workdir", required=True, help="run directory: checkpoints, log.csv, samples/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set training.n_iters=1000")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --workdir")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_procs_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``ncsn train`` with the parsed ``args``; returns the exit status."""
    from ncsn.config import load_config
    from ncsn.launch import relaunch_if_asked
    from ncsn.train import train

    config = load_config(args.config, args.overrides)
    code = relaunch_if_asked(args, config["training"]["batch_size"])
    if code is not None:
        return code
    summary = train(config, args.workdir, resume=args.resume, device=args.device, progress=not args.no_progress)
    reports = summary["main"]  # under torchrun only rank 0 reports
    if summary["status"] == "interrupted":
        if reports:
            name = signal.Signals(summary["signal"]).name if summary["signal"] else "signal"
            print(f"ncsn train: {name} received: checkpoint saved at step {summary['step']} in {args.workdir}; "
                  f"continue with --resume", file=sys.stderr)
        return 128 + int(summary["signal"] or 2)
    if reports:
        loss = summary["loss"]
        print(f"trained to step {summary['step']} in {summary['seconds']:.1f} s"
              f"{'' if loss is None else f', loss {loss:.4f}'}; checkpoints in {args.workdir}/checkpoints")
    return 0
