"""Checkpoints: atomic writes, keep-last-K rotation, and loading that never executes code.

Files are ``checkpoint_<step>.pt`` in a run's ``checkpoints/`` folder. A checkpoint is a
plain dict of tensors and primitive values written with :func:`torch.save` to a
temporary file in the same folder, flushed to disk, then moved into place with
:func:`os.replace`, so a crash mid-write leaves every earlier checkpoint intact.
Loading uses ``torch.load(weights_only=True)``: a pickle that would construct any
other object (and so could run code) is refused. A file that cannot be used says why
(empty, truncated, not a checkpoint, corrupt), and :func:`load_newest` falls back to the
newest checkpoint of a run that can be read, naming the ones it skipped.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from ncsn.atomic import atomic_write
from ncsn.errors import CheckpointError, note

_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


def checkpoint_dir(workdir: str | Path) -> Path:
    """The folder of a run's checkpoints: ``workdir/checkpoints``."""
    return Path(workdir) / "checkpoints"


def save_atomic(obj: dict, path: str | Path) -> Path:
    """Write ``obj`` with torch.save to ``path`` atomically (:func:`ncsn.atomic.atomic_write`)."""
    with atomic_write(path) as handle:
        torch.save(obj, handle)
    return Path(path)


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
    """Save ``state`` as ``checkpoint_<step>.pt`` and keep only the ``keep - 1`` checkpoints before it.

    Files of later steps (ones a resumed run skipped as unreadable) are left alone.
    """
    path = save_atomic(state, checkpoint_dir(workdir) / f"checkpoint_{step}.pt")
    older = [p for s, p in list_checkpoints(workdir) if s < step]
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return path


def resolve_checkpoint(target: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run directory (readable or not)."""
    target = Path(target)
    if target.is_file():
        return target
    if target.is_dir():
        found = list_checkpoints(target)
        if not found:
            raise CheckpointError(f"no checkpoint found in {checkpoint_dir(target)}")
        return found[-1][1]
    raise CheckpointError(f"checkpoint or run directory not found: {target}")


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a"  # torch.save's pre-zip format begins with a pickled long


def what_is_wrong(path: str | Path, err: Exception, what: str = "checkpoint") -> str:
    """Why ``torch.load`` could not read ``path``: empty, truncated, not a checkpoint at all, or corrupt."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as os_err:
        return f"cannot read {what} {path}: {os_err.strerror or os_err}"
    if size == 0:
        return f"{what} {path} is empty (0 bytes)"
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):
            return f"{what} {path} is truncated (it ends after {size} bytes, before the archive's directory)"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"{what} {path} is corrupt ({reason})"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return f"{what} {path} is truncated or corrupt ({type(err).__name__} reading its pickle)"
    if head.startswith(_PICKLE_MAGIC):
        return f"{what} {path} is not a {what} (a plain pickle, not a PyTorch archive)"
    return f"{what} {path} is not a {what} (not a PyTorch archive: it starts with {head!r})"


def load_plain(path: str | Path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, else a one-line
    :class:`CheckpointError`.

    A pickle asking for objects other than tensors and plain values (which could execute
    code) is refused; empty, truncated, foreign or corrupt files say which they are.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"{what} not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):  # empty, or text, or another format altogether
        raise CheckpointError(what_is_wrong(path, ValueError("not a PyTorch file"), what))
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the outcome below says all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err) and "Unsupported" not in str(err):
            raise CheckpointError(what_is_wrong(path, err, what)) from None
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain weights file (its pickle asks for objects "
            f"other than tensors and plain values, which could execute code)"
        ) from None
    except Exception as err:  # truncated or corrupt archives: RuntimeError, EOFError, ...
        raise CheckpointError(what_is_wrong(path, err, what)) from None


def load_weights(path: str | Path, what: str = "checkpoint", map_location="cpu") -> dict:
    """:func:`load_plain` of a dict; anything else is a one-line :class:`CheckpointError`."""
    state = load_plain(path, what, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} {path} does not hold a dict of weights")
    return state


def load_checkpoint(target: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint (or a run's newest) without executing code; a crafted or corrupt file is a UserError."""
    return load_weights(resolve_checkpoint(target), "checkpoint", map_location)


def load_newest(workdir: str | Path, read):
    """``(read(path), path)`` for the newest checkpoint of a run that ``read`` accepts.

    ``read`` raises :class:`CheckpointError` for a file it cannot use; such files are skipped
    (never deleted) and named in one note on stderr (rank 0's, under torchrun). When none can be used,
    the error says why for each.
    """
    found = list_checkpoints(workdir)
    if not found:
        raise CheckpointError(f"no checkpoint found in {checkpoint_dir(workdir)}")
    skipped = []
    for _, path in reversed(found):
        try:
            result = read(path)
        except CheckpointError as err:
            skipped.append(str(err))
            continue
        if skipped:
            note(f"using {path.name}, the newest readable checkpoint; skipped (not deleted): {'; '.join(skipped)}")
        return result, path
    raise CheckpointError(f"no readable checkpoint in {checkpoint_dir(workdir)}: {'; '.join(skipped)}")
