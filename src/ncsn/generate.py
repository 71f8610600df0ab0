"""Generating images from a trained score model: batched samplers over its forward process.

``sampling.method`` picks the sampler (``auto``: annealed Langevin for VE models, DDPM's
ancestral sampler for VP ones):

* ``annealed_langevin``: NCSN's Algorithm 1 with ``sampling.step_lr`` (epsilon) and
  ``sampling.n_steps_each`` (T) over the model's levels (VE: its L sigmas; VP: ``sampling.n_levels``
  timesteps from T-1 to 0, at their kernel standard deviations sqrt(1 - abar_t)), optionally
  finished by the Tweedie denoising step. Starts from the process's initial noise: uniform on
  [0, 1] for VE (as the NCSN paper), N(0, I) for VP.
* ``ddpm``: Ho et al.'s Algorithm 2 from x_T ~ N(0, I) (``sampling.variance``, ``sampling.clip_x0``).

Samples are returned as images clamped to [0, 1] (after undoing the process's scaling and the
logit transform if one was used). Batches of ``sampling.batch_size`` keep memory flat for any
number of samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ncsn.build import load_score_model, make_process, sampler_of
from ncsn.models.score_model import eps_fn_of
from ncsn.sampling import annealed_langevin, ddpm_ancestral, tweedie_denoise


def load_model_for_sampling(target: str | Path, use_ema: bool = True,
                            device: torch.device = torch.device("cpu")) -> tuple[nn.Module, dict, dict]:
    """The score model saved in a checkpoint (or a run's newest): :func:`ncsn.build.load_score_model`."""
    return load_score_model(target, use_ema=use_ema, device=device)


def _finish(x: torch.Tensor, config: dict, process) -> torch.Tensor:
    """Samples in the process's space -> images in [0, 1]."""
    x = process.to_images(x)
    if config["data"]["logit_transform"]:
        from ncsn.data.transforms import inverse_logit_transform

        x = inverse_logit_transform(x)
    return x.clamp(0.0, 1.0)


def nfe_of(config: dict) -> int:
    """Network evaluations per sample of the configured sampler."""
    s, m = config["sampling"], config["model"]
    if sampler_of(config) == "ddpm":
        return m["num_timesteps"]
    return len(make_process(config).langevin_levels(s["n_levels"])) * s["n_steps_each"] + int(s["denoise"])


def sampler_settings(config: dict) -> dict:
    """The sampler's settings as they are recorded next to every result."""
    s, m = config["sampling"], config["model"]
    method = sampler_of(config)
    out = {"sampler": method, "arch": m["arch"], "process": m["process"], "nfe": nfe_of(config)}
    if m["process"] == "ve":
        out.update(sigma_begin=m["sigma_begin"], sigma_end=m["sigma_end"], num_classes=m["num_classes"])
    else:
        out.update(num_timesteps=m["num_timesteps"], beta_schedule=m["beta_schedule"],
                   beta_start=m["beta_start"], beta_end=m["beta_end"])
    if method == "annealed_langevin":
        out.update(step_lr=s["step_lr"], n_steps_each=s["n_steps_each"], denoise=s["denoise"])
        if m["process"] == "vp":
            out["n_levels"] = len(make_process(config).langevin_levels(s["n_levels"]))
    else:
        out.update(variance=s["variance"], clip_x0=s["clip_x0"] or None)
    return out


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

    ctx = ctx or distributed.Context(device=device or next(model.parameters()).device)
    device = device or ctx.device
    d, s = config["data"], config["sampling"]
    shape = (d["channels"], d["image_size"], d["image_size"])
    process = model.process
    method = sampler_of(config)
    batch_size = batch_size or s["batch_size"]
    n_batches = max(1, -(-n // batch_size))
    mine = list(range(ctx.rank, n_batches, ctx.world_size))
    if method == "ddpm":
        units, per_unit = process.num_levels, 1
    else:
        units, per_unit = len(process.langevin_levels(s["n_levels"])), s["n_steps_each"]
    snap_every = max(1, units // 10)  # the strip: at most about 10 snapshots along the way
    out, snapshots = [], []
    bar = tqdm(total=len(mine) * units, desc=f"sample ({method})", unit="level" if method != "ddpm" else "step",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)

    for b in mine:
        size = min(batch_size, n - b * batch_size)
        gen = batch_generator(seed, b, device)
        x = process.prior_sample((size, *shape), generator=gen, device=device)
        if d["logit_transform"] and process.name == "ve":
            from ncsn.data.transforms import logit_transform

            x = logit_transform(x)
        keep = strip if b == 0 else 0

        def callback(level, step, x_now, keep=keep):
            if step == per_unit - 1:
                bar.update(1)
                if keep and (level + 1) % snap_every == 0:
                    snapshots.append(_finish(x_now[:keep].clone(), config, process).cpu())

        x = run_sampler(model, config, x, gen, callback)
        out.append(_finish(x, config, process))
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
        return samples, snapshots
    return samples


def run_sampler(model: nn.Module, config: dict, x: torch.Tensor, generator: torch.Generator | None = None,
                callback=None) -> torch.Tensor:
    """One batch of the configured sampler from the initial noise ``x``, in the process's space."""
    s = config["sampling"]
    process = model.process
    if sampler_of(config) == "ddpm":
        return ddpm_ancestral(eps_fn_of(model), x, process.betas, variance=s["variance"], clip_x0=s["clip_x0"] or None,
                              generator=generator, callback=callback)
    levels = process.langevin_levels(s["n_levels"]).to(x.device)
    ve = process.name == "ve"
    x = annealed_langevin(model, x, levels, s["step_lr"], s["n_steps_each"], denoise=s["denoise"] and ve,
                          callback=callback, generator=generator)
    if s["denoise"] and not ve:
        last = levels[-1:].expand(x.shape[0])
        x = tweedie_denoise(model, x, last, process.scale_of_std(last))
    return x


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
