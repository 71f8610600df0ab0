"""One training loop for every model and process: Adam on the denoising objective, EMA weights, checkpoints.

The model and its forward process come from :mod:`ncsn.build` (RefineNet or U-Net; NCSN's VE or
DDPM's VP process); the objective is NCSN's sigma^2-weighted multi-scale DSM (``ncsn``) or DDPM's
L_simple (``ddpm``), one level per sample drawn uniformly from the process's levels.

Everything random in step ``k`` (which images, their dequantisation and flips, each
sample's noise level and noise) is drawn from a generator seeded by ``(seed, k)`` for
the *global* batch, and each rank takes its slice. Hence:

* ``--resume`` continues exactly: the weights after an interrupted-and-resumed run
  equal those of an uninterrupted run (bit for bit on CPU);
* ``torchrun`` with W processes computes the same global batch as one process, and
  DistributedDataParallel averages the W equal-sized slices' gradients, which is the
  gradient of the global-batch mean: the same run on any world size.

Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
Distribution"; EMA of the weights from Song & Ermon (2020), "Improved Techniques for
Training Score-Based Generative Models".
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ncsn import checkpoint as ckpt
from ncsn import distributed, runlog
from ncsn.config import dump_config
from ncsn.data.transforms import dequantize, flip_where, logit_transform
from ncsn.errors import DivergenceError, UserError
from ncsn.build import (CHECKPOINT_VERSION, build_score_model, load_state, load_weights_into, make_sigmas,
                        objective_of)
from ncsn.losses import ddpm_loss, ncsn_loss
from ncsn.models.score_model import eps_fn_of

__all__ = ["train", "build_score_model", "make_sigmas", "CHECKPOINT_VERSION"]


def load_training_data(config: dict, progress: bool = True):
    """The training split named by ``data.dataset``, checked against ``data.channels``/``image_size``."""
    from ncsn.data.images import get_dataset

    d = config["data"]
    kwargs = dict(root=d["root"], train=True, image_size=d["image_size"], download=d["download"], progress=progress,
                  num_workers=config["training"]["num_workers"])
    if d["dataset"] == "folder":
        kwargs["channels"] = d["channels"]
    dataset = get_dataset(d["dataset"], **kwargs)
    if dataset.channels != d["channels"] or dataset.image_size != d["image_size"]:
        raise UserError(
            f"dataset {d['dataset']} gives {dataset.channels}x{dataset.image_size}x{dataset.image_size} images "
            f"but the config says data.channels={d['channels']}, data.image_size={d['image_size']}"
        )
    return dataset


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator for everything random in training step ``step`` (same on every rank)."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return gen


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of ``epoch``: a permutation seeded by ``(seed, epoch)``."""
    gen = torch.Generator().manual_seed((seed * 7_919 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=gen)


def global_batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of step ``step``'s global batch: epochs of ``n // batch_size`` full batches."""
    per_epoch = max(1, n // batch_size)
    epoch, offset = divmod(step, per_epoch)
    perm = epoch_permutation(n, seed, epoch)
    if batch_size > n:  # tiny datasets: wrap around
        perm = perm.repeat(math.ceil(batch_size / n))
    return perm[offset * batch_size : offset * batch_size + batch_size]


@dataclass
class StepDraws:
    """The random draws of one step for this rank's slice of the global batch."""

    indices: torch.Tensor
    levels: torch.Tensor
    noise: torch.Tensor
    dequant: torch.Tensor | None
    flip: torch.Tensor | None


def draw_step(config: dict, n_data: int, shape: tuple[int, int, int], step: int,
              ctx: distributed.Context, n_levels: int) -> StepDraws:
    """Draw step ``step``'s randomness for the global batch (levels uniform over the process's
    ``n_levels``) and keep this rank's slice."""
    t, d = config["training"], config["data"]
    batch = t["batch_size"]
    gen = step_generator(t["seed"], step, ctx.device)
    levels = torch.randint(0, n_levels, (batch,), generator=gen, device=ctx.device)
    noise = torch.randn((batch, *shape), generator=gen, device=ctx.device)
    dequant = torch.rand((batch, *shape), generator=gen, device=ctx.device) if d["dequantize"] else None
    flip = torch.rand((batch,), generator=gen, device=ctx.device) < 0.5 if d["random_flip"] else None
    per_rank = batch // ctx.world_size
    part = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    indices = global_batch_indices(n_data, batch, t["seed"], step)
    return StepDraws(
        indices=indices[part],
        levels=levels[part],
        noise=noise[part],
        dequant=None if dequant is None else dequant[part],
        flip=None if flip is None else flip[part],
    )


def prepare_batch(images: torch.Tensor, draws: StepDraws, n_levels: int, logit: bool) -> torch.Tensor:
    """Uniform dequantisation, horizontal flips and the optional logit transform.

    Dequantisation maps a pixel with value ``v / (K - 1)`` (``K`` grey levels) to
    ``(v + u) / K`` with ``u ~ U[0, 1)`` (Theis et al. 2016; the NCSN code's
    ``x * 255/256 + u/256`` for K = 256).
    """
    x = images
    if draws.dequant is not None:
        x = dequantize(x, n_levels, noise=draws.dequant)
    if draws.flip is not None:
        x = flip_where(x, draws.flip)
    if logit:
        x = logit_transform(x)
    return x


def objective_loss(net: nn.Module, model: nn.Module, objective: str, x: torch.Tensor, levels: torch.Tensor,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """One batch's training loss: NCSN's sigma^2-weighted DSM (``ncsn``) or DDPM's L_simple (``ddpm``).

    ``net`` is what is called (the score model, or its DDP / compile wrapper), ``model`` the bare
    :class:`~ncsn.models.score_model.ScoreModel` whose per-level tables (on its device) give the kernel.
    """
    if objective == "ncsn":
        scales = None if model.process.name == "ve" else model.level_scales
        return ncsn_loss(net, x, model.level_stds, levels=levels, noise=noise, scales=scales)
    return ddpm_loss(eps_fn_of(net), x, model.level_alphas_bar, t=levels, noise=noise)


def warmup_lr(lr: float, warmup: int, step: int) -> float:
    """The learning rate of update ``step`` (0-based) under a linear warm-up: lr * min(1, (step + 1) / warmup)
    (Ho et al. 2020 warm up over 5,000 steps). A function of the step alone, so resuming is exact."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def ema_rate_at(rate: float, step: int) -> float:
    """The EMA rate used after ``step`` updates: ``min(rate, (1 + step) / (10 + step))``.

    The warm-up (as in TensorFlow's ExponentialMovingAverage with ``num_updates``) keeps the
    initial random weights from dominating the average in short runs: with rate 0.999 alone,
    22% of the average after 1,500 steps would still be the initialisation.
    """
    return min(rate, (1.0 + step) / (10.0 + step))


def update_ema(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """theta_ema <- rate * theta_ema + (1 - rate) * theta (NCSNv2, Technique 5); buffers copied."""
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - rate)
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)


class _StopSignals:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, _frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _autocast(config: dict, device: torch.device):
    amp = config["training"]["amp"]
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


ARCH_NAMES = {"refinenet": "RefineNet", "ncsnv2": "NCSNv2", "ncsnv2_deeper": "NCSNv2Deeper",
              "ncsnv2_deepest": "NCSNv2Deepest", "unet": "U-Net"}
LOG_FIELDS = runlog.FIELDS


def describe_run(config: dict, dataset, model: nn.Module, process, ctx: distributed.Context,
                 start: int, end: int) -> str:
    """One line saying what is about to be trained, on what, where and how far."""
    t, m = config["training"], config["model"]
    n_params = sum(p.numel() for p in model.parameters())
    speed = [f"amp {t['amp']}"] + (["compile"] if t["compile"] else []) + (["channels-last"] if t["channels_last"] else [])
    return (f"{dataset.name}/{dataset.split}: {len(dataset)} images {dataset.channels}x{dataset.image_size}x"
            f"{dataset.image_size} | {ARCH_NAMES[m['arch']]} ngf={m['ngf']}, {n_params / 1e6:.2f} M parameters | "
            f"{process.describe()} | objective {objective_of(config)} | batch {t['batch_size']} over "
            f"{ctx.world_size} process(es) on {ctx.device} | {', '.join(speed)} | "
            f"steps {start} -> {end}{' (resumed)' if start else ''}")


def train(config: dict, workdir: str | Path, resume: bool = False, device: str = "auto",
          max_steps: int | None = None, progress: bool = True) -> dict:
    """Train the score network of ``config`` in ``workdir``; returns a summary dict.

    ``max_steps`` stops after that many steps of *this call* (a checkpoint is saved),
    which tests use to simulate an interruption. Raises :class:`DivergenceError` on a
    non-finite or exploding loss, keeping the last good checkpoint.
    """
    from ncsn.device import resolve_device

    with distributed.session(resolve_device(device)) as ctx:
        with _writer_lock(Path(workdir), ctx):
            return _train(config, Path(workdir), resume, ctx, max_steps, progress)


@contextlib.contextmanager
def _writer_lock(workdir: Path, ctx: distributed.Context):
    """Rank 0 (the only rank that writes) holds the run directory's lock; every rank learns if it failed."""
    from ncsn.runlock import RunLocked, run_lock

    with contextlib.ExitStack() as stack:
        failure = None
        if ctx.is_main:
            try:
                stack.enter_context(run_lock(workdir))
            except UserError as err:
                failure = err
        if distributed.any_flag(ctx, failure is not None):
            raise failure or RunLocked(f"rank 0 could not lock {workdir}")
        yield


def resume_state(config: dict, workdir: Path, ctx: distributed.Context) -> dict:
    """The newest checkpoint of ``workdir`` that can be resumed, checked against ``config``'s architecture.

    Unreadable checkpoints are skipped (rank 0 names them); one written for another network is an error.
    """
    from ncsn.build import RESUME_KEYS, check_architecture, read_state

    def read(path):
        state = read_state(path, map_location=ctx.device, required=RESUME_KEYS)
        check_architecture(state["config"], config, path)
        return state

    state, _ = load_state(workdir, read=read)
    return state


def _train(config: dict, workdir: Path, resume: bool, ctx: distributed.Context,
           max_steps: int | None, progress: bool) -> dict:
    from tqdm.auto import tqdm

    t = config["training"]
    if t["batch_size"] % ctx.world_size:
        raise UserError(f"training.batch_size={t['batch_size']} must be divisible by the {ctx.world_size} processes")
    existing = ckpt.list_checkpoints(workdir)
    if existing and not resume:
        raise UserError(f"{workdir} already holds checkpoints: pass --resume to continue, or choose another --workdir")
    objective = objective_of(config)

    from ncsn.device import apply_cpu_threads

    apply_cpu_threads(config, ctx.device)
    dataset = load_training_data(config, progress=progress and ctx.is_main)
    shape = (dataset.channels, dataset.image_size, dataset.image_size)

    torch.manual_seed(t["seed"])
    model = build_score_model(config).to(ctx.device)
    if t["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    o = config["optim"]
    optimizer = torch.optim.Adam(model.parameters(), lr=o["lr"], betas=(o["beta1"], 0.999), eps=o["eps"],
                                 weight_decay=o["weight_decay"], amsgrad=o["amsgrad"])
    # float16 autocast: the NCSN loss sums over pixels, so start the loss scale lower than the default 2^16
    scaler = torch.amp.GradScaler(ctx.device.type, init_scale=2.0**10, enabled=t["amp"] == "fp16")

    start = 0
    if resume and existing:
        state = resume_state(config, workdir, ctx)
        load_weights_into(model, state["model"], f"step {state['step']}'s checkpoint")
        load_weights_into(ema, state["ema"], f"step {state['step']}'s checkpoint")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"step {state['step']}'s checkpoint holds an optimiser state that does not fit: "
                            f"{err}") from None
        if "scaler" in state and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
    process = model.process
    sigmas = model.level_stds  # kernel std per level

    net = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if t["compile"]:
        net = torch.compile(net, backend=t["compile_backend"])

    log_path = workdir / "log.csv"
    if ctx.is_main:
        dump_config(config, workdir / "config.yaml")
        runlog.repair(log_path, start, LOG_FIELDS)

    def snapshot(step: int) -> Path | None:
        if not ctx.is_main:
            return None
        state = {
            "version": CHECKPOINT_VERSION,
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "config": config,
            "sigmas": sigmas.cpu(),
            "world_size": ctx.world_size,
        }
        return ckpt.save_checkpoint(workdir, step, state, keep=t["keep_checkpoints"])

    end = t["n_iters"] if max_steps is None else min(t["n_iters"], start + max_steps)
    if ctx.is_main and progress:
        print(describe_run(config, dataset, model, process, ctx, start, end), flush=True)
    bar = tqdm(total=t["n_iters"], initial=start, disable=not (progress and ctx.is_main),
               desc="train", unit="step", dynamic_ncols=True)
    if t["compile"] and progress and ctx.is_main and start < end:
        bar.write(f"torch.compile (backend {t['compile_backend']}): the first step compiles the network, which can "
                  f"take minutes (about 5 for RefineNet with inductor on a 2-core CPU); torch caches the result")
    running = None
    last_saved = start if (resume and existing) else None
    began, status = time.perf_counter(), "finished"
    logged_at, logged_step = began, start  # steps/s in the log is over the last log interval
    step = start
    with _StopSignals() as stop, runlog.Appender(log_path) if ctx.is_main else contextlib.nullcontext() as log:
        while step < end:
            draws = draw_step(config, len(dataset), shape, step, ctx, process.num_levels)
            images = dataset.get_batch(draws.indices).to(ctx.device, non_blocking=True)
            x = process.to_model(prepare_batch(images, draws, dataset.n_levels, config["data"]["logit_transform"]))
            if t["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            # the network's own randomness (dropout) from the global generator, seeded by (seed, step, rank):
            # resuming reproduces it; other world sizes draw other masks (same distribution)
            torch.manual_seed(((t["seed"] * 1_000_003 + step) * 1024 + ctx.rank) % (2**63 - 1))
            with _autocast(config, ctx.device):
                loss = objective_loss(net, model, objective, x, draws.levels, draws.noise)
            if o["warmup"]:
                for group in optimizer.param_groups:
                    group["lr"] = warmup_lr(o["lr"], o["warmup"], step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if o["grad_clip"] > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            if config["model"]["ema"]:
                update_ema(ema, model, ema_rate_at(config["model"]["ema_rate"], step))
            else:
                ema.load_state_dict(model.state_dict())
            step += 1

            value = loss.detach().float()
            if ctx.distributed:
                torch.distributed.all_reduce(value)
                value /= ctx.world_size
            value = float(value.item())
            exploding = running is not None and step - start > 20 and value > t["divergence_factor"] * running
            if not math.isfinite(value) or exploding:
                kept = f"the last good checkpoint is step {last_saved}" if last_saved is not None else "no checkpoint was saved"
                raise DivergenceError(
                    f"training diverged at step {step}: loss {value:.4g}"
                    f"{'' if running is None else f' (running mean {running:.4g})'}; {kept}; "
                    f"try a lower optim.lr or optim.grad_clip"
                )
            running = value if running is None else 0.98 * running + 0.02 * value
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if ctx.is_main and (step % t["log_freq"] == 0 or step == end):
                now = time.perf_counter()
                rate = (step - logged_step) / max(now - logged_at, 1e-9)
                log.write([step, f"{value:.6f}", optimizer.param_groups[0]["lr"], f"{rate:.3f}", f"{now - began:.1f}"])
                logged_at, logged_step = now, step
            if t["sample_freq"] and step % t["sample_freq"] == 0 and ctx.is_main:
                _sample_grid(config, ema, sigmas, workdir / "samples" / f"step_{step:07d}.png")
            interrupted = distributed.any_flag(ctx, stop.received is not None)
            if step % t["snapshot_freq"] == 0 or step == end or interrupted:
                snapshot(step)
                last_saved = step
            if interrupted:
                status = "interrupted"
                break
    bar.close()
    if last_saved != step:
        snapshot(step)
    if ctx.is_main and step > 0:
        from ncsn.plotting import save_loss_curve

        save_loss_curve(log_path, workdir / "loss.png")
    signum = stop.received
    return {
        "status": status,
        "step": step,
        "loss": running,
        "signal": signum,
        "seconds": time.perf_counter() - began,
        "main": ctx.is_main,  # only rank 0 reports
    }


@torch.no_grad()
def _sample_grid(config: dict, ema: nn.Module, sigmas: torch.Tensor, path: Path) -> None:
    """A grid of ``training.sample_n`` samples from the EMA weights (fixed seed)."""
    from ncsn.plotting import save_image_grid
    from ncsn.generate import generate

    images = generate(ema, config, n=config["training"]["sample_n"], seed=0, progress=False)
    save_image_grid(images, path)
