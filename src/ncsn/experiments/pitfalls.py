"""The two pitfalls of naive score matching that motivate noise perturbation (Song & Ermon 2019, Section 3).

1. **The manifold hypothesis** (Figure 1). Real data concentrate on a low-dimensional set (for the
   8x8 digits, a discrete grid of 17 grey levels, with pixels that are 0 in every image), where the
   score grad_x log p_data is undefined and the score-matching objective is not bounded below. Sliced
   score matching on the raw data gives a loss that fluctuates; the same training on the data perturbed
   with N(0, 0.01^2 I) decreases smoothly. :func:`manifold` trains one image score network both ways
   (same seed, batches and projections): on the raw digits the loss runs away without bound, on the
   perturbed digits it settles above the floor that any perturbed data have.

2. **Inaccurate scores in regions of low data density** (Figure 2). Every score-matching objective is an
   expectation under p_data, E_p[1/2 ||s(x) - grad log p(x)||^2], so a learned score is fitted where the
   data are and left to chance between and around the modes, which is where Langevin dynamics starts.
   :func:`low_density` trains a score network on the paper's mixture 1/5 N((-5,-5), I) + 4/5 N((5,5), I)
   and compares ||s_theta(x) - grad log p(x)|| where p is high and where it is low.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ncsn.data.toy import paper_mixture
from ncsn.evaluation import load_real_images
from ncsn.losses import exact_sm, sliced_sm


def _progress_bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, disable=not progress)


def _train(model: torch.nn.Module, loss_of_batch: Callable[[torch.Generator], torch.Tensor], steps: int,
           lr: float, seed: int, device: torch.device, desc: str, progress: bool) -> list[float]:
    """Adam on ``loss_of_batch(generator)`` for ``steps`` steps, with one generator on ``device`` for all the
    randomness; the losses (a non-finite loss ends the run early: the curve then stops there, which the
    callers report as a divergence)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    losses: list[float] = []
    with _progress_bar(steps, desc, progress) as bar:
        for _ in range(steps):
            loss = loss_of_batch(generator)
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value):
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
            if len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{value:.4g}")
    return losses


# ----------------------------------------------------------------------------------------------------------
# 1. The manifold


@dataclass(frozen=True)
class ManifoldSettings:
    """Budget of :func:`manifold`: the network is :func:`conv_score_net` ``width`` channels wide."""

    steps: int
    batch_size: int
    width: int
    lr: float
    noise_std: float = 0.01  # the paper's N(0, 0.0001)


MANIFOLD_FULL = ManifoldSettings(steps=2000, batch_size=128, width=32, lr=1e-3)
MANIFOLD_QUICK = ManifoldSettings(steps=400, batch_size=32, width=16, lr=2e-3)


def conv_score_net(channels: int = 1, width: int = 32, depth: int = 4) -> torch.nn.Module:
    """An unconditional image score network s(x): ``depth`` 3x3 convolutions (same padding) with ELUs between.

    Small on purpose: on a CPU it trains within minutes into the regime where raw and perturbed data part
    ways (NCSN's Figure 1 used a ResNet on CIFAR-10, trained far longer)."""
    from torch import nn

    widths = [channels] + [width] * (depth - 1) + [channels]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Conv2d(a, b, 3, padding=1)] + ([nn.ELU()] if i < depth - 1 else [])
    return nn.Sequential(*layers)


