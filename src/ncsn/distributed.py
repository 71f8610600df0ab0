"""Multi-process helpers over :mod:`torch.distributed` (launched by ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` then
initialises the default process group with ``nccl`` on CUDA and ``gloo`` on CPU.
Without those variables everything runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def setup(device: torch.device) -> Context:
    """Join the process group described by torchrun's environment (if any).

    On CUDA each process takes the GPU ``LOCAL_RANK``; the backend is ``nccl`` on
    CUDA and ``gloo`` on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(ctx: Context, *, completed: bool = True) -> None:
    """Leave the process group. After a normal run every rank first waits at a barrier.

    Without the barrier a rank that finished early (one that does not write the checkpoint)
    tore gloo down while rank 0 still held its connections, and once in a while died with
    SIGABRT at exit. After a failure there is no barrier: the other ranks may never reach it,
    and torchrun stops them when this rank exits non-zero.
    """
    if not (ctx.distributed and dist.is_initialized()):
        return
    if completed:
        dist.barrier()
    gc.collect()  # DistributedDataParallel's reference cycles keep the group's gloo threads alive otherwise
    dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[Context]:
    """:func:`setup` on entry, :func:`teardown` on exit (with the barrier only after success)."""
    ctx = setup(device)
    try:
        yield ctx
    except BaseException:
        teardown(ctx, completed=False)
        raise
    teardown(ctx)


def any_flag(ctx: Context, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Split ``n`` items over ranks as evenly as possible (earlier ranks take the remainder)."""
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def gather_to_main(ctx: Context, tensor: torch.Tensor) -> torch.Tensor | None:
    """Concatenate each rank's ``(n_r, ...)`` tensor on rank 0, in rank order (None elsewhere)."""
    if not ctx.distributed:
        return tensor
    sizes = shard_sizes_tensor = torch.tensor([tensor.shape[0]], device=ctx.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(ctx.world_size)]
    dist.all_gather(all_sizes, shard_sizes_tensor)
    max_n = int(max(s.item() for s in all_sizes))
    padded = torch.zeros((max_n, *tensor.shape[1:]), dtype=tensor.dtype, device=ctx.device)
    padded[: tensor.shape[0]] = tensor.to(ctx.device)
    pieces = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(pieces, padded)
    if not ctx.is_main:
        return None
    return torch.cat([p[: int(s.item())] for p, s in zip(pieces, all_sizes)]).cpu()
