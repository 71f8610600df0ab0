"""The 2-D experiment: learn a score, then sample with Langevin and annealed Langevin dynamics.

Reproduces, with a *learned* score, the comparison of Song & Ermon (2019), "Generative Modeling
by Estimating Gradients of the Data Distribution", Section 3.2 / Figure 3: on the mixture
p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I), Langevin dynamics from a uniform start cannot recover
the modes' weights (both basins fill about equally), annealed Langevin dynamics (Algorithm 1) can.

Training (one noise-conditional network s(x, sigma) for every objective; L levels sigma_1 > ... > sigma_L):

* ``ncsn``: the paper's objective, Eq. (6)-(7): one level sigma_i ~ U{1..L} per sample and
  1/2 ||sigma_i s(x + sigma_i z, sigma_i) + z||^2 (i.e. lambda(sigma) = sigma^2).
* ``ssm`` (sliced, variance-reduced; Song et al. 2019), ``exact`` (Hyvarinen 2005) and ``dsm``
  (single-scale denoising, Vincent 2011) are objectives for the score of the data they are given.
  They are applied *per level*: each sample gets a level sigma_i ~ U{1..L}, the data are perturbed,
  x~ = x + sigma_i z, and the objective is applied to x~ for the network conditioned on sigma_i, which
  therefore estimates the score of q_{sigma_i} = p * N(0, sigma_i^2 I), as the sampler needs. Each term
  is weighted by lambda(sigma_i) = sigma_i^2 like the NCSN objective. The weighting is exact and free:
  in the rescaled coordinates u = x~ / sigma_i the score is s_u(u) = sigma_i s(sigma_i u, sigma_i), and
  every one of these objectives J satisfies J_u = sigma_i^2 J_x, so the objectives are applied to u with
  s_u. ``dsm`` adds its own small noise on top of x~, of std ``DSM_RELATIVE_SIGMA`` sigma_i, and so
  learns the score of q at sigma_i sqrt(1 + 0.1^2) ~ 1.005 sigma_i: single-scale DSM at a small
  (relative) noise level, with the high variance that entails, in contrast to ``ncsn``.

``energy=True`` trains an :class:`~ncsn.models.mlp.EnergyMLP` E(x, sigma) through
:class:`~ncsn.energy.EnergyScore` (s = -grad_x E) with the same objectives.

Sampling, both from the same uniform draw on the box [-b, b]^2 that covers the data:

* annealed Langevin (Algorithm 1): alpha_i = step_lr sigma_i^2 / sigma_L^2, T steps per level of
  x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z (no final denoising step, as in the paper);
* Langevin: L T steps of the same update with the score at sigma_L and alpha_L = step_lr, the
  step size of annealed Langevin's final level.

Metrics (:mod:`ncsn.metrics.toy`) compare each sample set with fresh data from p (not p * N(0,
sigma_L^2 I)); a third row, ``data``, scores a fresh exact sample the same way as a reference.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ncsn.atomic import ensure_folder, write_text
from ncsn.data.toy import GaussianMixture, get_toy
from ncsn.device import resolve_device, single_cpu_thread
from ncsn.energy import EnergyScore
from ncsn.errors import DivergenceError, UserError
from ncsn.losses import dsm, exact_sm, ncsn_loss, sliced_sm
from ncsn.metrics.toy import avg_log_likelihood, mmd, mode_weights, sliced_wasserstein
from ncsn.models.mlp import EnergyMLP, ScoreMLP
from ncsn.sampling import annealed_langevin, langevin
from ncsn.sigmas import geometric

OBJECTIVES = ("ncsn", "dsm", "ssm", "exact")
DSM_RELATIVE_SIGMA = 0.1
DEFAULT_STEPS = 2000
MMD_MAX_SAMPLES = 2000  # MMD costs O(n^2) exponentials; it is computed on the first 2000 of each set


@dataclass(frozen=True)
class ToySettings:
    """Noise levels, sampler and initial box for one toy distribution."""

    sigma_begin: float
    sigma_end: float
    n_levels: int
    step_lr: float  # annealed Langevin's epsilon: alpha_i = step_lr sigma_i^2 / sigma_L^2
    n_steps_each: int  # T
    box: float  # samplers start uniform on [-box, box]^2

    def sigmas(self) -> torch.Tensor:
        """The L geometric noise levels from ``sigma_begin`` down to ``sigma_end``."""
        return geometric(self.sigma_begin, self.sigma_end, self.n_levels)


# The mixture uses the paper's settings (Figure 3: sigma 20 -> 1, L = 10, T = 100, epsilon = 0.1).
# The others lie within [-4, 4]^2: sigma_1 = 10 is about their largest pairwise distance (NCSNv2,
# Technique 1), sigma_L = 0.05 is below their finest structure, and step_lr = 0.1 sigma_L^2 keeps
# alpha_i / sigma_i^2 = 0.1 at every level, as for the mixture.
PAPER_MIXTURE_SETTINGS = ToySettings(20.0, 1.0, 10, 0.1, 100, 8.0)
UNIT_BOX_SETTINGS = ToySettings(10.0, 0.05, 10, 0.1 * 0.05**2, 100, 5.0)


def toy_settings(dist: str) -> ToySettings:
    """The :class:`ToySettings` for the toy called ``dist`` (a UserError for an unknown name)."""
    get_toy(dist)
    return PAPER_MIXTURE_SETTINGS if dist == "mixture" else UNIT_BOX_SETTINGS


def check_objective(objective: str) -> str:
    """``objective`` if it is one of :data:`OBJECTIVES`, else a UserError."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    return objective


