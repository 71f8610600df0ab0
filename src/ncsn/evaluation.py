"""Evaluating samples against a dataset's real images, with the protocol written next to every number.

FID / KID / precision-recall / density-coverage compare feature vectors of generated
and real images; Inception Score uses the class probabilities of the generated ones.
Which network gives the features (and the checksum of its weights), which real images
and how many, which sampler settings and checkpoint: all of it decides the number, so
all of it is returned with it (see :func:`protocol`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ncsn.atomic import write_npz, write_text
from ncsn.errors import UserError

METRICS = ("fid", "is", "kid", "pr", "dc", "bpd")
SAMPLE_METRICS = ("fid", "is", "kid", "pr", "dc")


def parse_metrics(text: str) -> list[str]:
    """The metric names of a comma-separated list such as ``fid,is,pr`` (a UserError for an unknown or empty one)."""
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
    return names


def cache_dir() -> Path:
    """Where cached features and weights go: ``$NCSN_CACHE``, else ``~/.cache/ncsn``."""
    return Path(os.environ.get("NCSN_CACHE", Path.home() / ".cache" / "ncsn"))


def open_split(dataset: str, root: str | None, split: str, image_size: int, channels: int, download: bool = False,
               progress: bool = False):
    """``dataset``'s ``split`` (train | test | all) at ``image_size`` (``channels`` for folders)."""
    from ncsn.data.images import get_dataset

    kwargs = dict(root=root, train={"train": True, "test": False, "all": None}[split], image_size=image_size,
                  download=download, progress=progress)
    if dataset == "folder":
        kwargs["channels"] = channels
    return get_dataset(dataset, **kwargs)


def load_real_images(dataset: str, root: str | None, split: str, image_size: int, channels: int,
                     limit: int | None = None, download: bool = False, progress: bool = False) -> torch.Tensor:
    """The reference images (``(N, C, H, W)`` in [0, 1]) of ``dataset``'s ``split`` (``download``:
    fetch MNIST / CIFAR-10 into ``root`` when they are not there, with a progress bar if ``progress``)."""
    data = open_split(dataset, root, split, image_size, channels, download, progress)
    n = len(data) if limit is None else min(limit, len(data))
    return data.get_batch(torch.arange(n))


#: the likelihood numbers ``--metrics bpd`` can give, never to be confused
BPD_KINDS = {"bpd": "exact log-likelihood through the probability-flow ODE (uniform dequantisation)",
             "bpd_vlb": "DDPM's variational bound (an upper bound on bits/dim; no dequantisation)"}


def bits_per_dim(model, config: dict, split: str = "test", limit: int | None = None, batch_size: int = 500,
                 seed: int = 0, progress: bool = False, download: bool = False, ctx=None,
                 rtol: float = 1e-5, atol: float = 1e-5, n_probes: int = 1) -> dict:
    """The likelihoods in bits/dim a model allows on a held-out split: ``{name: (value, protocol)}``.

    ``bpd`` (:func:`ode_bits_per_dim`) for any model whose network takes a continuous noise level,
    and ``bpd_vlb`` (:func:`ddpm_bits_per_dim`, computed on rank 0) for VP models.
    """
    from ncsn.generate import is_continuous

    out = {}
    if is_continuous(model):
        out["bpd"] = ode_bits_per_dim(model, config, split, limit, batch_size, seed, progress, download, ctx,
                                      rtol, atol, n_probes)
    if model.process.name == "vp" and (ctx is None or ctx.is_main):
        out["bpd_vlb"] = ddpm_bits_per_dim(model, config, split, limit, batch_size, seed, progress, download)
    if not out and model.process.name == "ve":
        raise UserError("bpd needs a network conditioned on a continuous noise level (model.arch=unet) for the "
                        "probability-flow likelihood, or a VP model for DDPM's bound; this RefineNet knows only "
                        "its trained sigmas")
    return out


