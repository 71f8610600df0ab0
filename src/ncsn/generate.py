"""Generating images from a trained score model: batched samplers over its forward process.

``sampling.method`` picks the sampler (``auto``: annealed Langevin for VE models, DDPM's
ancestral sampler for VP ones); ``sampling.sigmas`` and ``sampling.n_levels`` pick the levels it
visits (:func:`sampler_levels`: the model's trained levels or a subset of them, or ``geometric`` /
``karras`` levels between the trained extremes, which need a network conditioned on a continuous
noise level):

* ``annealed_langevin``: NCSN's Algorithm 1 (``step_lr``, ``n_steps_each``, ``denoise``), from
  uniform noise on [0, 1] for VE (as the NCSN paper) and N(0, I) for VP.
* ``consistent_annealing``: Jolicoeur-Martineau et al. (2021), one step per level (``eta``).
* ``predictor_corrector``: Song et al. (2021) (``predictor``, ``corrector``, ``snr``, ``n_corrector``),
  in the VP form for VP models.
* ``pf_ode``: the probability-flow ODE (``solver``: heun | euler; Karras et al. 2022).
* ``ddpm``: Ho et al.'s Algorithm 2 from x_T ~ N(0, I) (``variance``, ``clip_x0``), VP only.

All but annealed Langevin and DDPM start from N(0, s_1^2 I), s_1 the first level's kernel
standard deviation. Consistent annealing and the ODE run in the VE form y = x / a of the
process (:func:`ncsn.processes.ve_view`), so they serve VP models too. Samples are returned as
images clamped to [0, 1] (after undoing the process's scaling and the logit transform if one
was used). Batches of ``sampling.batch_size`` keep memory flat for any number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ncsn.build import load_score_model, make_process, sampler_of
from ncsn.errors import UserError
from ncsn.models.score_model import eps_fn_of
from ncsn.processes import Process, ve_view
from ncsn.sampling import (annealed_langevin, consistent_annealing, ddpm_ancestral, pf_ode, predictor_corrector,
                           tweedie_denoise)

#: samplers that start from the process's own initial noise (the others from N(0, s_1^2 I))
_OWN_PRIOR = ("annealed_langevin", "ddpm")


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


def sampler_levels(config: dict, process: Process) -> torch.Tensor:
    """The equivalent noise levels sigma~ the sampler visits, decreasing (float64).

    ``sampling.sigmas=trained``: the model's trained levels, or ``sampling.n_levels`` of them evenly
    spaced in index (for VP: the timesteps T-1 ... 0, rounded); ``geometric`` / ``karras``:
    ``n_levels`` levels between the trained extremes (:func:`ncsn.sigmas.geometric`,
    :func:`ncsn.sigmas.karras` with ``sampling.rho``).
    """
    from ncsn.sigmas import geometric, karras

    s = config["sampling"]
    table = process.noisiest_first(process.noise_levels)
    if s["sigmas"] == "trained":
        n = s["n_levels"]
        if n and n < table.shape[0]:
            table = table[torch.linspace(0, table.shape[0] - 1, n, dtype=torch.float64).round().long()]
        return table
    hi, lo = float(table[0]), float(table[-1])
    if s["sigmas"] == "geometric":
        return geometric(hi, lo, s["n_levels"], dtype=torch.float64)
    return karras(lo, hi, s["n_levels"], rho=s["rho"], dtype=torch.float64)


def is_continuous(model: nn.Module) -> bool:
    """Whether the model's network takes any noise level (the U-Net) or only its trained ones (the RefineNet)."""
    net = getattr(model, "net", model)
    return bool(getattr(net, "continuous_noise_level", True))


@dataclass(frozen=True)
class SamplerPlan:
    """What :func:`run_sampler` will do: the method, its levels and its cost (see :func:`plan_sampler`)."""

    method: str
    noise_levels: torch.Tensor  # sigma~, decreasing (float64)
    stds: torch.Tensor          # the kernel standard deviations s of those levels (float32)
    scales: torch.Tensor        # the kernel scales a (float32; 1 for VE)
    units: int                  # progress units (levels the callback reports on)
    steps_per_unit: int         # callback calls per unit
    nfe: int                    # network evaluations per sample


def plan_sampler(config: dict, process: Process | None = None, continuous: bool = True) -> SamplerPlan:
    """The configured sampler's levels and cost; a one-line error if a discrete-level model cannot follow them."""
    s = config["sampling"]
    process = process or make_process(config)
    method = sampler_of(config)
    levels = sampler_levels(config, process)
    if method == "ddpm":  # always all T timesteps: sampling.sigmas and n_levels do not apply
        T = process.num_levels
        levels = process.noisiest_first(process.noise_levels)
        units, per_unit, nfe = T, 1, T
    else:
        L = levels.shape[0]
        if method == "annealed_langevin":
            units, per_unit, nfe = L, s["n_steps_each"], L * s["n_steps_each"] + int(s["denoise"])
        elif method == "consistent_annealing":
            if L < 2:
                raise UserError("consistent annealing needs at least 2 levels")
            units, per_unit, nfe = L - 1, 1, L - 1 + int(s["denoise"])
        elif method == "predictor_corrector":
            corrector = s["n_corrector"] if s["corrector"] != "none" else 0
            predictor = int(s["predictor"] != "none")
            units, per_unit = L, corrector + predictor
            nfe = L * per_unit + int(not predictor and s["denoise"])
        else:  # pf_ode
            units, per_unit = L, 1
            nfe = 2 * L - 1 if s["solver"] == "heun" else L
    if not continuous and s["sigmas"] != "trained":
        raise UserError(f"sampling.sigmas={s['sigmas']} asks for noise levels this network was not trained at: "
                        f"its levels are fixed (model.arch={config['model']['arch']}); use sampling.sigmas=trained "
                        f"(optionally with sampling.n_levels) or a model.arch=unet model")
    stds = process.std_of_noise_level(levels)
    scales = process.scale_of_noise_level(levels)
    return SamplerPlan(method, levels, stds.to(torch.float32), scales.to(torch.float32), units, per_unit, nfe)


