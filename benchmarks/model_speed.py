"""Speed of the NCSN RefineNet: one training step (forward, backward, Adam) per setting.

For each setting it prints the parameter count, the convolutions' forward multiply-adds
(counted with hooks), the median step time in the default and ``channels_last`` memory
formats side by side (their ratio), and the achieved GFLOP/s taking a step as about
three forward passes of convolution work. ``--compile`` adds a ``torch.compile``d column
(compilation itself takes minutes on a small CPU and is not timed).

    python benchmarks/model_speed.py                 # digits 8x8 (ngf 64) and CIFAR-10 32x32 (ngf 128)
    python benchmarks/model_speed.py --batch 32 --steps 3 --settings mnist
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from ncsn.device import synchronize
from ncsn.models.refinenet import RefineNet

SETTINGS = {  # name: (channels, image size, ngf, L, sigma_1)
    "digits": (1, 8, 64, 20, 5.0),
    "mnist": (1, 28, 64, 10, 1.0),
    "cifar10": (3, 32, 128, 10, 1.0),
    "celeba64": (3, 64, 128, 10, 1.0),
}


def conv_macs(net: nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> int:
    """Multiply-adds of all convolutions in one forward pass of ``net`` on ``x``."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = module.weight[0].numel()  # in_channels / groups * kh * kw
        total += output.numel() * k

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(x, sigma)
    for h in handles:
        h.remove()
    return total


def time_steps(net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, steps: int) -> float:
    """Median seconds of one DSM training step (after one warm-up step)."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator(device=x.device).manual_seed(0)
    s = sigma[:, None, None, None]

    def step():
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * (s * net(x + s * noise, sigma) + noise).square().sum(dim=(1, 2, 3)).mean()
        loss.backward()
        opt.step()
        synchronize(x.device)

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["digits", "cifar10"], choices=sorted(SETTINGS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    header = (f"{'setting':>9} {'params':>11} {'fwd GMAC':>9} {'step s':>8} {'CL step s':>9} {'CL/def':>7} "
              f"{'GFLOP/s':>8}")
    if args.compile:
        header += f" {'compiled s':>10}"
    print(header)
    for name in args.settings:
        channels, size, ngf, levels, sigma_1 = SETTINGS[name]
        torch.manual_seed(0)
        sigmas = torch.logspace(math.log10(sigma_1), -2, levels)  # geometric sigma_1 -> 0.01
        net = RefineNet(channels, ngf, sigmas).to(device)
        x = torch.rand(args.batch, channels, size, size, device=device)
        sigma = net.sigmas[torch.randint(0, levels, (args.batch,), device=device)]
        params = sum(p.numel() for p in net.parameters())
        macs = conv_macs(net, x, sigma)
        t_default = time_steps(net, x, sigma, args.steps)
        net_cl = net.to(memory_format=torch.channels_last)
        t_cl = time_steps(net_cl, x.contiguous(memory_format=torch.channels_last), sigma, args.steps)
        gflops = 3 * 2 * macs / t_default / 1e9
        row = (f"{name:>9} {params:>11,} {macs / 1e9:>9.2f} {t_default:>8.3f} {t_cl:>9.3f} "
               f"{t_cl / t_default:>7.2f} {gflops:>8.1f}")
        if args.compile:
            compiled = torch.compile(RefineNet(channels, ngf, sigmas).to(device))
            row += f" {time_steps(compiled, x, sigma, args.steps):>10.3f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