def ode_bits_per_dim(model, config: dict, split: str = "test", limit: int | None = None, batch_size: int = 500,
                     seed: int = 0, progress: bool = False, download: bool = False, ctx=None,
                     rtol: float = 1e-5, atol: float = 1e-5, n_probes: int = 1) -> tuple[float, dict]:
    """Bits/dim of the held-out images under the model's probability flow (:func:`ncsn.likelihood.log_likelihood`).

    Each image v / (K - 1) on K grey levels is dequantised once, x = (v + u) / K with u ~ U[0, 1)^D
    (Theis et al. 2016), mapped to the process's data range (a factor c = hi - lo, so
    log p(x) = log p_model(c x) + D log c), and its log-density is integrated along the ODE from
    the smallest to the largest trained noise level (VP models in their VE form,
    :func:`ncsn.processes.ve_view`, with the prior N(0, (1 + sigma~_max^2) I)). Then
    bpd = -log p(x) / (D ln 2) + log2 K, an upper bound on the discrete images' bits/dim.
    Under torchrun rank r takes images r, r + W, ... and solves its own ODEs; the values are
    gathered at the end. Returns the mean (on rank 0; ``nan`` elsewhere) and the protocol.
    """
    from ncsn import distributed
    from ncsn.data.transforms import dequantize
    from ncsn.likelihood import EXACT_TRACE_MAX_DIM, log_likelihood
    from ncsn.processes import ve_view

    process = model.process
    d = config["data"]
    data = open_split(d["dataset"], d["root"], split, d["image_size"], d["channels"], download, progress)
    n = len(data) if limit is None else min(limit, len(data))
    device = next(model.parameters()).device
    ctx = ctx or distributed.Context(device=device)
    levels = process.noise_levels
    sigma_min, sigma_max = float(levels.min()), float(levels.max())
    prior_std = sigma_max if process.name == "ve" else math.sqrt(1.0 + sigma_max**2)
    lo, hi = process.data_range
    dim = d["channels"] * d["image_size"] ** 2
    mine = torch.arange(ctx.rank, n, ctx.world_size)
    values, nfes = [], []
    score = ve_view(model, process)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(mine), batch_size), desc="bpd (probability flow)", unit="batch",
                      disable=not (progress and ctx.is_main), dynamic_ncols=True):
        index = mine[start : start + batch_size]
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + int(index[0]))
        images = dequantize(data.get_batch(index).to(device), data.n_levels,
                            noise=torch.rand(len(index), d["channels"], d["image_size"], d["image_size"],
                                             generator=gen, device=device))
        logp, nfe = log_likelihood(score, process.to_model(images), sigma_min, sigma_max, n_probes=n_probes,
                                   rtol=rtol, atol=atol, generator=gen, prior_std=prior_std)
        logp = logp + dim * math.log(hi - lo)
        values.append((-logp / (dim * math.log(2)) + math.log2(data.n_levels)).float())
        nfes.append(float(nfe))
    mine_bpd = torch.cat(values) if values else torch.zeros(0, device=device)
    bpd = distributed.gather_to_main(ctx, mine_bpd) if ctx.distributed else mine_bpd.cpu()
    protocol = {"bound": BPD_KINDS["bpd"], "split": f"{d['dataset']}/{split}", "n": n, "grey_levels": data.n_levels,
                "dequantisation": "uniform, (v + u) / K, one draw per image",
                "ode": f"probability flow in t = ln sigma~ from {sigma_min:.4g} to {sigma_max:.4g}, Dormand-Prince "
                       f"(rtol {rtol:g}, atol {atol:g})",
                "trace": "exact" if dim <= EXACT_TRACE_MAX_DIM else f"Hutchinson, {n_probes} Rademacher probe(s)",
                "prior": f"N(0, {prior_std:.4g}^2 I)", "nfe_per_image": sum(nfes) / max(1, len(nfes)),
                "seed": seed}
    if bpd is None:
        return float("nan"), protocol
    protocol["std_error"] = float(bpd.std() / max(1, n) ** 0.5) if n > 1 else None
    return float(bpd.mean()), protocol


def ddpm_bits_per_dim(model, config: dict, split: str = "test", limit: int | None = None, batch_size: int = 500,
                      seed: int = 0, progress: bool = False, download: bool = False) -> tuple[float, dict]:
    """DDPM's variational bound (Ho et al. 2020, eq. 5; :func:`ncsn.likelihood.ddpm_vlb`) in bits/dim on a split.

    The images are taken on their own grid of K grey levels (no dequantisation), scaled to
    [-1, 1], with the discretised decoder's bins 2 / (K - 1) wide. Returns the mean over the
    images and the protocol.
    """
    from ncsn.likelihood import ddpm_vlb
    from ncsn.models.score_model import eps_fn_of

    process = model.process
    if process.name != "vp":
        raise UserError("the variational bound is DDPM's and needs a VP model (model.process=vp); "
                        "this one was trained with model.process=" + process.name)
    d = config["data"]
    data = open_split(d["dataset"], d["root"], split, d["image_size"], d["channels"], download, progress)
    n = len(data) if limit is None else min(limit, len(data))
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    values = []
    for start in range(0, n, batch_size):
        images = data.get_batch(torch.arange(start, min(n, start + batch_size))).to(device)
        out = ddpm_vlb(eps_fn_of(model), process.to_model(images), process.betas,
                       bin_width=2.0 / (data.n_levels - 1), variance=config["sampling"]["variance"], generator=gen,
                       progress=progress)
        values.append(out["bpd"].cpu())
    bpd = torch.cat(values)
    protocol = {"bound": BPD_KINDS["bpd_vlb"] + "; Ho et al. 2020 eq. 5, discretised Gaussian decoder",
                "split": f"{d['dataset']}/{split}", "n": n, "grey_levels": data.n_levels,
                "dequantisation": "none (images on their grid, scaled to [-1, 1])",
                "variance": config["sampling"]["variance"], "nfe_per_image": process.num_levels,
                "std_error": float(bpd.std() / max(1, n) ** 0.5) if n > 1 else None, "seed": seed}
    return float(bpd.mean()), protocol


