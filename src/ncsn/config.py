"""Experiment configuration: YAML files with ermongroup/ncsn's key names, strictly checked.

A config is a two-level mapping ``section -> key -> value``. Every key has a default
in :data:`DEFAULTS`; a file or a ``--set section.key=value`` override naming a key that
does not exist is an error (with a suggestion), and so is a value of the wrong type.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from ncsn.errors import UserError

DEFAULTS: dict[str, dict[str, Any]] = {
    "training": {
        "batch_size": 128,        # global batch (split over ranks under torchrun)
        "n_iters": 200001,
        "snapshot_freq": 5000,    # checkpoint every N steps (and at the end)
        "keep_checkpoints": 3,    # keep the last K checkpoints
        "log_freq": 50,           # CSV log row every N steps
        "sample_freq": 0,         # sample grid every N steps (0: off)
        "sample_n": 64,           # images in those grids
        "seed": 0,
        "divergence_factor": 1000.0,  # stop when loss > factor x running mean (after warm-up)
        "amp": "off",             # off | bf16 | fp16 (autocast; fp16 uses a grad scaler)
        "compile": False,         # torch.compile the score network
        "compile_backend": "inductor",  # torch.compile backend (aot_eager: no C++ toolchain needed)
        "channels_last": False,
        "cpu_threads": 0,         # torch intra-op threads on the CPU (0: torch's default)
        "num_workers": 0,         # background decoding workers for lazily read datasets
        "objective": "auto",      # auto | ncsn (lambda(sigma)=sigma^2 DSM) | ddpm (L_simple); auto: ncsn for ve, ddpm for vp
    },
    "data": {
        "dataset": "digits",      # digits | mnist | cifar10 | celeba | folder
        "root": None,             # where mnist/cifar10/celeba/folder live
        "download": False,        # fetch mnist/cifar10 when missing
        "image_size": 8,
        "channels": 1,
        "random_flip": False,
        "logit_transform": False,
        "dequantize": True,       # uniform dequantisation
    },
    "model": {
        "sigma_begin": 1.0,
        "sigma_end": 0.01,
        "num_classes": 10,        # L, the number of noise levels
        "ngf": 64,
        "ema_rate": 0.999,
        "ema": True,
        "scale_by_sigma": False,  # NCSNv2 output scaling s(x, sigma) = f(x) / sigma
        "arch": "refinenet",      # refinenet (NCSN) | ncsnv2 | ncsnv2_deeper | ncsnv2_deepest (NCSNv2's, ve only)
                                  # | unet (DDPM's U-Net; ngf is its base width ch)
        "numerics": 1,            # RefineNet family: 1, this project's first RefineNet; 2, the authors' reference code
                                  # (unbiased variance of the CIN++ channel means, align_corners=True): imported weights
        "process": "ve",          # ve (NCSN: x + sigma z) | vp (DDPM: sqrt(abar) x + sqrt(1 - abar) z)
        "num_timesteps": 1000,    # vp: T
        "beta_schedule": "linear",  # vp: linear | cosine
        "beta_start": 0.0001,     # vp: beta_1 (linear schedule)
        "beta_end": 0.02,         # vp: beta_T (linear schedule)
        "ch_mult": [1, 2, 2, 2],  # unet: width multiplier per resolution
        "num_res_blocks": 2,      # unet: residual blocks per resolution
        "attn_resolutions": [16],  # unet: resolutions with self-attention
        "dropout": 0.0,           # unet: dropout in the residual blocks
    },
    "optim": {
        "lr": 0.001,
        "beta1": 0.9,
        "weight_decay": 0.0,
        "amsgrad": False,
        "eps": 1e-8,
        "grad_clip": 0.0,         # clip the gradient norm (0: off)
        "warmup": 0,              # linear learning-rate warm-up over this many steps (0: off)
    },
    "sampling": {
        "method": "auto",         # auto | annealed_langevin | consistent_annealing | predictor_corrector | pf_ode | ddpm
                                  # (auto: annealed_langevin for ve, ddpm for vp)
        "sigmas": "trained",      # the levels the sampler visits (not ddpm's: all T): trained | geometric | karras
        "n_levels": 0,            # how many levels (0: all trained ones; geometric/karras need a count)
        "rho": 7.0,               # karras: the schedule's exponent (Karras et al. 2022)
        "solver": "heun",         # pf_ode: heun | euler
        "snr": 0.16,              # predictor_corrector: the corrector's signal-to-noise ratio
        "n_corrector": 1,         # predictor_corrector: corrector steps per level
        "predictor": "reverse_diffusion",  # predictor_corrector: reverse_diffusion | ancestral | none
        "corrector": "langevin",  # predictor_corrector: langevin | none
        "eta": 0.0,               # consistent_annealing: fraction of the noise each step removes (0: at each level as
                                  # much fresh noise as DDPM's ancestral step)
        "variance": "beta",       # ddpm: reverse variance beta_t | posterior (beta~_t)
        "clip_x0": 0.0,           # ddpm: clip the predicted x0 to [-c, c] (0: off)
        "step_lr": 2e-5,          # Algorithm 1's epsilon: alpha_i = step_lr * sigma_i^2 / sigma_L^2
        "n_steps_each": 100,      # T, Langevin steps per noise level
        "denoise": True,          # final Tweedie step x + sigma_L^2 s(x, sigma_L)
        "batch_size": 500,        # samples per sampler batch (memory stays flat for any n)
    },
}

OBJECTIVES = ("auto", "ncsn", "ddpm")
ARCHS = ("refinenet", "ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest", "unet")
SAMPLERS = ("auto", "annealed_langevin", "consistent_annealing", "predictor_corrector", "pf_ode", "ddpm")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _coerce(section: str, key: str, value: Any) -> Any:
    default = DEFAULTS[section][key]
    where = f"{section}.{key}"
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        raise UserError(f"config key {where} must be a list of integers, got {value!r}")
    raise UserError(f"config key {where} must be {_type_name(default)}, got {value!r}")


def _unknown(name: str, known: list[str], what: str) -> UserError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
    return UserError(f"unknown config {what} {name!r}{hint}")


def merge(config: dict, updates: dict, origin: str = "config") -> dict:
    """Return ``config`` updated by the two-level mapping ``updates``, checking names and types."""
    out = copy.deepcopy(config)
    if not isinstance(updates, dict):
        raise UserError(f"{origin}: expected a mapping of sections, got {_type_name(updates)}")
    for section, values in updates.items():
        if section not in DEFAULTS:
            raise _unknown(str(section), list(DEFAULTS), "section")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{origin}: section {section!r} must be a mapping")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise _unknown(f"{section}.{key}", [f"{section}.{k}" for k in DEFAULTS[section]], "key")
            out[section][key] = _coerce(section, key, value)
    return out


def parse_override(text: str) -> dict:
    """Parse ``section.key=value`` (value read as YAML) into ``{section: {key: value}}``."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"--set expects section.key=value, got {text!r}")
    name, raw = text.split("=", 1)
    section, key = name.strip().split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"--set {name}: cannot parse value {raw!r}: {err}") from None
    return {section: {key: value}}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults, then the YAML file at ``path``, then each ``section.key=value`` override."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise UserError(f"config file {path} is not valid YAML: {first}") from None
        config = merge(config, loaded, origin=str(path))
    for text in overrides:
        config = merge(config, parse_override(text), origin="--set")
    validate(config)
    return config


