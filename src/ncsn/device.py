"""Device selection: ``auto`` picks CUDA when available, else CPU."""

from __future__ import annotations

import contextlib

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


def synchronize(device) -> None:
    """Wait for the queued kernels of ``device`` to finish (CUDA runs asynchronously; the CPU needs nothing).

    Timings must call this before reading the clock, or they measure only the kernel launches.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def single_cpu_thread(device):
    """Run the block with one intra-op CPU thread when ``device`` is the CPU (restored afterwards).

    Small models (2-D MLPs, 8x8 classifiers) run millisecond-sized operations; splitting them
    over threads costs more than it saves, and on a loaded 2-core machine it made them 10-40x
    slower.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def apply_cpu_threads(config: dict, device: torch.device) -> None:
    """Use ``training.cpu_threads`` intra-op threads when running on the CPU (0 leaves torch's default)."""
    threads = config["training"].get("cpu_threads", 0)
    if device.type == "cpu" and threads > 0:
        torch.set_num_threads(threads)