def real_features(extractor, dataset: str, root: str | None, split: str, image_size: int, channels: int,
                  limit: int | None = None, progress: bool = True, download: bool = False) -> dict:
    """Features of the real images, cached on disk.

    The cache is keyed by :func:`features_key`: the images' content (a fingerprint of the pixels, or of
    the files' names, sizes and times), the extractor's name and weights checksum and the settings, so a
    changed dataset or extractor is never served stale features. A cache file that cannot be read, or
    whose recorded key differs, is recomputed (and rewritten atomically).
    """
    data = open_split(dataset, root, split, image_size, channels, download, progress)
    n = len(data) if limit is None else min(limit, len(data))
    key = features_key(data, n, extractor)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / "features" / f"{dataset}-{split}-{extractor.name}-{digest}.npz"
    cached = _read_features_cache(path, key)
    if cached is not None:
        return {**cached, "n": int(cached["features"].shape[0]), "cache": str(path)}
    images = data.get_batch(torch.arange(n))
    out = extractor.extract(images, progress=progress)
    write_npz(path, features=out["features"].astype(np.float32), probs=out["probs"].astype(np.float32),
              key=np.array(key))
    return {"features": out["features"], "probs": out["probs"], "n": int(images.shape[0]), "cache": str(path)}


def features_key(data, n: int, extractor) -> str:
    """What the reference features depend on: the first ``n`` images' content, the extractor and its weights."""
    return json.dumps({"format": 2, "dataset": data.name, "split": data.split, "n": n, "size": data.image_size,
                       "channels": data.channels, "content_sha256": data.fingerprint(n), "extractor": extractor.name,
                       "extractor_weights_sha256": extractor.weights_sha256}, sort_keys=True)


def _read_features_cache(path: Path, key: str) -> dict | None:
    """The cached features at ``path`` if it is readable and was made for ``key``, else None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if "key" not in cached.files or str(cached["key"]) != key:
                return None
            return {"features": cached["features"].astype(np.float64), "probs": cached["probs"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def compute_metrics(names: list[str], fake: dict, real: dict, seed: int = 0) -> dict:
    """The requested metrics of generated features/probs ``fake`` against ``real``."""
    from ncsn import metrics

    result = {}
    if "fid" in names:
        result["fid"] = float(metrics.fid(real["features"], fake["features"]))
    if "is" in names:
        splits = 10 if len(fake["probs"]) >= 100 else 1
        mean, std = metrics.inception_score(fake["probs"], splits=splits)
        result["is"], result["is_std"] = float(mean), float(std)
    if "kid" in names:
        size = min(1000, len(fake["features"]), len(real["features"]))
        mean, std = metrics.kid(real["features"], fake["features"], subset_size=size, seed=seed)
        result["kid"], result["kid_std"] = float(mean), float(std)
    if "pr" in names:
        result.update({k: float(v) for k, v in metrics.precision_recall(real["features"], fake["features"], k=3).items()})
    if "dc" in names:
        result.update({k: float(v) for k, v in metrics.density_coverage(real["features"], fake["features"], k=5).items()})
    return result


def protocol(extractor, dataset: str, split: str, n_real: int, n_fake: int, source: dict) -> dict:
    """What a reader needs to compare the numbers with anyone else's."""
    return {
        "extractor": extractor.name,
        "extractor_weights_sha256": extractor.weights_sha256,
        "reference": f"{dataset}/{split}",
        "n_real": n_real,
        "n_fake": n_fake,
        "pr_k": 3,
        "dc_k": 5,
        **source,
    }


def format_table(rows: list[dict], names: list[str]) -> str:
    """A plain-text table: one row per evaluated source, one column per metric."""
    cols = []
    for m in names:
        cols += {"fid": ["fid"], "is": ["is", "is_std"], "kid": ["kid", "kid_std"],
                 "pr": ["precision", "recall"], "dc": ["density", "coverage"], "bpd": ["bpd", "bpd_vlb"]}[m]
    header = ["source"] + cols
    lines = [header]
    for row in rows:
        lines.append([row["label"]] + [f"{row['metrics'][c]:.4g}" if c in row["metrics"] else "-" for c in cols])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def write_json(path: str | Path, payload: dict) -> None:
    """``payload`` as indented JSON at ``path``, written atomically (parent folders created)."""
    write_text(path, json.dumps(payload, indent=2) + "\n")
