"""`ncsn import FILE --format ncsn|ncsnv2 --config CONFIG --out RUN_DIR`."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    """Register ``ncsn import`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser("import", help="import the authors' released NCSN / NCSNv2 checkpoint as a run",
                              description="Read a checkpoint released with ermongroup/ncsn or ermongroup/ncsnv2 "
                                          "(weights only: a pickle that could run code is refused), map its weights "
                                          "onto the network CONFIG describes and write a run directory that "
                                          "`ncsn sample|inpaint|eval` take.")
    p.add_argument("file", help="the released checkpoint (a .pth file)")
    p.add_argument("--format", required=True, choices=["ncsn", "ncsnv2"],
                   help="ncsn: [state_dict, optimizer] of CondRefineNetDilated; ncsnv2: [state_dict, optimizer, "
                        "epoch, step, ema] of NCSNv2 / NCSNv2Deeper / NCSNv2Deepest")
    p.add_argument("--config", required=True,
                   help="the file's network, data and the paper's sampler settings, e.g. configs/cifar10.yaml "
                        "(ncsn) or configs/ncsnv2_cifar10.yaml (ncsnv2)")
    p.add_argument("--out", required=True, help="run directory to write (config.yaml, checkpoints/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. --set data.root=/data/cifar10")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``ncsn import`` with the parsed ``args``; returns the exit status."""
    from ncsn.config import load_config
    from ncsn.importing import import_run

    config = load_config(args.config, args.overrides)
    summary = import_run(args.file, args.format, config, args.out)
    weights = "EMA and raw weights" if summary["ema"] else "weights (no EMA in the file)"
    print(f"imported {args.file} ({args.format}, step {summary['step']}, {summary['keys']} keys, each used once) "
          f"as {summary['arch']} with {summary['parameters']:,} parameters, {weights}, reference numerics "
          f"(model.numerics=2) -> {summary['checkpoint']}; next: ncsn sample {args.out}")
    return 0
