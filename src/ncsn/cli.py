"""Command-line interface: a thin shell over the library.

Each sub-command lives in its own module under ``ncsn.commands`` exposing
``add_parser(subparsers)``, which registers the sub-command and sets ``func``
(called with the parsed namespace, returning an exit code). Errors a user can
fix (bad arguments, bad config, missing data, unsafe checkpoint, a file that
cannot be written, ...) are reported as one line on stderr with exit code 2 and
no traceback: bad arguments by the parser, the rest raised as
:class:`ncsn.errors.UserError` (an :class:`OSError` that escapes, say a full disk
while reading, as one line with exit code 1).
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


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the message and where to find help (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``ncsn`` argument parser, with every subcommand of :mod:`ncsn.commands` registered."""
    parser = OneLineParser(prog="ncsn", description=__doc__.splitlines()[0])
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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a bad argument (already reported in one line)
        return done.code if isinstance(done.code, int) else 2
    args.argv = argv  # for --procs, which re-runs the command under torchrun
    if under_launcher():
        faulthandler.enable()  # a rank that dies of a signal prints where it was
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"ncsn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the system refused (no space, no permission, ...) somewhere not checked above
        where = f": {err.filename}" if err.filename else ""
        print(f"ncsn {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ncsn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
