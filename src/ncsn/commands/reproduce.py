"""`ncsn reproduce NAME... --out DIR [--quick]` and `ncsn reproduce --list`: the material's findings, runnable."""

from __future__ import annotations

from ncsn.argtypes import nonnegative_int


def add_parser(subparsers) -> None:
    """Register ``ncsn reproduce`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser(
        "reproduce", help="reproduce a finding of the papers (figure, numbers and a one-line verdict)",
        description="Run one entry per finding of the material (NCSN's two pitfalls of naive score matching, "
                    "its Figures 3 and 4, NCSN vs DDPM, and the CIFAR-10 table); each writes DIR/NAME.png and "
                    "DIR/NAME.json with its numbers and a one-line verdict. --list describes the entries.")
    p.add_argument("names", nargs="*", metavar="NAME", help="entries to run, or all")
    p.add_argument("--list", action="store_true", help="list the entries and the finding each reproduces")
    p.add_argument("--out", metavar="DIR", help="where figures, JSON and work go")
    p.add_argument("--quick", action="store_true",
                   help="a budget of seconds per entry: checks the mechanics, not the finding")
    p.add_argument("--run", metavar="RUN_DIR",
                   help="annealing-strip: sample this trained digits run instead of training one")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``ncsn reproduce`` with the parsed ``args``; returns the exit status."""
    from ncsn.errors import UserError
    from ncsn.experiments import reproduce

    if args.list:
        width = max(map(len, reproduce.ENTRIES))
        for entry in reproduce.ENTRIES.values():
            print(f"{entry.name.ljust(width)}  {entry.finding}")
        return 0
    chosen = reproduce.check_names(args.names)
    if not args.out:
        raise UserError("--out DIR is required (where the figures and JSON go)")
    for name in chosen:
        result = reproduce.run_entry(name, args.out, quick=args.quick, seed=args.seed, device=args.device,
                                     progress=not args.no_progress, run_dir=args.run)
        figure = f"{args.out}/{name}.png, " if name != "cifar10-table" else ""
        print(f"{name}: {result['verdict']} ({result['seconds']:.0f} s) -> {figure}{args.out}/{name}.json")
        if name == "cifar10-table":
            print("  from scratch:\n" + "\n".join(f"    {command}" for command in result["commands"]))
            print("  from the authors' released checkpoint:\n"
                  + "\n".join(f"    {command}" for command in result["from_released_checkpoint"]))
    return 0
