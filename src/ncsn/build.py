"""Building a score model and its forward process from a config, and loading one from a checkpoint.

The one place that turns ``model.arch`` (``refinenet`` | ``ncsnv2*`` | ``unet``), ``model.process``
(``ve`` | ``vp``) and the size keys into a :class:`~ncsn.models.score_model.ScoreModel`;
training, sampling, evaluation and the benchmarks all import it.

* ``refinenet`` + ``ve``: NCSN (Song & Ermon 2019). The RefineNet outputs the score (f / sigma
  with ``model.scale_by_sigma``); its conditional normalisations hold one row per sigma.
* ``ncsnv2``, ``ncsnv2_deeper``, ``ncsnv2_deepest`` + ``ve``: NCSNv2's networks (Song & Ermon
  2020), unconditional, outputting the score f(x) / sigma.
* ``unet`` (either process): DDPM's U-Net (Ho et al. 2020), conditioned on the continuous
  equivalent noise level, predicting the noise eps.
* ``refinenet`` + ``vp``: the RefineNet with one normalisation row per timestep, predicting eps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ncsn import checkpoint as ckpt
from ncsn.errors import UserError
from ncsn.processes import Process, ve_process, vp_process

#: version 2: the network's weights sit under ``net.`` of a ScoreModel (version 1: the bare RefineNet)
CHECKPOINT_VERSION = 2


def make_process(config: dict) -> Process:
    """The forward process named by ``model.process`` with its levels."""
    m = config["model"]
    if m["process"] == "ve":
        return ve_process(m["sigma_begin"], m["sigma_end"], m["num_classes"])
    return vp_process(m["num_timesteps"], m["beta_start"], m["beta_end"], m["beta_schedule"])


def make_sigmas(config: dict) -> torch.Tensor:
    """The kernel standard deviations of the process's levels, noisiest first (VE: NCSN's L sigmas)."""
    process = make_process(config)
    return process.noisiest_first(process.stds.to(torch.float32))


def build_network(config: dict, process: Process) -> nn.Module:
    """The bare network ``net(x, sigma~)`` of ``model.arch``."""
    m, d = config["model"], config["data"]
    if m["arch"] == "refinenet":
        from ncsn.models.refinenet import RefineNet

        # RefineNet holds its levels in decreasing order
        levels = process.noisiest_first(process.noise_levels.to(torch.float32))
        return RefineNet(channels=d["channels"], ngf=m["ngf"], sigmas=levels,
                         scale_by_sigma=m["scale_by_sigma"] and process.name == "ve", numerics=m["numerics"])
    if m["arch"].startswith("ncsnv2"):
        from ncsn.models.ncsnv2 import NCSNv2

        return NCSNv2(channels=d["channels"], ngf=m["ngf"], arch=m["arch"], numerics=m["numerics"])
    from ncsn.models.unet import UNet

    return UNet(channels=d["channels"], ch=m["ngf"], ch_mult=tuple(m["ch_mult"]),
                num_res_blocks=m["num_res_blocks"], attn_resolutions=tuple(m["attn_resolutions"]),
                dropout=m["dropout"], image_size=d["image_size"])


def output_of(config: dict) -> str:
    """What the network outputs: the score (NCSN's and NCSNv2's networks on VE) or the noise eps (otherwise)."""
    m = config["model"]
    return "score" if (m["arch"] != "unet" and m["process"] == "ve") else "eps"


def build_score_model(config: dict) -> nn.Module:
    """The :class:`ScoreModel` described by ``config`` (randomly initialised)."""
    from ncsn.models.score_model import ScoreModel

    process = make_process(config)
    return ScoreModel(build_network(config, process), process, output_of(config))


def objective_of(config: dict) -> str:
    """``training.objective`` with ``auto`` resolved: ``ncsn`` for VE, ``ddpm`` for VP."""
    objective = config["training"]["objective"]
    if objective == "auto":
        return "ncsn" if config["model"]["process"] == "ve" else "ddpm"
    if objective == "ddpm" and config["model"]["process"] != "vp":
        raise UserError("training.objective=ddpm (L_simple) needs model.process=vp; with ve use ncsn, "
                        "which is the same sigma^2-weighted denoising objective")
    return objective


def sampler_of(config: dict) -> str:
    """``sampling.method`` with ``auto`` resolved: annealed Langevin for VE, DDPM's ancestral sampler for VP."""
    method = config["sampling"]["method"]
    if method == "auto":
        return "annealed_langevin" if config["model"]["process"] == "ve" else "ddpm"
    if method == "ddpm" and config["model"]["process"] != "vp":
        raise UserError("sampling.method=ddpm (ancestral sampling) needs a model trained with model.process=vp")
    return method


def complete_config(config: dict) -> dict:
    """A checkpoint's config with keys added since it was written set to their defaults."""
    from ncsn.config import DEFAULTS, merge

    return merge(DEFAULTS, config, origin="checkpoint config")


def migrate(state: dict) -> dict:
    """Bring a loaded checkpoint to :data:`CHECKPOINT_VERSION` (version 1 held the RefineNet's bare keys)."""
    version = int(state.get("version", 1))
    if version > CHECKPOINT_VERSION:
        raise UserError(f"checkpoint format version {version} is newer than this ncsn reads ({CHECKPOINT_VERSION}); "
                        f"upgrade ncsn")
    if version < 2:
        for key in ("model", "ema"):
            if key in state:
                state[key] = {f"net.{name}": value for name, value in state[key].items()}
    state["version"] = CHECKPOINT_VERSION
    state["config"] = complete_config(state["config"])
    return state


def load_state(target: str | Path, map_location="cpu") -> tuple[dict, Path]:
    """A checkpoint (or a run's newest), read safely and migrated; with its path."""
    path = ckpt.resolve_checkpoint(target)
    state = ckpt.load_checkpoint(path, map_location=map_location)
    if "config" not in state or "model" not in state:
        raise UserError(f"{path} is not an ncsn checkpoint (no config or model weights)")
    return migrate(state), path


def load_score_model(target: str | Path, use_ema: bool = True,
                     device: torch.device = torch.device("cpu")) -> tuple[nn.Module, dict, dict]:
    """The score model saved in a checkpoint (or a run's newest), in eval mode.

    Returns ``(model, config, info)`` with ``info`` the checkpoint path, step and whether the
    EMA weights were used.
    """
    from ncsn.device import apply_cpu_threads

    state, path = load_state(target)
    config = state["config"]
    apply_cpu_threads(config, torch.device(device))
    model = build_score_model(config)
    weights = state["ema"] if use_ema and "ema" in state else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path} does not fit the network its config describes: {first}") from None
    model.to(device).eval().requires_grad_(False)
    info = {"checkpoint": str(path), "step": int(state["step"]), "ema": bool(use_ema and "ema" in state)}
    return model, config, info
