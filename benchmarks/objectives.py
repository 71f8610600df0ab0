"""Cost of one training step per score-matching objective as the data dimension D grows.

A training step is forward + backward + Adam on an MLP score model (D -> 128 -> 128 -> 128 -> D,
softplus) for: denoising score matching (``dsm``), sliced score matching with one projection
(``sliced``), exact score matching with the vectorised Jacobian trace (``exact``) and with the
reference loop over dimensions (``exact-loop``). For each D the objectives are timed in one run,
interleaved over several rounds, and the median step time is reported with its ratio to DSM.
Sliced score matching (Song et al. 2019) costs about the same at every D; the exact trace needs
D backward passes, so its cost grows with D.

    python benchmarks/objectives.py [--quick] [--dims 2,16,64,256,784] [--batch 128] [--threads 1] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ncsn.device import resolve_device, synchronize
from ncsn.losses import dsm, exact_sm, exact_sm_loop, sliced_sm

OBJECTIVES = {
    "dsm": lambda model, x, gen: dsm(model, x, 0.1, generator=gen),
    "sliced": lambda model, x, gen: sliced_sm(model, x, n_projections=1, generator=gen),
    "exact": lambda model, x, gen: exact_sm(model, x),
    "exact-loop": lambda model, x, gen: exact_sm_loop(model, x),
}


SLOW = 1.0  # seconds


def score_mlp(dim: int, width: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, width), nn.Softplus(), nn.Linear(width, width), nn.Softplus(),
                         nn.Linear(width, width), nn.Softplus(), nn.Linear(width, dim))


def make_step(name: str, dim: int, batch: int, device: torch.device):
    """A closure running one training step of objective ``name``, returning its wall time."""
    torch.manual_seed(0)
    model = score_mlp(dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch, dim), generator=gen, device=device)
    objective = OBJECTIVES[name]

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        loss = objective(model, x, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    return step


def steps_per_round(first_step: float, budget: float = 0.3) -> int:
    """Timed steps per round: enough to fill about ``budget`` seconds, between 1 and 10."""
    return max(1, min(10, int(budget / max(first_step, 1e-6))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default=None, help="comma list of data dimensions (default 2,16,64,256,784)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per D (default 3, 2 with --quick)")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: stable timings on a shared machine; 0 = torch's choice)")
    parser.add_argument("--quick", action="store_true", help="fewer dimensions, rounds and steps")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    dims = [int(d) for d in (args.dims or ("2,64,256" if args.quick else "2,16,64,256,784")).split(",")]
    names = [n.strip() for n in args.objectives.split(",")]
    unknown = sorted(set(names) - set(OBJECTIVES))
    if unknown:
        parser.error(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    rounds = args.rounds or (2 if args.quick else 3)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads | MLP D-128-128-128-D "
          f"softplus | batch {args.batch} | median ms per training step (forward + backward + Adam) over "
          f"{rounds} interleaved rounds after a warm-up step (steps over {SLOW:g} s: 3 samples, the first included)")
    header = f"{'D':>5s} " + " ".join(f"{n:>11s}" for n in names) + "  " + " ".join(
        f"{n + '/dsm':>15s}" for n in names if n != "dsm")
    print(header)
    began = time.perf_counter()
    for dim in dims:
        steps = {name: make_step(name, dim, args.batch, device) for name in names}
        first = {name: step() for name, step in steps.items()}  # warm-up
        # a multi-second step is dominated by arithmetic, not first-call costs: its first run counts,
        # and it is repeated in fewer rounds (3 samples in all) to keep the whole run short
        times = {name: [first[name]] if first[name] > SLOW else [] for name in names}
        for _ in range(rounds):
            for name, step in steps.items():
                if first[name] > SLOW and len(times[name]) >= 3:
                    continue
                times[name].extend(step() for _ in range(steps_per_round(first[name])))
        median = {name: statistics.median(t) for name, t in times.items()}
        base = median.get("dsm")
        ratios = " ".join(f"{median[n] / base:15.1f}" for n in names if n != "dsm") if base else ""
        print(f"{dim:5d} " + " ".join(f"{median[n] * 1e3:11.2f}" for n in names) + "  " + ratios, flush=True)
    print(f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
