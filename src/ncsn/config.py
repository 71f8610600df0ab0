"""Experiment configuration: YAML files with ermongroup/ncsn's key names, strictly checked.

A config is a two-level mapping ``section -> key -> value``. Every key has a default
in :data:`DEFAULTS` and an allowed range in :func:`key_rules`; a file or a ``--set
section.key=value`` override naming a key that does not exist is an error (with a
suggestion), and so is a value of the wrong type or out of its range (one line naming the
key, the value and the range).
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


@dataclass(frozen=True)
class Rule:
    """What values a config key allows: ``ok(value)`` and the allowed range in words."""

    ok: Callable[[Any], bool]
    allowed: str


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low, strict: bool = False) -> Rule:
    """A finite number >= ``low`` (> ``low`` when ``strict``)."""
    return Rule(lambda v: _finite(v) and (v > low if strict else v >= low), f"{'>' if strict else '>='} {low}")


def between(low, high, high_open: bool = True, low_open: bool = False) -> Rule:
    """A finite number in the interval from ``low`` to ``high`` (open at the ends asked for)."""
    def ok(v):
        return _finite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Rule(ok, f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def one_of(*choices) -> Rule:
    """A value equal to one of ``choices``."""
    return Rule(lambda v: v in choices, f"one of {', '.join(map(str, choices))}")


def each(rule: Rule, nonempty: bool = False) -> Rule:
    """A list whose items all satisfy ``rule`` (and which has at least one item when ``nonempty``)."""
    return Rule(lambda v: (len(v) > 0 or not nonempty) and all(rule.ok(x) for x in v),
                f"a {'non-empty ' if nonempty else ''}list of integers {rule.allowed}")


ANY = Rule(lambda v: True, "any value of the key's type")
PATH_OR_NULL = Rule(lambda v: v is None or isinstance(v, str), "a path or null")


def key_rules() -> dict[str, Rule]:
    """The allowed range of every config key (``section.key -> Rule``); types are checked on merge."""
    from ncsn.data.images import DATASET_NAMES
    from ncsn.processes import PROCESSES
    from ncsn.sampling import CORRECTORS, PREDICTORS, SOLVERS, VARIANCES
    from ncsn.sigmas import BETA_SCHEDULES, SCHEDULES

    positive, count, unit = at_least(0, strict=True), at_least(0), between(0, 1)
    return {
        "training.batch_size": at_least(1), "training.n_iters": count, "training.snapshot_freq": at_least(1),
        "training.keep_checkpoints": at_least(1), "training.log_freq": at_least(1), "training.sample_freq": count,
        "training.sample_n": at_least(1), "training.seed": count,
        "training.divergence_factor": at_least(1, strict=True),
        "training.amp": one_of("off", "bf16", "fp16"), "training.compile": ANY, "training.compile_backend": ANY,
        "training.channels_last": ANY, "training.cpu_threads": count, "training.num_workers": count,
        "training.objective": one_of(*OBJECTIVES),
        "data.dataset": one_of(*DATASET_NAMES), "data.root": PATH_OR_NULL, "data.download": ANY,
        "data.image_size": at_least(4), "data.channels": one_of(1, 3), "data.random_flip": ANY,
        "data.logit_transform": ANY, "data.dequantize": ANY,
        "model.sigma_begin": positive, "model.sigma_end": positive, "model.num_classes": at_least(1),
        "model.ngf": at_least(1), "model.ema_rate": unit, "model.ema": ANY, "model.scale_by_sigma": ANY,
        "model.arch": one_of(*ARCHS), "model.process": one_of(*PROCESSES), "model.num_timesteps": at_least(2),
        "model.beta_schedule": one_of(*BETA_SCHEDULES), "model.beta_start": between(0, 1, low_open=True),
        "model.beta_end": between(0, 1, low_open=True), "model.ch_mult": each(at_least(1), nonempty=True),
        "model.num_res_blocks": at_least(1), "model.attn_resolutions": each(at_least(1)), "model.dropout": unit,
        "model.numerics": one_of(1, 2),
        "optim.lr": positive, "optim.beta1": unit, "optim.weight_decay": count, "optim.amsgrad": ANY,
        "optim.eps": positive, "optim.grad_clip": count, "optim.warmup": count,
        "sampling.method": one_of(*SAMPLERS), "sampling.sigmas": one_of(*SCHEDULES), "sampling.n_levels": count,
        "sampling.rho": positive, "sampling.solver": one_of(*SOLVERS), "sampling.snr": positive,
        "sampling.n_corrector": count, "sampling.predictor": one_of(*PREDICTORS),
        "sampling.corrector": one_of(*CORRECTORS), "sampling.eta": between(0, 1, high_open=False),
        "sampling.variance": one_of(*VARIANCES), "sampling.clip_x0": count, "sampling.step_lr": positive,
        "sampling.n_steps_each": at_least(1), "sampling.denoise": ANY, "sampling.batch_size": at_least(1),
    }


def check_ranges(config: dict) -> None:
    """Each key's value against :func:`key_rules`: the first one out of range is a one-line error."""
    for name, rule in key_rules().items():
        section, key = name.split(".")
        value = config[section][key]
        if not rule.ok(value):
            raise UserError(f"config key {name} = {value!r} is out of range (allowed: {rule.allowed})")


def validate(config: dict) -> None:
    """Check every key's range (:func:`check_ranges`), then the constraints between keys."""
    check_ranges(config)
    m, sp = config["model"], config["sampling"]
    checks = [
        (m["sigma_begin"] > m["sigma_end"],
         f"model.sigma_begin must exceed model.sigma_end (got {m['sigma_begin']} and {m['sigma_end']})"),
        (m["beta_start"] <= m["beta_end"],
         f"model.beta_start must not exceed model.beta_end (got {m['beta_start']} and {m['beta_end']})"),
        (not m["arch"].startswith("ncsnv2") or m["process"] == "ve",
         f"model.arch={m['arch']} needs model.process=ve"),
        (sp["sigmas"] == "trained" or sp["n_levels"] >= 2,
         f"sampling.sigmas={sp['sigmas']} needs sampling.n_levels >= 2 (how many levels to visit)"),
        (not (sp["predictor"] == "none" and (sp["corrector"] == "none" or sp["n_corrector"] == 0)),
         "sampling.predictor=none needs a corrector (sampling.corrector=langevin, sampling.n_corrector >= 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def dump_config(config: dict, path: str | Path) -> None:
    """Write ``config`` to ``path`` as YAML, sections and keys in their order (what a run saves as
    ``config.yaml``), atomically."""
    from ncsn.atomic import write_text

    write_text(path, yaml.safe_dump(config, sort_keys=False))


def packaged_config(name: str) -> Path:
    """``configs/NAME.yaml``: from the working directory if it has one, else the project's own."""
    local = Path("configs") / f"{name}.yaml"
    if local.is_file():
        return local
    project = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    if project.is_file():
        return project
    raise UserError(f"config {name!r} not found (looked for {local} and {project}); pass --config")
