"""Sample quality against network evaluations (NFE) for every sampler, on one model, in one run.

Two cases, each written as a Markdown table, a JSON file and a plot under --out:

* toy: the NCSN paper's mixture 1/5 N((-5,-5), I) + 4/5 N((5,5), I) with its exact smoothed score
  (so only the sampler errs): the weight of the 1/5 mode and the MMD to fresh data.
* digits: a trained model (default: the `make demo` run, ``demo/``), 1,000 samples per row scored
  against the training digits with the shipped digits classifier's features: FID, precision,
  recall; the held-out digits (all 297) as the floor. Seconds per row are wall time on this
  machine, for comparing rows of one run only.

Every sampler runs at several budgets: annealed Langevin (NCSN's Algorithm 1, 10 levels x T
steps), consistent annealing on geometric levels (with its default eta this is also the
ancestral predictor), predictor-corrector (reverse diffusion + one Langevin corrector step), and
the probability-flow ODE with Euler's and Heun's method on Karras levels; DDPM's own sampler for
VP models. A network that knows only its trained
levels (the RefineNet) gets the samplers and budgets those levels allow.

    python benchmarks/samplers.py [--run demo] [--n 1000] [--budgets 10,20,50,100,200] [--toy-only]
        [--digits-only] [--out benchmarks/results] [--device auto] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

def digits_variants(nfe: int, continuous: bool, levels: int) -> dict[str, list[str]]:
    """Each fast sampler's settings spending about ``nfe`` network evaluations per sample."""
    if continuous:
        return {
            "consistent annealing": ["method=consistent_annealing", "sigmas=geometric", f"n_levels={nfe}"],
            "predictor-corrector": ["method=predictor_corrector", "sigmas=geometric", f"n_levels={max(2, nfe // 2)}"],
            "ODE Euler": ["method=pf_ode", "sigmas=karras", f"n_levels={nfe}", "solver=euler"],
            "ODE Heun": ["method=pf_ode", "sigmas=karras", f"n_levels={(nfe + 1) // 2}", "solver=heun"],
        }
    # only the trained levels: a bigger budget goes into corrector steps; the ODE and CAS have one cost each
    per_level = nfe // levels - 1
    out = {"predictor-corrector": ["method=predictor_corrector", f"n_corrector={per_level}"] if per_level >= 1
           else ["method=predictor_corrector", "corrector=none"]}
    if levels <= nfe < 2 * levels:
        out["ODE Heun"] = ["method=pf_ode", "solver=heun"]
        out["consistent annealing"] = ["method=consistent_annealing"]
    return out


