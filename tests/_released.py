"""Checkpoints in the layouts the NCSN and NCSNv2 authors released, with random weights, and an
independent functional forward pass of their networks on such weights.

Written from the papers' architecture descriptions and the released files' key names and shapes
(``res{k}.{block}.normalize1.embed.weight``, ``refine{k}.adapt_convs.{i}.{b}_{s}_conv.weight``, ...),
not from the reference code; nothing here imports the project's models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# per stage: (name, [(in / ngf, out / ngf, down, dilation) for its two blocks])
NCSN_STAGES = [("res1", [(1, 1, False, None), (1, 1, False, None)]),
               ("res2", [(1, 2, True, None), (2, 2, False, None)]),
               ("res3", [(2, 2, True, 2), (2, 2, False, 2)]),
               ("res4", [(2, 2, True, 4), (2, 2, False, 4)])]
DEEPER_STAGES = [("res1", [(1, 1, False, None), (1, 1, False, None)]),
                 ("res2", [(1, 2, True, None), (2, 2, False, None)]),
                 ("res3", [(2, 2, True, None), (2, 2, False, None)]),
                 ("res4", [(2, 4, True, 2), (4, 4, False, 2)]),
                 ("res5", [(4, 4, True, 4), (4, 4, False, 4)])]
DEEPEST_STAGES = DEEPER_STAGES[:3] + [("res31", [(2, 2, True, None), (2, 2, False, None)])] + DEEPER_STAGES[3:]
# per refine block, coarse to fine: (name, index of the stage it takes, input widths / ngf, output width / ngf)
NCSN_REFINES = [("refine1", 3, [2], 2), ("refine2", 2, [2, 2], 2), ("refine3", 1, [2, 2], 1), ("refine4", 0, [1, 1], 1)]
DEEPER_REFINES = [("refine1", 4, [4], 4), ("refine2", 3, [4, 4], 2), ("refine3", 2, [2, 2], 2),
                  ("refine4", 1, [2, 2], 1), ("refine5", 0, [1, 1], 1)]
DEEPEST_REFINES = [("refine1", 5, [4], 4), ("refine2", 4, [4, 4], 2), ("refine31", 3, [2, 2], 2),
                   ("refine3", 2, [2, 2], 2), ("refine4", 1, [2, 2], 1), ("refine5", 0, [1, 1], 1)]
ARCHS = {"ncsn": (NCSN_STAGES, NCSN_REFINES), "ncsnv2": (NCSN_STAGES, NCSN_REFINES),
         "ncsnv2_deeper": (DEEPER_STAGES, DEEPER_REFINES), "ncsnv2_deepest": (DEEPEST_STAGES, DEEPEST_REFINES)}


def key_shapes(arch: str, channels: int, ngf: int, levels: int) -> dict[str, tuple]:
    """The released state dict's keys and shapes (``arch`` ``ncsn``: conditional; else NCSNv2's)."""
    conditional = arch == "ncsn"
    stages, refines = ARCHS[arch]
    shapes: dict[str, tuple] = {}

    def norm(prefix: str, c: int) -> None:
        if conditional:
            shapes[f"{prefix}.embed.weight"] = (levels, 3 * c)
        else:
            for p in ("alpha", "gamma", "beta"):
                shapes[f"{prefix}.{p}"] = (c,)

    def conv(prefix: str, cout: int, cin: int, k: int = 3, bias: bool = True) -> None:
        shapes[f"{prefix}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{prefix}.bias"] = (cout,)

    def rcu(prefix: str, c: int, blocks: int) -> None:
        for b in range(1, blocks + 1):
            for s in (1, 2):
                if conditional:
                    norm(f"{prefix}.{b}_{s}_norm", c)
                conv(f"{prefix}.{b}_{s}_conv", c, c, bias=False)

    conv("begin_conv", ngf, channels)
    for name, blocks in stages:
        for j, (a, b, down, dilation) in enumerate(blocks):
            cin, cout, p = a * ngf, b * ngf, f"{name}.{j}"
            norm(f"{p}.normalize1", cin)
            conv(f"{p}.conv1", cin if down else cout, cin)
            norm(f"{p}.normalize2", cin if down else cout)
            if down and dilation is None:
                conv(f"{p}.conv2.conv", cout, cin)
                conv(f"{p}.shortcut.conv", cout, cin, k=1)
            elif down:
                conv(f"{p}.conv2", cout, cin)
                conv(f"{p}.shortcut", cout, cin)
            else:
                conv(f"{p}.conv2", cout, cout)
    for name, _, ins, out in refines:
        for i, c in enumerate(ins):
            rcu(f"{name}.adapt_convs.{i}", c * ngf, 2)
        if len(ins) > 1:
            for i, c in enumerate(ins):
                conv(f"{name}.msf.convs.{i}", out * ngf, c * ngf)
                if conditional:
                    norm(f"{name}.msf.norms.{i}", c * ngf)
        for i in range(2):
            if conditional:
                norm(f"{name}.crp.norms.{i}", out * ngf)
            conv(f"{name}.crp.convs.{i}", out * ngf, out * ngf, bias=False)
        rcu(f"{name}.output_convs", out * ngf, 3 if name == refines[-1][0] else 1)
    norm("normalizer", ngf)
    conv("end_conv", channels, ngf)
    if not conditional:
        shapes["sigmas"] = (levels,)
    return shapes


def random_state(arch: str, channels: int, ngf: int, sigmas: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in the released layout: norm scales near 1, shifts near 0, convs ~ N(0, 1 / fan_in)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in key_shapes(arch, channels, ngf, len(sigmas)).items():
        noise = torch.randn(shape, generator=g)
        if key == "sigmas":
            state[key] = sigmas.clone()
        elif key.endswith("embed.weight"):  # gamma | alpha | beta
            c = shape[1] // 3
            state[key] = torch.cat([1 + 0.3 * noise[:, :2 * c], 0.3 * noise[:, 2 * c:]], dim=1)
        elif key.endswith((".gamma", ".alpha")):
            state[key] = 1 + 0.3 * noise
        elif key.endswith((".beta", ".bias")):
            state[key] = 0.3 * noise
        else:
            state[key] = noise / math.sqrt(math.prod(shape[1:]))
    return state


def released_file(path, arch: str, state: dict, ema: dict | None = None, step: int = 1234, legacy: bool = False) -> None:
    """Save ``state`` as the authors' training scripts did: DataParallel keys, a list with the optimizer
    (``legacy``: in the pre-1.6 ``torch.save`` format the 2019 files were written in)."""
    weights = {f"module.{k}": v for k, v in state.items()}
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                   "amsgrad": False, "params": [0]}]}
    if arch == "ncsn":
        obj = [weights, optimizer]
    else:
        obj = [weights, optimizer, 7, step] + ([ema] if ema is not None else [])
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


# ---- the reference networks' forward pass, functionally -------------------------------------------


def _norm(state, prefix, x, y, conditional):
    """(C)IN++ as the reference computes it: gamma (IN(x) + a (mu - m) / sqrt(var_unbiased(mu) + eps)) + beta."""
    mu = x.mean(dim=(2, 3))
    m = mu.mean(dim=1, keepdim=True)
    v = mu.var(dim=1, keepdim=True)  # unbiased
    h = (x - mu[..., None, None]) / torch.sqrt(x.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5)
    if conditional:
        gamma, a, beta = state[f"{prefix}.embed.weight"][y].chunk(3, dim=1)
    else:
        gamma, a, beta = (state[f"{prefix}.{p}"][None] for p in ("gamma", "alpha", "beta"))
    h = h + (((mu - m) / torch.sqrt(v + 1e-5)) * a)[..., None, None]
    return gamma[..., None, None] * h + beta[..., None, None]


def _conv(state, prefix, x, dilation=1):
    w = state[f"{prefix}.weight"]
    pad = dilation * (w.shape[-1] // 2)
    return F.conv2d(x, w, state.get(f"{prefix}.bias"), padding=pad, dilation=dilation)


def _mean_pool(x):
    return (x[:, :, ::2, ::2] + x[:, :, 1::2, ::2] + x[:, :, ::2, 1::2] + x[:, :, 1::2, 1::2]) / 4


def reference_forward(state: dict, arch: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The released network's output for images ``x`` in [0, 1] at level indices ``y`` (NCSNv2: divided by sigma_y)."""
    conditional = arch == "ncsn"
    stages, refines = ARCHS[arch]

    def norm(prefix, h):
        return _norm(state, prefix, h, y, conditional) if prefix else h

    def rcu(prefix, h, blocks, normed):
        for b in range(1, blocks + 1):
            residual = h
            for s in (1, 2):
                h = norm(f"{prefix}.{b}_{s}_norm" if normed else None, h)
                h = _conv(state, f"{prefix}.{b}_{s}_conv", F.elu(h))
            h = h + residual
        return h

    h = _conv(state, "begin_conv", 2 * x - 1)
    skips = []
    for name, blocks in stages:
        for j, (a, b, down, dilation) in enumerate(blocks):
            p, d = f"{name}.{j}", dilation or 1
            out = _conv(state, f"{p}.conv1", F.elu(norm(f"{p}.normalize1", h)), d)
            out = F.elu(norm(f"{p}.normalize2", out))
            if down and dilation is None:
                out, short = _mean_pool(_conv(state, f"{p}.conv2.conv", out)), _mean_pool(_conv(state, f"{p}.shortcut.conv", h))
            elif down:
                out, short = _conv(state, f"{p}.conv2", out, d), _conv(state, f"{p}.shortcut", h, d)
            else:
                out, short = _conv(state, f"{p}.conv2", out, d), h
            h = short + out
        skips.append(h)
    previous = None
    for name, stage, ins, out in refines:
        xs = [skips[stage]] + ([previous] if previous is not None else [])
        hs = [rcu(f"{name}.adapt_convs.{i}", xi, 2, conditional) for i, xi in enumerate(xs)]
        if len(hs) > 1:
            size = hs[0].shape[2:]
            h = sum(F.interpolate(_conv(state, f"{name}.msf.convs.{i}", norm(f"{name}.msf.norms.{i}" if conditional
                                                                            else None, hi)),
                                  size=size, mode="bilinear", align_corners=True) for i, hi in enumerate(hs))
        else:
            h = hs[0]
        h = path = F.elu(h)
        for i in range(2):
            path = norm(f"{name}.crp.norms.{i}" if conditional else None, path)
            path = (F.avg_pool2d if conditional else F.max_pool2d)(path, 5, stride=1, padding=2)
            path = _conv(state, f"{name}.crp.convs.{i}", path)
            h = h + path
        previous = rcu(f"{name}.output_convs", h, 3 if name == refines[-1][0] else 1, conditional)
    out = _conv(state, "end_conv", F.elu(norm("normalizer", previous)))
    if not conditional:
        out = out / state["sigmas"][y][:, None, None, None]
    return out
