"""Where one training step of a config's network spends its time (torch.profiler, CPU).

    python benchmarks/profile_step.py [--config configs/demo.yaml] [--steps 20] [--threads 1] [--rows 15]

Runs the real objective of the config (``ncsn.train.objective_loss``) with Adam on a random
batch of the config's size and prints the operators by self time. Shares, not absolute times,
are what carries over between machines.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from ncsn.build import build_score_model
    from ncsn.config import load_config
    from ncsn.train import objective_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config(args.config)
    model = build_score_model(config).train()
    objective = config["training"]["objective"]
    if objective == "auto":
        objective = "ncsn" if config["model"]["process"] == "ve" else "ddpm"
    optimizer = torch.optim.Adam(model.parameters(), lr=config["optim"]["lr"])
    d, batch = config["data"], config["training"]["batch_size"]
    x = torch.rand(batch, d["channels"], d["image_size"], d["image_size"]) * 2 - 1
    n_levels = len(model.level_stds)

    def step():
        levels = torch.randint(0, n_levels, (batch,))
        loss = objective_loss(model, model, objective, x, levels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"{args.config}: {args.steps} steps of batch {batch}, {args.threads} thread(s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