def nfe_of(config: dict) -> int:
    """Network evaluations per sample of the configured sampler."""
    return plan_sampler(config).nfe


def sampler_settings(config: dict) -> dict:
    """The sampler's settings as they are recorded next to every result."""
    s, m = config["sampling"], config["model"]
    plan = plan_sampler(config)
    out = {"sampler": plan.method, "arch": m["arch"], "process": m["process"], "nfe": plan.nfe}
    if m["process"] == "ve":
        out.update(sigma_begin=m["sigma_begin"], sigma_end=m["sigma_end"], num_classes=m["num_classes"])
    else:
        out.update(num_timesteps=m["num_timesteps"], beta_schedule=m["beta_schedule"],
                   beta_start=m["beta_start"], beta_end=m["beta_end"])
    if plan.method == "ddpm":
        out.update(variance=s["variance"], clip_x0=s["clip_x0"] or None)
        return out
    out.update(sigmas=s["sigmas"], n_levels=int(plan.noise_levels.shape[0]))
    if s["sigmas"] == "karras":
        out["rho"] = s["rho"]
    if plan.method == "annealed_langevin":
        out.update(step_lr=s["step_lr"], n_steps_each=s["n_steps_each"], denoise=s["denoise"])
    elif plan.method == "consistent_annealing":
        out.update(eta=s["eta"] or "ancestral", denoise=s["denoise"])
    elif plan.method == "predictor_corrector":
        out.update(predictor=s["predictor"], corrector=s["corrector"], snr=s["snr"], n_corrector=s["n_corrector"],
                   denoise=s["denoise"])
    else:
        out.update(solver=s["solver"])
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
    plan = plan_sampler(config, process, is_continuous(model))
    batch_size = batch_size or s["batch_size"]
    n_batches = max(1, -(-n // batch_size))
    mine = list(range(ctx.rank, n_batches, ctx.world_size))
    units, per_unit = plan.units, plan.steps_per_unit
    snap_every = max(1, units // 10)  # the strip: at most about 10 snapshots along the way
    out, snapshots = [], []
    bar = tqdm(total=len(mine) * units, desc=f"sample ({plan.method}, {plan.nfe} NFE)",
               unit="level" if plan.method != "ddpm" else "step", disable=not (progress and ctx.is_main),
               dynamic_ncols=True)

    for b in mine:
        size = min(batch_size, n - b * batch_size)
        gen = batch_generator(seed, b, device)
        x = initial_noise(plan, process, (size, *shape), gen, device)
        if d["logit_transform"] and process.name == "ve" and plan.method in _OWN_PRIOR:
            from ncsn.data.transforms import logit_transform

            x = logit_transform(x)
        keep = strip if b == 0 else 0

        def callback(level, step, x_now, keep=keep):
            if step == per_unit - 1:
                bar.update(1)
                if keep and (level + 1) % snap_every == 0:
                    snapshots.append(_finish(x_now[:keep].clone(), config, process).cpu())

        x = run_sampler(model, config, x, gen, callback, plan=plan)
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


def initial_noise(plan: SamplerPlan, process: Process, shape, generator, device) -> torch.Tensor:
    """The sampler's starting point: the process's own (NCSN's uniform, DDPM's N(0, I)) or N(0, s_1^2 I)."""
    if plan.method in _OWN_PRIOR:
        return process.prior_sample(shape, generator=generator, device=device)
    return float(plan.stds[0]) * torch.randn(shape, generator=generator, device=device)


def run_sampler(model: nn.Module, config: dict, x: torch.Tensor, generator: torch.Generator | None = None,
                callback=None, plan: SamplerPlan | None = None) -> torch.Tensor:
    """One batch of the configured sampler from the initial noise ``x``, in the process's space."""
    s = config["sampling"]
    process = model.process
    plan = plan or plan_sampler(config, process, is_continuous(model))
    stds = plan.stds.to(x.device)
    if plan.method == "ddpm":
        return ddpm_ancestral(eps_fn_of(model), x, process.betas, variance=s["variance"], clip_x0=s["clip_x0"] or None,
                              generator=generator, callback=callback)
    if plan.method == "annealed_langevin":
        ve = process.name == "ve"
        x = annealed_langevin(model, x, stds, s["step_lr"], s["n_steps_each"], denoise=s["denoise"] and ve,
                              callback=callback, generator=generator)
        if s["denoise"] and not ve:
            last = stds[-1:].expand(x.shape[0])
            x = tweedie_denoise(model, x, last, process.scale_of_std(last))
        return x
    if plan.method == "predictor_corrector":
        return predictor_corrector(model, x, stds, snr=s["snr"], n_corrector=s["n_corrector"],
                                   predictor=s["predictor"], corrector=s["corrector"], denoise=s["denoise"],
                                   scales=plan.scales, generator=generator, callback=callback)
    # the VE form y = x / a over sigma~ (identity for VE); y at sigma~ -> 0 is the sample
    levels = plan.noise_levels.to(device=x.device, dtype=x.dtype)
    y = x / float(plan.scales[0])
    score = ve_view(model, process)
    if plan.method == "consistent_annealing":
        return consistent_annealing(score, y, levels, eta=s["eta"] or None, denoise=s["denoise"],
                                    callback=callback, generator=generator)
    return pf_ode(score, y, levels, solver=s["solver"], callback=callback)


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