def run_digits(args, device) -> dict:
    from ncsn import evaluation as ev
    from ncsn.build import load_score_model
    from ncsn.commands.sample import apply_sampling_overrides
    from ncsn.generate import generate, is_continuous, sampler_settings
    from ncsn.metrics.features import get_extractor

    model, config, info = load_score_model(args.run, device=device)
    continuous = is_continuous(model)
    extractor = get_extractor("digits", device=device)
    real = ev.real_features(extractor, "digits", None, "train", 8, 1, progress=False)
    held_out = ev.load_real_images("digits", None, "test", 8, 1)
    floor = ev.compute_metrics(["fid", "pr"], extractor.extract(held_out, progress=False), real)
    vp = model.process.name == "vp"
    # annealed Langevin's levels: NCSN's 10 (or the trained ones); on VP, 100 timesteps as in `ncsn compare`
    levels = 100 if vp else (10 if continuous else model.process.num_levels)
    rows = []

    def measure(label: str, overrides: list[str]) -> None:
        cfg = apply_sampling_overrides(config, [f"sampling.{o}" for o in overrides])
        began = time.perf_counter()
        images = generate(model, cfg, args.n, seed=args.seed, progress=False, device=device)
        seconds = time.perf_counter() - began
        metrics = ev.compute_metrics(["fid", "pr"], extractor.extract(images, progress=False), real)
        settings = sampler_settings(cfg)
        rows.append({"sampler": label, "nfe": settings["nfe"], "seconds": seconds, "settings": settings,
                     **{k: metrics[k] for k in ("fid", "precision", "recall")}})
        print(f"  {label:22s} NFE {settings['nfe']:5d}  FID {metrics['fid']:7.2f}  precision "
              f"{metrics['precision']:.2f}  recall {metrics['recall']:.2f}  ({seconds:.0f} s)", flush=True)

    print(f"digits: {info['checkpoint']} (step {info['step']}), {args.n} samples per row, "
          f"{'continuous' if continuous else 'trained-levels-only'} network")
    reference = ["method=annealed_langevin", f"n_levels={levels}", "step_lr=2e-5"]
    for nfe in args.langevin_budgets:
        if nfe >= levels:
            measure("annealed Langevin", reference + [f"n_steps_each={nfe // levels}"])
    if vp:
        measure("DDPM ancestral", ["method=ddpm"])
    for nfe in args.budgets:
        for label, overrides in digits_variants(nfe, continuous, model.process.num_levels).items():
            measure(label, overrides)
    return {"checkpoint": info["checkpoint"], "step": info["step"], "n": args.n, "seed": args.seed,
            "floor": {"label": f"real held-out digits ({len(held_out)})", **{k: floor[k] for k in
                                                                             ("fid", "precision", "recall")}},
            "rows": rows}