def validate(config: dict) -> None:
    """Check cross-key constraints that types alone cannot express."""
    from ncsn.processes import PROCESSES
    from ncsn.sampling import CORRECTORS, PREDICTORS, SOLVERS, VARIANCES
    from ncsn.sigmas import BETA_SCHEDULES, SCHEDULES

    t, m, d, sp = config["training"], config["model"], config["data"], config["sampling"]
    checks = [
        (t["batch_size"] >= 1, "training.batch_size must be >= 1"),
        (t["n_iters"] >= 0, "training.n_iters must be >= 0"),
        (t["snapshot_freq"] >= 1, "training.snapshot_freq must be >= 1"),
        (t["keep_checkpoints"] >= 1, "training.keep_checkpoints must be >= 1"),
        (t["amp"] in ("off", "bf16", "fp16"), "training.amp must be off, bf16 or fp16"),
        (m["sigma_begin"] > m["sigma_end"] > 0, "model.sigma_begin must exceed model.sigma_end > 0"),
        (m["num_classes"] >= 1, "model.num_classes must be >= 1"),
        (0.0 <= m["ema_rate"] < 1.0, "model.ema_rate must be in [0, 1)"),
        (d["channels"] in (1, 3), "data.channels must be 1 or 3"),
        (d["image_size"] >= 4, "data.image_size must be >= 4"),
        (config["sampling"]["step_lr"] > 0, "sampling.step_lr must be > 0"),
        (config["optim"]["lr"] > 0, "optim.lr must be > 0"),
        (config["optim"]["warmup"] >= 0, "optim.warmup must be >= 0"),
        (t["objective"] in OBJECTIVES, f"training.objective must be one of {', '.join(OBJECTIVES)}"),
        (m["arch"] in ARCHS, f"model.arch must be one of {', '.join(ARCHS)}"),
        (m["numerics"] in (1, 2), "model.numerics must be 1 (this project's) or 2 (the reference code's)"),
        (not m["arch"].startswith("ncsnv2") or m["process"] == "ve", f"model.arch={m['arch']} needs model.process=ve"),
        (m["process"] in PROCESSES, f"model.process must be one of {', '.join(PROCESSES)}"),
        (m["num_timesteps"] >= 2, "model.num_timesteps must be >= 2"),
        (m["beta_schedule"] in BETA_SCHEDULES, f"model.beta_schedule must be one of {', '.join(BETA_SCHEDULES)}"),
        (0 < m["beta_start"] <= m["beta_end"] < 1, "need 0 < model.beta_start <= model.beta_end < 1"),
        (len(m["ch_mult"]) >= 1 and min(m["ch_mult"]) >= 1, "model.ch_mult must be a non-empty list of positive integers"),
        (m["num_res_blocks"] >= 1, "model.num_res_blocks must be >= 1"),
        (0.0 <= m["dropout"] < 1.0, "model.dropout must be in [0, 1)"),
        (m["ngf"] >= 1, "model.ngf must be >= 1"),
        (config["sampling"]["method"] in SAMPLERS, f"sampling.method must be one of {', '.join(SAMPLERS)}"),
        (config["sampling"]["variance"] in VARIANCES, f"sampling.variance must be one of {', '.join(VARIANCES)}"),
        (config["sampling"]["n_levels"] >= 0, "sampling.n_levels must be >= 0"),
        (config["sampling"]["clip_x0"] >= 0, "sampling.clip_x0 must be >= 0 (0: off)"),
        (config["sampling"]["n_steps_each"] >= 1, "sampling.n_steps_each must be >= 1"),
        (sp["sigmas"] in SCHEDULES, f"sampling.sigmas must be one of {', '.join(SCHEDULES)}"),
        (sp["sigmas"] == "trained" or sp["n_levels"] >= 2,
         f"sampling.sigmas={sp['sigmas']} needs sampling.n_levels >= 2 (how many levels to visit)"),
        (sp["rho"] > 0, "sampling.rho must be > 0"),
        (sp["solver"] in SOLVERS, f"sampling.solver must be one of {', '.join(SOLVERS)}"),
        (sp["snr"] > 0, "sampling.snr must be > 0"),
        (sp["n_corrector"] >= 0, "sampling.n_corrector must be >= 0"),
        (sp["predictor"] in PREDICTORS, f"sampling.predictor must be one of {', '.join(PREDICTORS)}"),
        (sp["corrector"] in CORRECTORS, f"sampling.corrector must be one of {', '.join(CORRECTORS)}"),
        (not (sp["predictor"] == "none" and (sp["corrector"] == "none" or sp["n_corrector"] == 0)),
         "sampling.predictor=none needs a corrector (sampling.corrector=langevin, sampling.n_corrector >= 1)"),
        (0.0 <= sp["eta"] <= 1.0, "sampling.eta must be in [0, 1] (0: automatic)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def dump_config(config: dict, path: str | Path) -> None:
    """Write ``config`` to ``path`` as YAML, sections and keys in their order (what a run saves as ``config.yaml``)."""
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))


def packaged_config(name: str) -> Path:
    """``configs/NAME.yaml``: from the working directory if it has one, else the project's own."""
    local = Path("configs") / f"{name}.yaml"
    if local.is_file():
        return local
    project = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    if project.is_file():
        return project
    raise UserError(f"config {name!r} not found (looked for {local} and {project}); pass --config")
