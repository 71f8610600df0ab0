"""Writing files atomically: every file ncsn writes appears whole or not at all.

:func:`atomic_write` opens a temporary file in the destination's folder; what the caller
writes there is flushed and synced to disk, then :func:`os.replace` moves it over the
destination in one step. A crash, a full disk or any error in between leaves the earlier
file (if any) untouched and no temporary file behind. A failure to write becomes a
one-line :class:`~ncsn.errors.OutputError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ncsn.errors import OutputError


def cannot_write(path: str | Path, err: OSError) -> OutputError:
    """The one-line error for a file that could not be written (the earlier one is kept)."""
    reason = err.strerror or str(err) or type(err).__name__
    return OutputError(err.errno, f"cannot write {path}: {reason} (any earlier {Path(path).name} is unchanged)")


def ensure_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) if needed; failing that, a one-line :class:`OutputError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        in_the_way = "a file of that name is in the way"
        raise OutputError(errno.ENOTDIR, f"cannot create the folder {path}: {in_the_way}") from None
    except OSError as err:
        raise OutputError(err.errno, f"cannot create the folder {path}: {err.strerror or err}") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every system can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a handle whose contents replace ``path`` atomically when the block ends without error.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (text, UTF-8, no newline translation). The folder is
    created if needed; the file gets the usual permissions (0666 less the umask).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes with mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    ensure_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise cannot_write(path, err) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        text = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, OutputError):
            raise
        raise cannot_write(path, err) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _sync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_npz(path: str | Path, compressed: bool = False, **arrays) -> Path:
    """``np.savez`` (``np.savez_compressed`` with ``compressed``) of ``arrays`` to ``path`` atomically."""
    import numpy as np

    with atomic_write(path) as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    return Path(path)
