"""Errors with a message meant for the user (printed as one line by the CLI)."""


class UserError(Exception):
    """Bad input the user can fix: unknown option, corrupt file, unsafe checkpoint, ..."""


class DivergenceError(UserError):
    """Training produced a non-finite or exploding loss."""