def toy_loss(objective: str, score_fn, x: torch.Tensor, sigmas: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The training loss of ``objective`` for the noise-conditional ``score_fn(x, sigma)`` on a batch ``x``.

    ``ncsn`` is :func:`ncsn.losses.ncsn_loss`; the others are applied per level with lambda = sigma^2
    through the rescaled score u -> sigma s(sigma u, sigma) (see the module docstring).
    """
    check_objective(objective)
    sigmas = sigmas.to(dtype=x.dtype, device=x.device)
    if objective == "ncsn":
        return ncsn_loss(score_fn, x, sigmas, generator=generator)
    levels = torch.randint(0, sigmas.shape[0], (x.shape[0],), generator=generator, device=x.device)
    sigma = sigmas[levels]
    sigma_b = sigma.unsqueeze(1)
    u = x / sigma_b + torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    def rescaled_score(u_in: torch.Tensor) -> torch.Tensor:
        return sigma_b * score_fn(sigma_b * u_in, sigma)

    if objective == "exact":
        return exact_sm(rescaled_score, u)
    if objective == "ssm":
        return sliced_sm(rescaled_score, u, variance_reduced=True, generator=generator)
    return dsm(rescaled_score, u, DSM_RELATIVE_SIGMA, generator=generator)


def build_model(energy: bool = False, hidden: int = 64, n_layers: int = 3) -> nn.Module:
    """A noise-conditional score model for 2-D data: a :class:`ScoreMLP` (output scaled by 1/sigma),
    or with ``energy`` an :class:`EnergyMLP` wrapped in :class:`EnergyScore`."""
    if energy:
        return EnergyScore(EnergyMLP(dim=2, hidden=hidden, n_layers=n_layers))
    return ScoreMLP(dim=2, hidden=hidden, n_layers=n_layers, scale_by_sigma=True)


def train_score(model: nn.Module, dist, objective: str, sigmas: torch.Tensor, steps: int,
                generator: torch.Generator, batch_size: int = 512, lr: float = 5e-3,
                progress: bool = True) -> list[float]:
    """Adam on ``toy_loss`` with a fresh batch of ``batch_size`` draws from ``dist`` at every step; the
    learning rate decays by cosine to 0. Returns the losses. A tqdm bar shows the running loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"training ({objective})", unit="step", dynamic_ncols=True)
    try:
        for step in range(steps):
            x = dist.sample(batch_size, generator=generator)
            loss = toy_loss(objective, model, x, sigmas, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
            if bar is not None:
                bar.update(1)
                if step % 25 == 0 or step == steps - 1:
                    bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
    finally:
        if bar is not None:
            bar.close()
    values = torch.stack(losses).tolist() if losses else []
    if values and not all(math.isfinite(v) for v in values):
        first = next(i for i, v in enumerate(values) if not math.isfinite(v))
        raise DivergenceError(f"the {objective} loss became non-finite at step {first}; try fewer steps or --seed")
    return values


def sample_both(score_fn, settings: ToySettings, n: int, generator: torch.Generator,
                progress: bool = False) -> dict[str, torch.Tensor]:
    """Langevin and annealed Langevin samples (``n`` each) from one uniform draw on the box (see module docstring)."""
    sigmas = settings.sigmas()
    device = generator.device
    x0 = (torch.rand((n, 2), generator=generator, device=device) * 2.0 - 1.0) * settings.box
    annealed = annealed_langevin(score_fn, x0, sigmas, settings.step_lr, settings.n_steps_each,
                                 generator=generator, progress=progress)
    plain = langevin(score_fn, x0, settings.step_lr / 2.0, settings.n_levels * settings.n_steps_each,
                     generator=generator, sigma=float(sigmas[-1]))
    return {"langevin": plain, "annealed_langevin": annealed}


def sample_metrics(samples: torch.Tensor, dist, reference: torch.Tensor,
                   generator: torch.Generator | None = None) -> dict:
    """Quality of ``samples`` against the fresh data ``reference``: MMD (first ``MMD_MAX_SAMPLES`` of each),
    sliced 2-Wasserstein, and for Gaussian mixtures the mode weights and average log-likelihood."""
    samples = samples.detach().cpu().double()
    reference = reference.detach().cpu().double()
    finite = torch.isfinite(samples).all(dim=1)
    kept = samples[finite]
    out = {"n_nonfinite": int((~finite).sum())}
    if kept.shape[0] < 2:
        return {**out, "mmd": None, "sliced_wasserstein": None}
    if isinstance(dist, GaussianMixture):
        out["mode_weights"] = mode_weights(kept, dist.means).tolist()
    out["mmd"] = mmd(kept[:MMD_MAX_SAMPLES], reference[:MMD_MAX_SAMPLES])
    out["sliced_wasserstein"] = sliced_wasserstein(kept, reference, generator=generator)
    if isinstance(dist, GaussianMixture):
        out["avg_log_likelihood"] = avg_log_likelihood(kept, dist)
    return out


def _score_grid(score_fn, settings: ToySettings, sigma: float, device, n: int = 23):
    lin = torch.linspace(-settings.box, settings.box, n)
    gx, gy = torch.meshgrid(lin, lin, indexing="xy")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    with torch.no_grad():
        s = score_fn(points.to(device), torch.full((points.shape[0],), sigma, device=device)).cpu()
    return points, s


def plot_toy(path, data: torch.Tensor, samples: dict[str, torch.Tensor], score_fn, dist, settings: ToySettings,
             metrics: dict, device, title: str = "") -> Path:
    """Four panels (NCSN Figure 3 plus the learned field): data, the learned score at sigma_L (arrows of
    unit length coloured by log10 |s|, over the top 8 nats of the true log density of p * N(0, sigma_L^2 I)
    for mixtures, in grey), Langevin samples, annealed Langevin samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    box = settings.box
    sigma_l = float(settings.sigmas()[-1])
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), dpi=110)
    points, s = _score_grid(score_fn, settings, sigma_l, device)
    norm = s.norm(dim=1).clamp_min(1e-12)
    if isinstance(dist, GaussianMixture):
        lin = torch.linspace(-box, box, 200)
        gx, gy = torch.meshgrid(lin, lin, indexing="xy")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1).double()
        logp = dist.log_prob(grid, sigma_l).reshape(200, 200)
        top = float(logp.max())
        axes[1].contourf(gx, gy, logp.clamp_min(top - 8.0), levels=torch.linspace(top - 8.0, top, 9).tolist(),
                         cmap="Greys", alpha=0.4)
    quiver = axes[1].quiver(points[:, 0], points[:, 1], s[:, 0] / norm, s[:, 1] / norm, norm.log10(),
                            cmap="viridis", angles="xy", scale_units="xy", scale=1.2 / (2 * box / 22), width=0.004)
    fig.colorbar(quiver, ax=axes[1], fraction=0.046, pad=0.02, label="log10 |s(x, sigma_L)|")
    panels = [(axes[0], data, "data", None),
              (axes[2], samples["langevin"], f"Langevin ({settings.n_levels * settings.n_steps_each} steps at "
                                             f"sigma_L={sigma_l:g})", metrics.get("langevin")),
              (axes[3], samples["annealed_langevin"], f"annealed Langevin ({settings.n_levels} levels x "
                                                      f"{settings.n_steps_each})", metrics.get("annealed_langevin"))]
    for ax, pts, name, m in panels:
        pts = pts.detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.35, color="C0", rasterized=True)
        if m is not None and "mode_weights" in m:
            w = m["mode_weights"]
            name += ("\nmode weights " + " : ".join(f"{v:.2f}" for v in w) if len(w) <= 4
                     else f"\n{len(w)} mode weights from {min(w):.3f} to {max(w):.3f}")
        ax.set_title(name, fontsize=10)
    axes[1].set_title(f"learned score at sigma_L={sigma_l:g}", fontsize=10)
    for ax in axes:
        ax.set_xlim(-box, box)
        ax.set_ylim(-box, box)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=11)
    from ncsn.plotting import save_figure

    return save_figure(fig, path)


def run_toy(out, dist: str = "mixture", objective: str = "ncsn", steps: int = DEFAULT_STEPS, seed: int = 0,
            device: str = "auto", n_samples: int = 5000, energy: bool = False, batch_size: int = 512,
            lr: float = 5e-3, hidden: int = 64, n_layers: int = 3, progress: bool = True) -> dict:
    """Train on the toy ``dist`` with ``objective``, sample with Langevin and annealed Langevin dynamics,
    write ``out/toy.png`` and ``out/metrics.json``; returns the JSON's content."""
    toy_settings(dist)  # unknown names fail before any work
    check_objective(objective)
    for name, value, low in (("steps", steps, 1), ("n_samples", n_samples, 2), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
    dev = resolve_device(device)
    with single_cpu_thread(dev):
        return _run_toy(Path(out), dist, objective, steps, seed, dev, n_samples, energy, batch_size, lr, hidden,
                        n_layers, progress)


def _run_toy(out: Path, dist: str, objective: str, steps: int, seed: int, dev: torch.device, n_samples: int,
             energy: bool, batch_size: int, lr: float, hidden: int, n_layers: int, progress: bool) -> dict:
    settings = toy_settings(dist)
    toy = get_toy(dist)
    sigmas = settings.sigmas().to(dev)
    ensure_folder(out)  # before the work: an output that cannot be written fails at once

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(energy, hidden, n_layers).to(dev)
    train_gen = torch.Generator(device=dev).manual_seed(seed)
    start = time.perf_counter()
    losses = train_score(model, toy, objective, sigmas, steps, train_gen, batch_size, lr, progress)
    train_seconds = time.perf_counter() - start
    model.eval()

    sample_gen = torch.Generator(device=dev).manual_seed(seed + 1)
    start = time.perf_counter()
    samples = sample_both(model, settings, n_samples, sample_gen, progress=progress)
    sample_seconds = time.perf_counter() - start

    data_gen = torch.Generator().manual_seed(seed + 2)
    reference = toy.sample(n_samples, generator=data_gen)
    fresh = toy.sample(n_samples, generator=data_gen)
    metric_gen = torch.Generator().manual_seed(seed + 3)
    metrics = {name: sample_metrics(x, toy, reference, generator=metric_gen) for name, x in samples.items()}
    metrics["data"] = sample_metrics(fresh, toy, reference, generator=metric_gen)

    sig = sigmas.cpu().tolist()
    result = {
        "settings": {
            "dist": dist, "objective": objective, "energy": energy, "steps": steps, "seed": seed,
            "device": str(dev), "n_samples": n_samples, "batch_size": batch_size, "lr": lr,
            "model": f"{'EnergyMLP via EnergyScore' if energy else 'ScoreMLP (scale_by_sigma)'}, "
                     f"hidden={hidden}, n_layers={n_layers}",
            "training": _training_note(objective),
            "sigmas": sig,
            **{f"toy_{k}": v for k, v in asdict(settings).items()},
            "annealed_langevin": {"step_lr": settings.step_lr, "n_steps_each": settings.n_steps_each,
                                  "step_sizes": [settings.step_lr * s * s / sig[-1] ** 2 for s in sig],
                                  "denoise": False},
            "langevin": {"sigma": sig[-1], "step_size": settings.step_lr,
                         "n_steps": settings.n_levels * settings.n_steps_each,
                         "update": "x <- x + step_size/2 s(x, sigma) + sqrt(step_size) z"},
            "init": f"uniform on [-{settings.box:g}, {settings.box:g}]^2 (the same draw for both samplers)",
            "metrics_against": f"{n_samples} fresh samples of {dist} (mmd on the first "
                               f"{min(n_samples, MMD_MAX_SAMPLES)} of each set)",
        },
        "train_seconds": train_seconds,
        "sample_seconds": sample_seconds,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        **metrics,
    }
    write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    plot_toy(out / "toy.png", reference, samples, model, toy, settings, metrics, dev,
             title=f"{dist}: {objective}{' (energy)' if energy else ''}, {steps} steps, seed {seed}")
    return result


def _training_note(objective: str) -> str:
    if objective == "ncsn":
        return "ncsn_loss over the sigmas (one level per sample, lambda = sigma^2)"
    name = {"exact": "exact (Hyvarinen) score matching", "ssm": "sliced score matching (variance reduced)",
            "dsm": f"denoising score matching at {DSM_RELATIVE_SIGMA:g} sigma_i"}[objective]
    return (f"{name} applied per level: one level sigma_i per sample, data perturbed by N(0, sigma_i^2 I), "
            f"network conditioned on sigma_i, lambda = sigma_i^2")


def summary_table(result: dict) -> str:
    """A few lines comparing the data, Langevin and annealed Langevin rows of ``result``."""
    rows = [("data", result["data"]), ("Langevin", result["langevin"]),
            ("annealed Langevin", result["annealed_langevin"])]
    has_modes = "mode_weights" in result["data"]
    header = f"{'':<18} {'MMD^2':>9} {'SW_2':>7}"
    if has_modes:
        header += f" {'avg log p':>10}  mode weights"
    lines = [header]

    def fmt(value, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    for name, m in rows:
        line = f"{name:<18} {fmt(m['mmd'], '9.4f'):>9} {fmt(m['sliced_wasserstein'], '7.3f'):>7}"
        if has_modes:
            weights = " : ".join(f"{w:.3f}" for w in m.get("mode_weights", []))
            line += f" {fmt(m.get('avg_log_likelihood'), '10.3f'):>10}  {weights or 'n/a'}"
        lines.append(line)
    return "\n".join(lines)
