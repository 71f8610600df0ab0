"""Sampler overhead: annealed Langevin wall time / (number of score evaluations x one evaluation).

Both are measured in one run on the same model and batch, interleaved, and the medians are
compared, so the ratio is meaningful on a shared, noisy machine. Target: at most 1.05.

    python benchmarks/sampling.py [--config configs/digits.yaml] [--batch 100] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ncsn.config import load_config
from ncsn.device import resolve_device, synchronize
from ncsn.sampling import annealed_langevin
from ncsn.train import build_score_model, make_sigmas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--levels", type=int, default=5, help="noise levels in the timed sampler run")
    parser.add_argument("--steps", type=int, default=20, help="Langevin steps per level in the timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    device = resolve_device(args.device)
    config = load_config(args.config, args.overrides + [f"model.num_classes={args.levels}"])
    torch.manual_seed(0)
    model = build_score_model(config).to(device).eval().requires_grad_(False)
    sigmas = make_sigmas(config).to(device)
    d = config["data"]
    x0 = torch.rand((args.batch, d["channels"], d["image_size"], d["image_size"]), device=device)
    sigma_vec = torch.full((args.batch,), float(sigmas[0]), device=device)
    n_evals = args.levels * args.steps

    def one_eval_loop():
        # the same number of score evaluations, with nothing but the network in the loop
        x = x0.clone()
        with torch.no_grad():
            for _ in range(n_evals):
                out = model(x, sigma_vec)
        synchronize(device)
        return out

    def sampler():
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad():
            out = annealed_langevin(model, x0.clone(), sigmas, 2e-5, args.steps, generator=gen)
        synchronize(device)
        return out

    one_eval_loop(), sampler()  # warm-up
    eval_times, sampler_times = [], []
    for _ in range(args.repeats):
        for fn, store in ((one_eval_loop, eval_times), (sampler, sampler_times)):
            start = time.perf_counter()
            fn()
            store.append(time.perf_counter() - start)
    t_evals, t_sampler = statistics.median(eval_times), statistics.median(sampler_times)
    per_eval = t_evals / n_evals
    ratio = t_sampler / (n_evals * per_eval)
    print(f"device {device} | model {config['model']['ngf']}-wide RefineNet on "
          f"{d['channels']}x{d['image_size']}x{d['image_size']} | batch {args.batch} | "
          f"{n_evals} score evaluations, median of {args.repeats}")
    print(f"one score evaluation        {per_eval * 1e3:9.3f} ms")
    print(f"annealed Langevin (total)   {t_sampler * 1e3:9.1f} ms")
    print(f"overhead ratio              {ratio:9.3f}   (target <= 1.05)")


if __name__ == "__main__":
    main()
