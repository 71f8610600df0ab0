"""Training steps per second: eager vs torch.compile vs AMP, side by side in one run.

For each config (digits by default, CIFAR-10 too with --cifar) and each mode, a few warm-up
steps are followed by timed steps. The table gives the first step's time (which includes
torch.compile's compilation), steps/s after warm-up, and the ratio to eager.

    python benchmarks/train_step.py [--cifar] [--modes eager,compile,bf16] [--device auto]
        [--threads N] [--cifar-batch B]

Modes: eager, compile (torch.compile, inductor), bf16 / fp16 (autocast; fp16 with a grad scaler),
and compile+bf16 / compile+fp16.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from ncsn.config import load_config
from ncsn.device import resolve_device, synchronize
from ncsn.losses import ncsn_loss
from ncsn.train import _autocast, build_score_model, make_sigmas


def cpu_description() -> str:
    """The CPU's model name and its half-precision instruction sets (they decide whether AMP pays)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    half = [f for f in ("avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {'/'.join(half) or 'no bf16/fp16 instructions'}"


def steps_per_second(config, device, mode, warmup, steps):
    torch.manual_seed(0)
    model = build_score_model(config).to(device)
    if config["training"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if mode.startswith("compile") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    precision = mode.split("+")[-1]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sigmas = make_sigmas(config).to(device)
    d, batch = config["data"], config["training"]["batch_size"]
    x = torch.rand((batch, d["channels"], d["image_size"], d["image_size"]), device=device)
    if config["training"]["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_config = {"training": {"amp": precision if precision in ("bf16", "fp16") else "off"}}

    def step():
        with _autocast(amp_config, device):
            loss = ncsn_loss(net, x, sigmas)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    start = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return first, steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", action="store_true", help="also the CIFAR-10 config (ngf 128, 32x32x3)")
    parser.add_argument("--modes", default="eager,compile,bf16",
                        help="comma list of eager, compile, bf16, fp16, compile+bf16, compile+fp16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cifar-batch", type=int, default=128)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",")]
    configs = [("digits", load_config("configs/digits.yaml"))]
    if args.cifar:
        configs.append(("cifar10", load_config("configs/cifar10.yaml", [f"training.batch_size={args.cifar_batch}"])))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_description()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up (fewer for CIFAR-10 on CPU)")
    print(f"{'config':10s} {'batch':>5s} {'mode':13s} {'first step s':>12s} {'steps/s':>9s} {'x eager':>8s}")
    for name, config in configs:
        config["training"]["channels_last"] = args.channels_last
        base = None
        for mode in modes:
            steps = args.steps if name == "digits" or device.type == "cuda" else max(2, args.steps // 10)
            first, rate = steps_per_second(config, device, mode, max(1, args.warmup), steps)
            base = base or rate
            print(f"{name:10s} {config['training']['batch_size']:5d} {mode:13s} {first:12.2f} {rate:9.3f} "
                  f"{rate / base:8.2f}", flush=True)


if __name__ == "__main__":
    main()
