"""``--procs N|auto``: run a command as N processes under PyTorch's own launcher (torchrun).

``ncsn train ... --procs 2`` re-runs itself as ``python -m torch.distributed.run --standalone
--nproc_per_node 2 -m ncsn train ...``: data-parallel training (DDP) on the gloo backend for the
CPU or NCCL for GPUs, exactly as if started with ``torchrun``. On a 2-core CPU this is the fastest
way to use both cores for the digits networks (two processes of one thread each measured 1.25x the
steps/s of one process with two threads). ``auto`` picks the number of GPUs with CUDA, otherwise
the CPU cores this process may run on (at most :data:`MAX_AUTO_CPU_PROCS`), reduced to a divisor
of the global batch so every rank gets the same share.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ncsn.errors import UserError

MAX_AUTO_CPU_PROCS = 8


def add_procs_argument(parser) -> None:
    """Add ``--procs N|auto`` (run as N processes under torchrun) to a subcommand's ``parser``."""
    from ncsn.argtypes import procs

    parser.add_argument("--procs", default="1", type=procs, metavar="N|auto",
                        help="run as N processes under torchrun (data-parallel; auto: the GPUs, or the CPU cores, "
                             "default 1)")


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_procs(value: str, device: str = "auto", batch_size: int | None = None) -> int:
    """The number of processes ``--procs`` asks for (see the module docstring)."""
    import argparse

    from ncsn.argtypes import procs as procs_argument

    try:
        value = procs_argument(value)  # the command line's own check, for callers that bypass it
    except argparse.ArgumentTypeError as err:
        raise UserError(f"--procs {err}") from None
    if value != "auto":
        return int(value)
    import torch

    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    procs = torch.cuda.device_count() if wants_cuda else min(available_cpus(), MAX_AUTO_CPU_PROCS)
    procs = max(1, procs)
    if batch_size:
        while batch_size % procs:
            procs -= 1
    return procs


def under_launcher() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def without_procs(argv: list[str]) -> list[str]:
    """``argv`` with its ``--procs N`` / ``--procs=N`` removed."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--procs":
            skip = True
        elif not arg.startswith("--procs="):
            out.append(arg)
    return out


def relaunch(procs: int, argv: list[str]) -> int | None:
    """Run ``ncsn ARGV`` (without ``--procs``) as ``procs`` processes and return their exit code.

    Returns None (run in this process) when ``procs`` is 1 or this process is already one of
    a launcher's ranks.
    """
    if procs <= 1 or under_launcher():
        return None
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "--", "ncsn", *without_procs(argv)]  # "--": torchrun must not read an abbreviated --n
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"ncsn: running as {procs} processes (torchrun)", file=sys.stderr, flush=True)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130


def relaunch_if_asked(args, batch_size: int | None = None) -> int | None:
    """The exit code of the command re-run under torchrun as ``args.procs`` asks, or None (run it here)."""
    return relaunch(resolve_procs(args.procs, args.device, batch_size), getattr(args, "argv", []))
