"""Checkpoints: atomic writes, keep-last-K rotation, and loading that never executes code.

Files are ``checkpoint_<step>.pt`` in a run's ``checkpoints/`` folder. A checkpoint is a
plain dict of tensors and primitive values written with :func:`torch.save` to a
temporary file in the same folder, flushed to disk, then moved into place with
:func:`os.replace`, so a crash mid-write leaves every earlier checkpoint intact.
Loading uses ``torch.load(weights_only=True)``: a pickle that would construct any
other object (and so could run code) is refused.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path

import torch

from ncsn.errors import UserError

_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


def checkpoint_dir(workdir: str | Path) -> Path:
    """The folder of a run's checkpoints: ``workdir/checkpoints``."""
    return Path(workdir) / "checkpoints"


def save_atomic(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` with torch.save to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; checkpoints get the usual mode
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def list_checkpoints(workdir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint in ``workdir``, oldest first."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _NAME.match(child.name)
        if match:
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(workdir: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Save ``state`` as ``checkpoint_<step>.pt`` and delete all but the newest ``keep``."""
    path = save_atomic(state, checkpoint_dir(workdir) / f"checkpoint_{step}.pt")
    for _, old in list_checkpoints(workdir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(target: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory."""
    target = Path(target)
    if target.is_file():
        return target
    if target.is_dir():
        found = list_checkpoints(target)
        if not found:
            raise UserError(f"no checkpoint found in {checkpoint_dir(target)}")
        return found[-1][1]
    raise UserError(f"checkpoint or run directory not found: {target}")


def load_plain(path: str | Path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, else a one-line UserError.

    A pickle asking for objects other than tensors and plain values (which could execute
    code) is refused; truncated or corrupt archives are reported as unreadable.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"refusing to load {path}: it is not a plain weights file (its pickle asks for objects "
            f"other than tensors and plain values, which could execute code)"
        ) from None
    except Exception as err:  # truncated or corrupt archives: RuntimeError, EOFError, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read {what} {path}: {reason}") from None


def load_weights(path: str | Path, what: str = "checkpoint", map_location="cpu") -> dict:
    """:func:`load_plain` of a dict; anything else is a one-line UserError."""
    state = load_plain(path, what, map_location)
    if not isinstance(state, dict):
        raise UserError(f"{what} {path} does not hold a dict of weights")
    return state


def load_checkpoint(target: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint (or a run's newest) without executing code; a crafted or corrupt file is a UserError."""
    return load_weights(resolve_checkpoint(target), "checkpoint", map_location)
