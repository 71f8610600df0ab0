"""Digits RefineNet vs digits U-Net: parameters, training-step and sampler-step times, side by side.

Builds the two 8x8 score networks -- NCSN's RefineNet (ngf 16, 10 geometric noise levels
5 -> 0.01, scaled by 1/sigma) and the U-Net after Ho et al. (2020) with the ``digits``
preset -- and times, interleaved in one run (median over ``--steps`` after warm-up):

* a training step: forward and backward of the denoising score-matching loss
  ``0.5 || sigma s + z ||^2`` with ``s = net(x + sigma z, sigma)`` for the RefineNet and
  ``s = -unet(x + sigma z, sigma) / sigma`` for the U-Net (a noise predictor), per-sample
  sigma drawn from the 10 levels, plus an Adam step, at batch ``--batch``;
* a sampler step: one no-grad forward at batch 500 (one Langevin step of ``ncsn sample``).

Absolute times depend on the machine and its load; the result is the U-Net / RefineNet
ratios, which interleaving keeps comparable within one run.

    python benchmarks/architectures.py [--threads 1] [--batch 128] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from ncsn.device import resolve_device, synchronize
from ncsn.models.refinenet import RefineNet
from ncsn.models.unet import UNET_PRESETS, UNet

SAMPLER_BATCH = 500


def build(device: torch.device, sigmas: torch.Tensor) -> dict:
    """The two networks, each with its score function ``s(x, sigma)`` and an Adam optimiser."""
    torch.manual_seed(0)
    refinenet = RefineNet(channels=1, ngf=16, sigmas=sigmas, scale_by_sigma=True).to(device)
    torch.manual_seed(0)
    unet = UNet(1, **UNET_PRESETS["digits"]).to(device)
    models = {
        "RefineNet": (refinenet, lambda x, sigma: refinenet(x, sigma)),
        "U-Net": (unet, lambda x, sigma: -unet(x, sigma) / sigma[:, None, None, None]),
    }
    return {name: dict(net=net, score=score, opt=torch.optim.Adam(net.parameters(), lr=1e-4))
            for name, (net, score) in models.items()}


def train_step(model: dict, x: torch.Tensor, sigmas: torch.Tensor) -> None:
    net, score, opt = model["net"], model["score"], model["opt"]
    net.train()
    sigma = sigmas[torch.randint(len(sigmas), (x.shape[0],), device=x.device)]
    z = torch.randn_like(x)
    s = sigma[:, None, None, None]
    loss = 0.5 * (s * score(x + s * z, sigma) + z).square().sum(dim=(1, 2, 3)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sampler_step(model: dict, x: torch.Tensor, sigma: torch.Tensor) -> None:
    model["net"].eval()
    with torch.no_grad():
        model["score"](x, sigma)


def timed(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    parser.add_argument("--batch", type=int, default=128, help="training batch size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and kind (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    sigmas = torch.logspace(math.log10(5), -2, 10)
    models = build(device, sigmas)
    sigmas = sigmas.to(device)
    gen = torch.Generator().manual_seed(1)
    x_train = torch.rand(args.batch, 1, 8, 8, generator=gen).to(device)
    x_sample = torch.rand(SAMPLER_BATCH, 1, 8, 8, generator=gen).to(device)
    sigma_sample = torch.full((SAMPLER_BATCH,), sigmas[5].item(), device=device)

    kinds = {
        "train": lambda m: train_step(m, x_train, sigmas),
        "sample": lambda m: sampler_step(m, x_sample, sigma_sample),
    }
    times = {(name, kind): [] for name in models for kind in kinds}
    for i in range(args.warmup + args.steps):
        for kind, step in kinds.items():
            for name, model in models.items():
                t = timed(lambda: step(model), device)
                if i >= args.warmup:
                    times[name, kind].append(t)
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}

    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"train batch {args.batch}, sampler batch {SAMPLER_BATCH}, median of {args.steps} steps "
          f"after {args.warmup} warm-up")
    print()
    print("| model | params | train step ms | sampler step ms |")
    print("|---|---:|---:|---:|")
    params = {name: sum(p.numel() for p in m["net"].parameters()) for name, m in models.items()}
    for name in models:
        print(f"| {name} | {params[name]:,} | {ms[name, 'train']:.1f} | {ms[name, 'sample']:.1f} |")
    print(f"| U-Net / RefineNet | {params['U-Net'] / params['RefineNet']:.2f} | "
          f"{ms['U-Net', 'train'] / ms['RefineNet', 'train']:.2f} | "
          f"{ms['U-Net', 'sample'] / ms['RefineNet', 'sample']:.2f} |")


if __name__ == "__main__":
    main()
