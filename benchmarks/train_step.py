"""Training steps per second: eager vs torch.compile vs AMP, side by side in one run; the main job's speed.

For each config (digits by default, CIFAR-10 too with --cifar) and each mode, a few warm-up
steps are followed by timed steps. The table gives the first step's time (which includes
torch.compile's compilation), steps/s after warm-up, and the ratio to eager.

    python benchmarks/train_step.py [--cifar] [--modes eager,compile,bf16] [--device auto]
        [--threads N] [--cifar-batch B]

Modes: eager, compile (torch.compile, inductor), bf16 / fp16 (autocast; fp16 with a grad scaler),
and compile+bf16 / compile+fp16.

    python benchmarks/train_step.py --main-job [--job-steps 300] [--fid-run demo ...]

``--main-job`` instead runs the real ``ncsn train`` for a few hundred steps, one after the other, for
the previous main job (NCSN's RefineNet, configs/digits.yaml, one process) and today's
(configs/demo.yaml: the U-Net, one process, and ``--procs auto``), and prints steps/s and the ratio
to the previous one. With ``--fid-run DIR`` (a run evaluated by ``ncsn eval DIR --every-checkpoint``)
it also prints the time to FID 15 and 10: the first checkpoint at or below each, with the training
seconds its log.csv records.
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


def train_rate(config: str, procs: str, steps: int, workdir: str) -> float:
    """Steps/s of ``ncsn train`` over the logged steps after the first row (startup excluded)."""
    import csv
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ncsn", "train", config, "--workdir", workdir, "--no-progress", "--procs", procs,
           "--device", "cpu", "--set", f"training.n_iters={steps}", "--set", f"training.snapshot_freq={steps}",
           "--set", "training.log_freq=20"]
    subprocess.run(cmd, check=True, capture_output=True)
    with open(f"{workdir}/log.csv") as handle:
        rows = list(csv.DictReader(handle))
    first, last = rows[0], rows[-1]
    return (int(last["step"]) - int(first["step"])) / (float(last["elapsed_s"]) - float(first["elapsed_s"]))


def time_to_fid(run: str, targets=(15.0, 10.0)) -> list[str]:
    import csv

    with open(f"{run}/eval_vs_step.csv") as handle:
        curve = [(int(r["step"]), float(r["fid"])) for r in csv.DictReader(handle)]
    with open(f"{run}/log.csv") as handle:
        elapsed = {int(r["step"]): float(r["elapsed_s"]) for r in csv.DictReader(handle)}
    out = []
    for target in targets:
        hit = next(((step, fid) for step, fid in sorted(curve) if fid <= target), None)
        if hit is None:
            out.append(f"  FID <= {target:g}: not reached (best {min(f for _, f in curve):.2f})")
            continue
        seconds = elapsed.get(hit[0]) or max((e for s_, e in elapsed.items() if s_ <= hit[0]), default=float("nan"))
        out.append(f"  FID <= {target:g}: step {hit[0]} (FID {hit[1]:.2f}), {seconds:.0f} s of training")
    return out


def main_job(args) -> None:
    import tempfile

    print(f"{cpu_description()}; {args.job_steps} steps of real `ncsn train` each, one after the other")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("NCSN RefineNet (configs/digits.yaml), 1 process", "configs/digits.yaml", "1"),
                ("main job U-Net VP (configs/demo.yaml), 1 process", "configs/demo.yaml", "1"),
                ("main job U-Net VP (configs/demo.yaml), --procs auto", "configs/demo.yaml", "auto")]
        base = None
        for i, (label, config, procs) in enumerate(rows):
            rate = train_rate(config, procs, args.job_steps, f"{tmp}/{i}")
            base = base or rate
            print(f"  {label:55s} {rate:6.2f} steps/s  {rate / base:5.2f}x", flush=True)
    for run in args.fid_run:
        print(f"time to FID, {run}:")
        print("\n".join(time_to_fid(run)))


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
    parser.add_argument("--main-job", action="store_true", help="the main job's training speed, old and new")
    parser.add_argument("--job-steps", type=int, default=300)
    parser.add_argument("--fid-run", action="append", default=[], help="run evaluated with --every-checkpoint")
    args = parser.parse_args()
    if args.main_job:
        main_job(args)
        return
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
