"""Argument types for the command line: numbers checked when the command line is read.

Each is an ``argparse`` ``type=``: a bad value ends in argparse's one-line error naming the
option, the value and what it must be (``argument --n: must be an integer >= 1, got '0'``).
"""

from __future__ import annotations

import argparse
import math


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a count of samples, steps, images, ...)."""
    return _integer(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (a seed)."""
    return _integer(text, 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def procs(text: str) -> str:
    """``--procs``: a positive integer or ``auto`` (kept as text; :func:`ncsn.launch.resolve_procs` reads it)."""
    if text != "auto":
        try:
            positive_int(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be a positive integer or auto, got {text!r}") from None
    return text
