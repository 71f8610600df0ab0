"""Importing the authors' released checkpoints (ermongroup/ncsn, ermongroup/ncsnv2) as ncsn runs.

The released files are pickled lists written by ``torch.save`` from a ``DataParallel`` model
(every key prefixed ``module.``):

* ``ncsn`` (Song & Ermon 2019, ``CondRefineNetDilated``): ``[state_dict, optimizer]``;
* ``ncsnv2`` (Song & Ermon 2020, ``NCSNv2``/``NCSNv2Deeper``/``NCSNv2Deepest``):
  ``[state_dict, optimizer, epoch, step, ema]``, ``ema`` the moving averages of the parameters
  (without the prefix); ``[state_dict, optimizer, epoch, step]`` when trained without EMA.

They are read with ``torch.load(weights_only=True)``: a file whose pickle asks for anything but
tensors and plain containers is refused before it can run code. Each key is mapped to the
project's network (:func:`official_key` gives the name the reference code uses for each of ours)
and every key of the file must be used exactly once. The normalisations are re-parameterised:
the reference (C)IN++ computes ``gamma (x^ + a (mu - m) / v) + beta`` (conditional: one
``(L, 3C)`` embedding table holding ``gamma | a | beta``), which is ours,
``gamma x^ + beta + alpha (mu - m) / v``, with ``alpha = gamma a``. The imported network uses the
reference code's numerics (``model.numerics = 2``).

Optimizer moments are not imported (the reference code's parameter order is not ours).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ncsn import checkpoint as ckpt
from ncsn.errors import UserError

FORMATS = ("ncsn", "ncsnv2")
#: what the reference code calls our stages and refine blocks, coarse stages last (NCSNv2Deepest adds res31, refine31)
STAGE_NAMES = {4: ["res1", "res2", "res3", "res4"], 5: ["res1", "res2", "res3", "res4", "res5"],
               6: ["res1", "res2", "res3", "res31", "res4", "res5"]}
#: their refine blocks, finest first: refine<k> joins res<k> (NCSNv2Deepest's refine31 sits after refine2)
REFINE_NAMES = {4: ["refine1", "refine2", "refine3", "refine4"],
                5: ["refine1", "refine2", "refine3", "refine4", "refine5"],
                6: ["refine1", "refine2", "refine31", "refine3", "refine4", "refine5"]}
_LAYOUTS = {"ncsn": "[state_dict, optimizer]", "ncsnv2": "[state_dict, optimizer, epoch, step, ema]"}
_LENGTHS = {"ncsn": (2,), "ncsnv2": (4, 5)}  # list lengths of each format (NCSNv2 without EMA has 4 items)
_NORM_PARAMS = ("gamma", "alpha", "beta")
_RCU_STAGES = 2  # every residual conv unit of both networks has 2 stages per block


def official_key(name: str, depth: int, conditional: bool) -> str:
    """The reference code's key for our parameter ``name`` (a key of the bare network's state dict).

    A conditional normalisation's ``gamma``, ``alpha`` and ``beta`` all map to its
    ``embed.weight`` table. Unknown names raise ``KeyError``.
    """
    stage = re.fullmatch(r"stage(\d+)\.(\d+)\.(.+)", name)
    refine = re.fullmatch(r"refine(\d+)\.(.+)", name)
    if stage:
        k, block, rest = int(stage.group(1)), stage.group(2), stage.group(3)
        rest = re.sub(r"^norm([12])\.", r"normalize\1.", rest)
        out = f"{STAGE_NAMES[depth][k - 1]}.{block}.{rest}"
    elif refine:
        k, rest = int(refine.group(1)), refine.group(2)
        rcu = re.fullmatch(r"(?:adapt\.(\d+)|out)\.(norm|conv)s\.(\d+)\.(.+)", rest)
        if rcu:  # our j-th (norm, conv) of a unit is the reference's (block j // 2 + 1, stage j % 2 + 1)
            unit = f"adapt_convs.{rcu.group(1)}" if rcu.group(1) is not None else "output_convs"
            j = int(rcu.group(3))
            rest = f"{unit}.{j // _RCU_STAGES + 1}_{j % _RCU_STAGES + 1}_{rcu.group(2)}.{rcu.group(4)}"
        elif rest.startswith("fuse."):
            rest = "msf." + rest[len("fuse."):]
        out = f"{REFINE_NAMES[depth][k - 1]}.{rest}"
    elif name.startswith(("begin_conv.", "end_conv.")):
        out = name
    elif name.startswith("end_norm."):
        out = "normalizer." + name[len("end_norm."):]
    else:
        raise KeyError(name)
    if conditional and out.rsplit(".", 1)[-1] in _NORM_PARAMS:
        out = out.rsplit(".", 1)[0] + ".embed.weight"
    return out


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    """``state`` without DataParallel's ``module.`` prefix (when every key has it)."""
    if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _is_weights(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_released(path: str | Path, fmt: str) -> dict:
    """The weights of a released checkpoint: ``{"weights", "ema" (or None), "step"}``, prefixes stripped.

    Read with ``weights_only=True``; a file of the other format, or not a released checkpoint at
    all, is a one-line :class:`UserError` naming the layout it expected.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    obj = ckpt.load_plain(path, "released checkpoint")
    expected = f"the {fmt} format is a list {_LAYOUTS[fmt]}"
    if isinstance(obj, dict):
        kind = "an ncsn run checkpoint (use it directly)" if "config" in obj else "a dict"
        raise UserError(f"{path} holds {kind}, not a released checkpoint: {expected}")
    if not isinstance(obj, (list, tuple)) or not obj or not _is_weights(obj[0]):
        raise UserError(f"{path} is not a released checkpoint: {expected} of weights first")
    if len(obj) not in _LENGTHS[fmt]:
        other = [name for name, lengths in _LENGTHS.items() if name != fmt and len(obj) in lengths]
        hint = f"; this looks like --format {other[0]}" if other else ""
        raise UserError(f"{path} holds a list of {len(obj)} items, but {expected}{hint}")
    ema = None
    if fmt == "ncsnv2" and len(obj) == 5:
        if not _is_weights(obj[4]):
            raise UserError(f"{path}: the fifth item (the EMA weights) is not a dict of tensors")
        ema = strip_prefix(obj[4])
    step = int(obj[3]) if fmt == "ncsnv2" and isinstance(obj[3], int) else 0
    return {"weights": strip_prefix(obj[0]), "ema": ema, "step": step}


def convert(official: dict, net: nn.Module, conditional: bool, levels: torch.Tensor,
            source: str = "the file") -> tuple[dict, list[str]]:
    """Our network's state dict from the reference code's ``official`` one; with the keys used, in order.

    Every key of ``official`` must be used exactly once. The reference NCSNv2 keeps its noise
    levels as a buffer ``sigmas``: it is checked against ``levels`` (the config's, decreasing) and
    counts as used; our RefineNet's own ``sigmas`` buffer is ``levels``. A missing key, a key left
    over, a shape that does not fit ``net`` or other noise levels are one-line :class:`UserError`.
    """
    ours = net.state_dict()
    out, used = {}, []

    def take(key: str, shape) -> torch.Tensor:
        if key not in official:
            raise UserError(f"{source} has no weight {key!r}, which this network needs "
                            f"(is --format right, and does --config describe the file's network?)")
        value = official[key]
        if tuple(value.shape) != tuple(shape):
            raise UserError(f"{source}: {key!r} has shape {tuple(value.shape)}, but the config's network needs "
                            f"{tuple(shape)} (check model.ngf, model.num_classes, data.channels and model.arch)")
        used.append(key)
        return value

    for name, target in ours.items():
        prefix, param = name.rsplit(".", 1) if "." in name else ("", name)
        if name == "sigmas":
            out[name] = levels
        elif param in ("alpha", "beta"):
            continue  # filled with gamma
        elif param == "gamma":
            if conditional:
                gamma, a, beta = take(official_key(name, net.depth, True), (target.shape[0], 3 * target.shape[1])
                                      ).chunk(3, dim=1)
            else:
                gamma, a, beta = (take(official_key(f"{prefix}.{p}", net.depth, False), target.shape)
                                  for p in _NORM_PARAMS)
            out[f"{prefix}.gamma"], out[f"{prefix}.alpha"], out[f"{prefix}.beta"] = gamma, gamma * a, beta
        else:
            out[name] = take(official_key(name, net.depth, conditional), target.shape)
    if "sigmas" in official:
        check_levels(official["sigmas"], levels, source)
        used.append("sigmas")
    left = [k for k in official if k not in set(used)]
    if left:
        raise UserError(f"{source} has {len(left)} weight(s) this network does not use (first: {left[0]!r}): "
                        f"is --format right, and does --config describe the file's network?")
    return {k: v.to(ours[k].dtype).clone() for k, v in out.items()}, used


def check_levels(theirs: torch.Tensor, levels: torch.Tensor, source: str) -> None:
    """The file's noise levels must be the config's (to float32 rounding)."""
    theirs = theirs.detach().double().cpu().reshape(-1)
    ours = levels.detach().double().cpu()

    def span(t: torch.Tensor) -> str:
        return f"{t.numel()} ({float(t[0]):g} -> {float(t[-1]):g})" if t.numel() else "0"

    if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-5, atol=0.0):
        raise UserError(f"{source}: its noise levels, {span(theirs)}, are not the config's {span(ours)}; "
                        f"set model.sigma_begin, model.sigma_end and model.num_classes as the file's")


def check_config(config: dict, fmt: str) -> None:
    """The config must describe the format's network: NCSN's RefineNet or one of NCSNv2's, on the VE process."""
    m = config["model"]
    wanted = ("refinenet",) if fmt == "ncsn" else ("ncsnv2", "ncsnv2_deeper", "ncsnv2_deepest")
    if m["arch"] not in wanted or m["process"] != "ve":
        raise UserError(f"--format {fmt} needs a config with model.arch={' or '.join(wanted)} and model.process=ve, "
                        f"got model.arch={m['arch']}, model.process={m['process']} "
                        f"(e.g. configs/{'cifar10' if fmt == 'ncsn' else 'ncsnv2_cifar10'}.yaml)")


def import_run(path: str | Path, fmt: str, config: dict, out: str | Path) -> dict:
    """Import a released checkpoint as the run directory ``out`` (``config.yaml`` and a checkpoint
    in the format ``ncsn train`` writes), ready for ``ncsn sample|inpaint|eval out``.

    ``config`` describes the file's network and carries the sampler settings; the written config
    has ``model.numerics = 2`` (the reference code's numerics) and, for ``ncsn``,
    ``model.scale_by_sigma = false`` (NCSN's network outputs the score directly). NCSNv2's EMA
    weights become the checkpoint's ``ema`` (what sampling uses by default), its raw weights
    ``model``; an NCSN file has no EMA. Returns a summary.
    """
    import copy

    from ncsn.build import CHECKPOINT_VERSION, build_score_model, make_sigmas
    from ncsn.config import dump_config

    check_config(config, fmt)
    out = Path(out)
    if ckpt.list_checkpoints(out):
        raise UserError(f"{out} already holds checkpoints; choose another --out")
    config = copy.deepcopy(config)
    config["model"]["numerics"] = 2
    if fmt == "ncsn":
        config["model"]["scale_by_sigma"] = False
    released = read_released(path, fmt)
    model = build_score_model(config)
    levels = make_sigmas(config)
    conditional = fmt == "ncsn"
    weights, used = convert(released["weights"], model.net, conditional, levels, str(path))
    model.net.load_state_dict(weights)  # strict: every key of ours is filled

    def snapshot() -> dict:
        return {k: v.clone() for k, v in model.state_dict().items()}

    state = {"version": CHECKPOINT_VERSION, "step": released["step"], "model": snapshot()}
    if released["ema"] is not None:  # an EMA key the weights lack is left over in convert, a one-line error
        ema, _ = convert({**released["weights"], **released["ema"]}, model.net, conditional, levels,
                         f"{path} (EMA)")
        model.net.load_state_dict(ema)
        state["ema"] = snapshot()
    state.update({"config": config, "sigmas": model.level_stds.cpu(), "world_size": 1,
                  "imported": {"file": str(path), "format": fmt, "keys": len(used), "ema": "ema" in state}})
    written = ckpt.save_checkpoint(out, released["step"], state)
    dump_config(config, out / "config.yaml")
    n_params = sum(p.numel() for p in model.parameters())
    return {"checkpoint": str(written), "step": released["step"], "keys": len(used), "ema": "ema" in state,
            "parameters": n_params, "arch": config["model"]["arch"]}
