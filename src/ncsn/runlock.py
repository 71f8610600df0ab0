"""One writer per run directory: ``ncsn train`` holds ``WORKDIR/.lock`` while it writes there.

The lock is an advisory ``flock`` on the file ``.lock``, which records the holder's pid and host.
The kernel releases a ``flock`` when its holder dies (``kill -9`` included), so a lock left by a
killed process never blocks: the next writer takes it over and says whose it was. A second live
writer is refused with a one-line error naming the holder's pid. Under ``torchrun`` only rank 0
writes the run directory, so only rank 0 takes the lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ncsn.errors import UserError, note

try:
    import fcntl
except ImportError:  # not on a POSIX system: no lock
    fcntl = None

LOCK_NAME = ".lock"


class RunLocked(UserError):
    """Another live process is writing the run directory."""


def _holder(text: str) -> str:
    """``pid N on HOST`` from a lock file's text (or a note that it recorded none)."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if "pid" not in fields:
        return "an unknown process"
    return f"pid {fields['pid']}" + (f" on {fields['host']}" if fields.get("host") else "")


def _read(handle) -> str:
    handle.seek(0)
    return handle.read()


@contextlib.contextmanager
def run_lock(workdir: str | Path) -> Iterator[Path]:
    """Hold ``workdir``'s lock (creating the folder) for the ``with`` block; yields the lock file's path.

    Raises :class:`RunLocked` when another process holds it. On the way out the lock file is
    emptied (it stays); a folder this call created is removed again if nothing else was written in it.
    """
    workdir = Path(workdir)
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / LOCK_NAME
        handle = open(path, "a+", encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot create the run directory's lock {workdir / LOCK_NAME}: "
                        f"{err.strerror or err}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunLocked(f"{workdir} is being written by another ncsn process ({_holder(_read(handle))}, "
                                f"lock {path}); wait for it to finish or stop it") from None
        previous = _read(handle).strip()
        if previous:  # the holder died without releasing: its lock went with it
            note(f"{workdir}: taking over the lock left by {_holder(previous)}, which is no longer running")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid={os.getpid()} host={socket.gethostname()}\n")
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()  # an empty lock file: released in order (the file stays, so no two inodes race)
            handle.flush()
    finally:
        handle.close()  # releases the flock
    if created and [p.name for p in workdir.iterdir()] == [LOCK_NAME]:
        with contextlib.suppress(OSError):  # nothing was written: leave no trace
            path.unlink()
            workdir.rmdir()