def run_toy(args) -> dict:
    from ncsn.data.toy import GaussianMixture, paper_mixture
    from ncsn.metrics.toy import mmd, mode_weights
    from ncsn.sampling import annealed_langevin, consistent_annealing, pf_ode, predictor_corrector
    from ncsn.sigmas import geometric, karras, step_size_for

    mix = paper_mixture()
    mix = GaussianMixture(mix.means.double(), mix.stds.double(), mix.weights.double())
    sigma_max, sigma_min, n = 50.0, 0.01, 4000
    data = mix.sample(n, generator=torch.Generator().manual_seed(1))
    start = sigma_max * torch.randn(n, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
    rows = []

    def record(label: str, nfe: int, x: torch.Tensor) -> None:
        w = float(mode_weights(x, mix.means)[0])
        rows.append({"sampler": label, "nfe": nfe, "weight_of_small_mode": w, "mmd": mmd(x, data)})

    gen = lambda: torch.Generator().manual_seed(args.seed + 1)  # noqa: E731
    for nfe in args.langevin_budgets:
        sigmas = geometric(sigma_max, sigma_min, 10, dtype=torch.float64)
        steps = max(1, nfe // 10)
        lr = step_size_for(sigma_min, float(sigmas[0] / sigmas[1]), steps)
        record("annealed Langevin", 10 * steps + 1,
               annealed_langevin(mix.score, start, sigmas, lr, steps, denoise=True, generator=gen()))
    for nfe in args.budgets:
        geo = lambda k: geometric(sigma_max, sigma_min, k, dtype=torch.float64)  # noqa: E731
        kar = lambda k: karras(sigma_min, sigma_max, k, dtype=torch.float64)  # noqa: E731
        record("consistent annealing", nfe, consistent_annealing(mix.score, start, geo(nfe), generator=gen()))
        half = max(2, nfe // 2)
        record("predictor-corrector", 2 * half, predictor_corrector(mix.score, start, geo(half), generator=gen()))
        record("ODE Euler", nfe, pf_ode(mix.score, start, kar(nfe), solver="euler"))
        heun = (nfe + 1) // 2
        record("ODE Heun", 2 * heun - 1, pf_ode(mix.score, start, kar(heun), solver="heun"))
    floor = mmd(mix.sample(n, generator=torch.Generator().manual_seed(2)), data)
    for r in rows:
        print(f"  {r['sampler']:22s} NFE {r['nfe']:5d}  weight of the 1/5 mode {r['weight_of_small_mode']:.3f}  "
              f"MMD {r['mmd']:.4f}")
    return {"n": n, "sigma_max": sigma_max, "sigma_min": sigma_min, "floor_mmd": floor, "rows": rows}


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table with one row per (sampler, NFE), in the order given."""
    head = "| sampler | NFE | " + " | ".join(title for _, title, _ in columns) + " |"
    lines = [head, "|" + " --- |" * (2 + len(columns))]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['nfe']} | " + " | ".join(fmt.format(r[key]) for key, _, fmt in columns)
                     + " |")
    return "\n".join(lines)


def plot(path: Path, panels: list[tuple[str, list[dict], str, float | None]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncsn.plotting import save_figure

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), dpi=110)
    for ax, (title, rows, key, floor) in zip([axes] if len(panels) == 1 else axes, panels):
        for label in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r["nfe"], r[key]) for r in rows if r["sampler"] == label)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label, ms=4)
        if floor is not None:
            ax.axhline(floor, color="k", ls="--", lw=1, label="floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations per sample (NFE)")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    from ncsn.device import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="demo", help="run directory or checkpoint of the digits model (default: demo)")
    parser.add_argument("--n", type=int, default=1000, help="digits samples per row (default 1000)")
    parser.add_argument("--budgets", default="10,20,50,100,200", help="NFE budgets of the fast samplers")
    parser.add_argument("--langevin-budgets", default="100,200,500,1000", help="NFE budgets of annealed Langevin")
    parser.add_argument("--toy-only", action="store_true")
    parser.add_argument("--digits-only", action="store_true")
    parser.add_argument("--out", default="benchmarks/results", help="where samplers_*.md/json/png go")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.langevin_budgets = [int(b) for b in args.langevin_budgets.split(",") if b.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    if not args.digits_only:
        print("toy: the paper's mixture, exact scores, 4,000 samples from N(0, 50^2 I)")
        toy = run_toy(args)
        (out / "samplers_toy.json").write_text(json.dumps(toy, indent=2) + "\n")
        (out / "samplers_toy.md").write_text(table(toy["rows"], [("weight_of_small_mode", "weight of the 1/5 mode",
                                                                  "{:.3f}"), ("mmd", "MMD", "{:.4f}")]) + "\n")
        plot(out / "samplers_toy.png", [("toy mixture: MMD to fresh data", toy["rows"], "mmd", toy["floor_mmd"])])
    if not args.toy_only:
        digits = run_digits(args, device)
        (out / "samplers_digits.json").write_text(json.dumps(digits, indent=2) + "\n")
        md = table(digits["rows"], [("fid", "FID", "{:.2f}"), ("precision", "precision", "{:.2f}"),
                                    ("recall", "recall", "{:.2f}"), ("seconds", "seconds", "{:.0f}")])
        f = digits["floor"]
        md += f"\n| {f['label']} | | {f['fid']:.2f} | {f['precision']:.2f} | {f['recall']:.2f} | |\n"
        (out / "samplers_digits.md").write_text(md)
        plot(out / "samplers_digits.png", [("digits: FID against the training digits", digits["rows"], "fid",
                                            f["fid"])])
        best = min((r for r in digits["rows"] if r["nfe"] <= 100), key=lambda r: r["fid"])
        target = [r for r in digits["rows"] if r["sampler"] == "annealed Langevin" and r["nfe"] >= 1000]
        if target:
            print(f"goal: at most 100 NFE reaching annealed Langevin's FID at {target[0]['nfe']} NFE "
                  f"({target[0]['fid']:.2f}): best {best['sampler']} at {best['nfe']} NFE, FID {best['fid']:.2f} "
                  f"({'reached' if best['fid'] <= target[0]['fid'] else 'not reached'})")
    print(f"wrote {out}/samplers_*.md, .json, .png")


if __name__ == "__main__":
    main()
