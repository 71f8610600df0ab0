"""Generating images from a trained score network: batched annealed Langevin dynamics.

Samples start from uniform noise on [0, 1] (as in the NCSN paper), run NCSN's
Algorithm 1 with the run's noise levels and ``sampling.step_lr`` (epsilon) and
``sampling.n_steps_each`` (T), optionally finish with the Tweedie denoising step, and
are returned clamped to [0, 1] (after undoing the logit transform if one was used).
Batches of ``sampling.batch_size`` keep memory flat for any number of samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ncsn import checkpoint as ckpt
from ncsn.sampling import annealed_langevin


def load_model_for_sampling(target: str | Path, use_ema: bool = True,
                            device: torch.device = torch.device("cpu")) -> tuple[nn.Module, dict, dict]:
    """The score network saved in a checkpoint (or a run's newest), in eval mode.

    Returns ``(model, config, info)`` with ``info`` the checkpoint path, step and
    whether the EMA weights were used.
    """
    from ncsn.device import apply_cpu_threads
    from ncsn.train import build_score_model

    path = ckpt.resolve_checkpoint(target)
    state = ckpt.load_checkpoint(path, map_location="cpu")
    config = state["config"]
    apply_cpu_threads(config, torch.device(device))
    model = build_score_model(config)
    weights = state["ema"] if use_ema and "ema" in state else state["model"]
    model.load_state_dict(weights)
    model.to(device).eval().requires_grad_(False)
    info = {"checkpoint": str(path), "step": int(state["step"]), "ema": bool(use_ema and "ema" in state)}
    return model, config, info


def _finish(x: torch.Tensor, config: dict) -> torch.Tensor:
    if config["data"]["logit_transform"]:
        from ncsn.data.transforms import inverse_logit_transform

        x = inverse_logit_transform(x)
    return x.clamp(0.0, 1.0)


def sampler_settings(config: dict) -> dict:
    """The sampler's settings as they are recorded next to every result."""
    s, m = config["sampling"], config["model"]
    return {
        "sampler": "annealed_langevin",
        "sigma_begin": m["sigma_begin"],
        "sigma_end": m["sigma_end"],
        "num_classes": m["num_classes"],
        "step_lr": s["step_lr"],
        "n_steps_each": s["n_steps_each"],
        "denoise": s["denoise"],
    }


def batch_generator(seed: int, batch: int, device: torch.device) -> torch.Generator:
    """The generator of sampler batch ``batch``: samples do not depend on how batches are spread over ranks."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch) % (2**63 - 1))


@torch.no_grad()
def generate(model: nn.Module, config: dict, n: int, seed: int = 0, progress: bool = True,
             strip: int = 0, batch_size: int | None = None, device: torch.device | None = None,
             ctx=None):
    """Draw ``n`` samples ``(n, C, H, W)`` in [0, 1] on the CPU.

    Batch ``b`` is seeded by ``(seed, b)``; under torchrun (``ctx`` from
    :func:`ncsn.distributed.setup`) rank ``r`` draws the batches ``b = r (mod W)`` and
    rank 0 gathers them in order, so the result is the same for any number of processes
    (other ranks return ``None``). With ``strip > 0`` also returns the first ``strip``
    samples at the end of every noise level (NCSN Figure 4) as a list of
    ``(strip, C, H, W)`` tensors.
    """
    from tqdm.auto import tqdm

    from ncsn import distributed
    from ncsn.train import make_sigmas

    ctx = ctx or distributed.Context(device=device or next(model.parameters()).device)
    device = device or ctx.device
    d, s = config["data"], config["sampling"]
    shape = (d["channels"], d["image_size"], d["image_size"])
    sigmas = make_sigmas(config).to(device)
    batch_size = batch_size or s["batch_size"]
    n_batches = max(1, -(-n // batch_size))
    mine = list(range(ctx.rank, n_batches, ctx.world_size))
    out, levels = [], []
    bar = tqdm(total=len(mine) * len(sigmas), desc="sample", unit="level",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)

    for b in mine:
        size = min(batch_size, n - b * batch_size)
        gen = batch_generator(seed, b, device)
        x = torch.rand((size, *shape), generator=gen, device=device)
        if d["logit_transform"]:
            from ncsn.data.transforms import logit_transform

            x = logit_transform(x)
        keep = strip if b == 0 else 0

        def callback(level, step, x_now, keep=keep):
            if step == s["n_steps_each"] - 1:
                bar.update(1)
                if keep:
                    levels.append(_finish(x_now[:keep].clone(), config).cpu())

        x = annealed_langevin(model, x, sigmas, s["step_lr"], s["n_steps_each"], denoise=s["denoise"],
                              callback=callback, generator=gen)
        out.append(_finish(x, config))
    bar.close()
    mine_tensor = torch.cat(out) if out else torch.zeros((0, *shape), device=device)
    if ctx.distributed:
        # rank r holds batches r, r+W, ...: gather, then restore batch order
        gathered = distributed.gather_to_main(ctx, mine_tensor)
        if not ctx.is_main:
            return None
        samples = _reorder(gathered, n, batch_size, ctx.world_size)
    else:
        samples = mine_tensor.cpu()
    if strip:
        return samples, levels
    return samples


def _reorder(gathered: torch.Tensor, n: int, batch_size: int, world_size: int) -> torch.Tensor:
    """Undo the round-robin layout of :func:`generate`'s batches over ranks."""
    n_batches = max(1, -(-n // batch_size))
    sizes = [min(batch_size, n - b * batch_size) for b in range(n_batches)]
    chunks, offset = {}, 0
    for rank in range(world_size):
        for b in range(rank, n_batches, world_size):
            chunks[b] = gathered[offset : offset + sizes[b]]
            offset += sizes[b]
    return torch.cat([chunks[b] for b in range(n_batches)])
