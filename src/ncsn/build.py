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
from ncsn.errors import CheckpointError, UserError
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
    """The :class:`ScoreModel` described by ``config`` (randomly initialised).

    Settings the network refuses (the config's ranges admit them one by one, not together) are a
    one-line :class:`UserError`.
    """
    from ncsn.models.score_model import ScoreModel

    process = make_process(config)
    try:
        network = build_network(config, process)
    except ValueError as err:
        raise UserError(f"the config's model.* settings describe no valid {config['model']['arch']}: {err}") from None
    return ScoreModel(network, process, output_of(config))


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


def migrate(state: dict, path: str | Path = "checkpoint") -> dict:
    """Bring a loaded checkpoint to :data:`CHECKPOINT_VERSION` (version 1 held the RefineNet's bare keys)."""
    try:
        version = int(state.get("version", 1))
    except (TypeError, ValueError):
        raise CheckpointError(f"{path} has no readable format version ({state.get('version')!r})") from None
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this ncsn reads "
                              f"({CHECKPOINT_VERSION}); upgrade ncsn")
    if version < 2:
        for key in ("model", "ema"):
            if key in state:
                state[key] = {f"net.{name}": value for name, value in state[key].items()}
    state["version"] = CHECKPOINT_VERSION
    try:
        state["config"] = complete_config(state["config"])
    except UserError as err:
        raise CheckpointError(f"{path} holds a config this ncsn cannot use: {err}") from None
    return state


#: what a checkpoint must hold: to be sampled from, and (with the EMA and optimiser) to be resumed
SAMPLING_KEYS = ("config", "model", "step")
RESUME_KEYS = SAMPLING_KEYS + ("ema", "optimizer")


def read_state(path: str | Path, map_location="cpu", required: tuple[str, ...] = SAMPLING_KEYS) -> dict:
    """One checkpoint file, read safely, checked to hold ``required`` and migrated."""
    state = ckpt.load_weights(path, "checkpoint", map_location)
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not an ncsn checkpoint (it lacks {', '.join(missing)})")
    return migrate(state, path)


def load_state(target: str | Path, map_location="cpu", read=None) -> tuple[dict, Path]:
    """A checkpoint file, or a run's newest *readable* one (the others skipped with a note), with its path.

    ``read(path)`` (default :func:`read_state`) loads one file and raises :class:`CheckpointError` for
    one that cannot be used.
    """
    read = read or (lambda path: read_state(path, map_location))
    target = Path(target)
    if target.is_dir():
        return ckpt.load_newest(target, read)
    if target.is_file():
        return read(target), target
    raise CheckpointError(f"checkpoint or run directory not found: {target}")


#: the keys that decide the network's parameters: a checkpoint resumes only under the same values
ARCHITECTURE_KEYS = ("data.channels", "data.image_size", "model.arch", "model.process", "model.ngf",
                     "model.num_classes", "model.num_timesteps", "model.ch_mult", "model.num_res_blocks",
                     "model.attn_resolutions", "model.scale_by_sigma")


def check_architecture(saved: dict, config: dict, path: str | Path) -> None:
    """A one-line error when ``config`` describes another network than the checkpoint's ``saved`` config."""
    def value(cfg, name):
        section, key = name.split(".")
        return cfg.get(section, {}).get(key)

    differ = [f"{name}={value(saved, name)!r} (config: {value(config, name)!r})" for name in ARCHITECTURE_KEYS
              if value(saved, name) != value(config, name)]
    if differ:
        raise UserError(f"{path} holds another architecture than the config: {', '.join(differ)}; resume with the "
                        f"checkpoint's settings or choose another --workdir")


def load_weights_into(model: nn.Module, weights: dict, path: str | Path) -> None:
    """``model.load_state_dict(weights)``, a mismatch reported as a one-line :class:`CheckpointError`."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not fit the network its config describes: {first}") from None


def load_score_model(target: str | Path, use_ema: bool = True,
                     device: torch.device = torch.device("cpu")) -> tuple[nn.Module, dict, dict]:
    """The score model saved in a checkpoint (or a run's newest readable one), in eval mode.

    Returns ``(model, config, info)`` with ``info`` the checkpoint path, step and whether the
    EMA weights were used.
    """
    from ncsn.device import apply_cpu_threads

    def read(path):
        state = read_state(path)
        model = build_score_model(state["config"])
        load_weights_into(model, state["ema"] if use_ema and "ema" in state else state["model"], path)
        return state, model

    (state, model), path = load_state(target, read=read)
    config = state["config"]
    apply_cpu_threads(config, torch.device(device))
    model.to(device).eval().requires_grad_(False)
    info = {"checkpoint": str(path), "step": int(state["step"]), "ema": bool(use_ema and "ema" in state)}
    return model, config, info