def spread(losses: list[float]) -> float:
    """How much a loss curve still moves over its second half, relative to its level:

        (max - min) / |median|  over the second half of the steps.

    A curve that has settled scores well below 1; one that keeps falling (or jumping) by its own size
    scores 1 or more. A curve that became non-finite scores ``inf``.
    """
    values = np.asarray(losses, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        return math.inf
    tail = values[len(values) // 2:]
    return float((tail.max() - tail.min()) / max(abs(float(np.median(tail))), 1e-12))


def perturbed_bound(dim: int, noise_std: float) -> float:
    """The lowest value score matching can reach on data perturbed with N(0, noise_std^2 I) in ``dim``
    dimensions: J(theta) = 1/2 E||s - grad log q||^2 - 1/2 E||grad log q||^2 >= -1/2 I(q), and the Fisher
    information of X + N(0, sigma^2 I) is at most that of the noise alone, dim / sigma^2. So
    J >= -dim / (2 sigma^2); raw data, with no noise, have no such bound."""
    return -dim / (2.0 * noise_std**2)


def _curve_summary(losses: list[float], steps: int, bound: float) -> dict:
    finite = bool(losses) and all(math.isfinite(v) for v in losses) and len(losses) == steps
    tail = losses[-max(1, len(losses) // 10):]
    final = float(np.median(tail)) if finite else math.nan
    return {"losses": losses, "spread": spread(losses), "final_loss": final, "diverged": not finite,
            "below_perturbed_bound": bool(finite and final < bound)}


def manifold(settings: ManifoldSettings = MANIFOLD_FULL, seed: int = 0, device: torch.device | str = "cpu",
             progress: bool = True) -> dict:
    """Sliced score matching (variance-reduced, Song et al. 2019) of one :func:`conv_score_net` on raw
    digits and on digits + N(0, ``noise_std``^2 I); the same initial weights, batches and projections for both.

    For each loss curve: its :func:`spread` over the second half, its final value (median of the last
    10 % of the steps), whether it diverged (became non-finite) and whether it fell below
    :func:`perturbed_bound`, the floor of any perturbed data, i.e. ran away. Returns both curves and the
    verdict.
    """
    device = torch.device(device)
    data = load_real_images("digits", None, "train", image_size=8, channels=1).to(device)  # 17 grey levels
    bound = perturbed_bound(data[0].numel(), settings.noise_std)
    curves = {}
    for name, noise in (("raw", 0.0), ("perturbed", settings.noise_std)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = conv_score_net(data.shape[1], settings.width).to(device)

        def loss_of_batch(generator: torch.Generator, net=net, noise=noise) -> torch.Tensor:
            rows = torch.randint(0, data.shape[0], (settings.batch_size,), generator=generator, device=device)
            x = data[rows]
            if noise:
                x = x + noise * torch.randn(x.shape, generator=generator, device=device)
            return sliced_sm(net, x, variance_reduced=True, generator=generator)

        losses = _train(net, loss_of_batch, settings.steps, settings.lr, seed + 1, device, f"SSM on {name} digits",
                        progress)
        curves[name] = _curve_summary(losses, settings.steps, bound)
    raw, perturbed = curves["raw"], curves["perturbed"]
    ratio = raw["spread"] / max(perturbed["spread"], 1e-12)
    raw_unstable = raw["diverged"] or raw["below_perturbed_bound"] or ratio >= 2.0
    perturbed_stable = not (perturbed["diverged"] or perturbed["below_perturbed_bound"])
    reproduced = raw_unstable and perturbed_stable
    if raw["diverged"]:
        raw_text = "diverged"
    else:
        raw_text = (f"ends at {raw['final_loss']:.3g}" + (f", below the floor {bound:.3g} of any perturbed data,"
                                                          if raw["below_perturbed_bound"] else "")
                    + f" still moving by {raw['spread']:.2f} of its level over the second half")
    verdict = (f"{'reproduced' if reproduced else 'not reproduced'}: sliced score matching on raw digits {raw_text}; "
               f"on digits + N(0, {settings.noise_std:g}^2) it "
               + ("diverged" if perturbed["diverged"] else
                  f"ends at {perturbed['final_loss']:.3g}, moving by {perturbed['spread']:.2f}"))
    return {"settings": asdict(settings) | {"seed": seed, "network": f"conv_score_net(width={settings.width})",
                                            "objective": "sliced score matching, variance-reduced (SSM-VR)",
                                            "spread": spread.__doc__.split("\n\n")[1].strip()},
            "perturbed_bound": bound, "raw": raw, "perturbed": perturbed, "spread_ratio": ratio,
            "reproduced": bool(reproduced), "verdict": verdict}


def plot_manifold(result: dict, path: str | Path) -> Path:
    """The paper's Figure 1: the two loss curves side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncsn.plotting import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    noise = result["settings"]["noise_std"]
    for ax, name, title in ((axes[0], "raw", "raw digits"), (axes[1], "perturbed", f"digits + N(0, {noise:g}^2)")):
        curve = result[name]
        ax.plot(curve["losses"], lw=0.9)
        ax.axhline(result["perturbed_bound"], color="C3", ls="--", lw=0.8, label="floor of any perturbed data")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(top=max(curve["losses"][:1] + [0.0]) + 1.0)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title(f"{title}: second-half spread {curve['spread']:.2f}" + (" (diverged)" if curve["diverged"] else ""),
                     fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("sliced score matching loss")
        ax.grid(alpha=0.3)
    fig.suptitle(textwrap.fill(result["verdict"], 130), fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# 2. Regions of low data density


@dataclass(frozen=True)
class LowDensitySettings:
    """Budget of :func:`low_density`: a ScoreMLP trained with Hyvarinen's objective (exact trace)."""

    steps: int
    batch_size: int = 256
    hidden: int = 128
    n_layers: int = 3
    lr: float = 1e-3
    box: float = 8.0  # the grid covers [-box, box]^2, the paper's Figure 2
    grid: int = 101
    high_quantile: float = 0.9  # "high density": p_data in its top 10 % over the grid
    low_quantile: float = 0.5  # "low density": p_data in its bottom 50 % over the grid


LOW_DENSITY_FULL = LowDensitySettings(steps=3000)
LOW_DENSITY_QUICK = LowDensitySettings(steps=300, hidden=64, grid=41)


def grid_points(box: float, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An ``n x n`` grid on [-box, box]^2: the mesh ``(gx, gy)`` and the points ``(n*n, 2)`` (float64)."""
    lin = torch.linspace(-box, box, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    return gx, gy, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def region_errors(errors: torch.Tensor, log_p: torch.Tensor, high_quantile: float,
                  low_quantile: float) -> dict:
    """Mean of ``errors`` where ``log_p`` is at or above its ``high_quantile`` and at or below its
    ``low_quantile`` (quantiles over the given points), and the ratio low / high."""
    high_cut = torch.quantile(log_p, high_quantile)
    low_cut = torch.quantile(log_p, low_quantile)
    high = float(errors[log_p >= high_cut].mean())
    low = float(errors[log_p <= low_cut].mean())
    return {"error_high_density": high, "error_low_density": low, "ratio": low / max(high, 1e-12)}


def low_density(settings: LowDensitySettings = LOW_DENSITY_FULL, seed: int = 0, device: torch.device | str = "cpu",
                progress: bool = True) -> dict:
    """Train an unconditional :class:`~ncsn.models.mlp.ScoreMLP` on the paper's mixture with Hyvarinen's
    objective, J = E_p[tr(grad_x s(x)) + 1/2 ||s(x)||^2] (the exact trace: in 2-D as cheap as slicing),
    then measure ||s_theta(x) - grad log p(x)|| on a grid over [-box, box]^2.

    Returns the mean error where p is in its top ``1 - high_quantile`` over the grid and where it is in
    its bottom ``low_quantile``, their ratio, the grid's errors and log-densities (for the figure) and the
    verdict.
    """
    from ncsn.models.mlp import ScoreMLP, unconditional

    device = torch.device(device)
    mixture = paper_mixture()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = unconditional(ScoreMLP(dim=2, hidden=settings.hidden, n_layers=settings.n_layers)).to(device)

    def loss_of_batch(generator: torch.Generator) -> torch.Tensor:
        return exact_sm(model, mixture.sample(settings.batch_size, generator=generator).float())

    losses = _train(model, loss_of_batch, settings.steps, settings.lr, seed + 1, device,
                    "score matching on the mixture", progress)
    gx, gy, points = grid_points(settings.box, settings.grid)
    with torch.no_grad():
        learned = model(points.float().to(device)).double().cpu()
    log_p = mixture.log_prob(points)
    errors = (learned - mixture.score(points)).norm(dim=1)
    regions = region_errors(errors, log_p, settings.high_quantile, settings.low_quantile)
    reproduced = regions["ratio"] >= 3.0
    verdict = (f"{'reproduced' if reproduced else 'not reproduced'}: the learned score's error where p_data is in "
               f"its bottom {settings.low_quantile:.0%} is {regions['ratio']:.1f}x the error where it is in its top "
               f"{1 - settings.high_quantile:.0%} ({regions['error_low_density']:.2f} vs "
               f"{regions['error_high_density']:.2f})")
    return {"settings": asdict(settings) | {"seed": seed, "data": repr(mixture),
                                            "objective": "Hyvarinen score matching, exact trace"},
            "final_loss": float(np.mean(losses[-50:])), "losses": losses, **regions,
            "grid": {"log_p": log_p.reshape(gx.shape).tolist(), "error": errors.reshape(gx.shape).tolist(),
                     "learned": learned.reshape(*gx.shape, 2).tolist()},
            "reproduced": bool(reproduced), "verdict": verdict}


def plot_low_density(result: dict, path: str | Path) -> Path:
    """The paper's Figure 2: log p_data with its score, and the learned score's error with p_data's contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncsn.plotting import save_figure

    s = result["settings"]
    gx, gy, points = grid_points(s["box"], s["grid"])
    true = paper_mixture().score(points).reshape(*gx.shape, 2).numpy()
    gx, gy = gx.numpy(), gy.numpy()
    log_p = np.asarray(result["grid"]["log_p"])
    error = np.asarray(result["grid"]["error"])
    learned = np.asarray(result["grid"]["learned"])
    step = max(1, s["grid"] // 20)
    sub = (slice(None, None, step), slice(None, None, step))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    shown = np.maximum(log_p, log_p.max() - 40.0)
    image = axes[0].contourf(gx, gy, shown, levels=20, cmap="Oranges")
    fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.02, label="log p_data(x) (clipped 40 below the top)")
    axes[0].quiver(gx[sub], gy[sub], *_unit(true[sub]), angles="xy", color="k", width=0.003)
    axes[0].set_title("data: log p_data and the direction of grad log p_data", fontsize=10)
    image = axes[1].pcolormesh(gx, gy, error, cmap="viridis", shading="auto")
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.02, label="||s_theta(x) - grad log p_data(x)||")
    top = float(log_p.max())
    axes[1].contour(gx, gy, log_p, levels=[top - 8, top - 4, top - 1], colors="w", linewidths=0.8)
    axes[1].quiver(gx[sub], gy[sub], *_unit(learned[sub]), angles="xy", color="w", width=0.003, alpha=0.8)
    axes[1].set_title(f"learned score's error (white: p_data contours, s_theta direction)\nerror ratio low/high "
                      f"density {result['ratio']:.1f}x", fontsize=10)
    for ax in axes:
        ax.set_aspect("equal")
    return save_figure(fig, path)


def _unit(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.maximum(np.linalg.norm(field, axis=-1), 1e-12)
    return field[..., 0] / norm, field[..., 1] / norm
