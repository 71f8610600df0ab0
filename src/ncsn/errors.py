"""Errors with a message meant for the user (printed as one line by the CLI)."""

import os
import sys


class UserError(Exception):
    """Bad input the user can fix: unknown option, corrupt file, unsafe checkpoint, ..."""


class DivergenceError(UserError):
    """Training produced a non-finite or exploding loss."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be used: missing, empty, truncated, not a checkpoint, too new, unsafe."""


class OutputError(UserError, OSError):
    """A file could not be written (no space, no permission, ...); the earlier file is unchanged.

    Built as ``OutputError(errno, message)``; it prints as the message alone.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def note(message: str) -> None:
    """One line on stderr about something the user should know but that does not stop the command
    (under torchrun from rank 0 only, so that it is said once)."""
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"ncsn: note: {message}", file=sys.stderr, flush=True)
