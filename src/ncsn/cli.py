"""Command-line interface: a thin shell over the library.

Each sub-command lives in its own module under ``ncsn.commands`` exposing
``add_parser(subparsers)``, which registers the sub-command and sets ``func``
(called with the parsed namespace, returning an exit code). Errors a user can
fix (bad config, missing data, unsafe checkpoint, ...) are raised as
:class:`ncsn.errors.UserError` and reported as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import sys

from ncsn.errors import UserError
from ncsn.launch import under_launcher

COMMANDS = ["toy", "train", "sample", "inpaint", "eval", "compare", "reproduce", "train_classifier",
            "import_checkpoint"]


def build_parser() -> argparse.ArgumentParser:
    """The ``ncsn`` argument parser, with every subcommand of :mod:`ncsn.commands` registered."""
    parser = argparse.ArgumentParser(prog="ncsn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ncsn.commands.{name}")
        except ModuleNotFoundError as err:  # a command not built yet
            if err.name == f"ncsn.commands.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``ncsn`` command line: parse ``argv`` (default ``sys.argv[1:]``), run the subcommand and return
    its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for --procs, which re-runs the command under torchrun
    if under_launcher():
        faulthandler.enable()  # a rank that dies of a signal prints where it was
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"ncsn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ncsn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
