"""Device selection: ``auto`` picks CUDA when available, else CPU."""

from __future__ import annotations

import torch

from ncsn.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a :class:`torch.device`, with a clear error if unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise UserError(f"unknown device {name!r}: {err}") from None
