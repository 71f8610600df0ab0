"""`ncsn inpaint CKPT --image IMG|dataset --mask right|bottom|center|MASK.png --out grid.png`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ncsn.argtypes import nonnegative_int, positive_int
from ncsn.errors import UserError

MASK_NAMES = ("right", "left", "bottom", "top", "center")


def add_parser(subparsers) -> None:
    """Register ``ncsn inpaint`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser("inpaint", help="fill in occluded pixels with annealed Langevin inpainting",
                              description="Conditional sampling: the known pixels follow the data perturbed "
                                          "at each noise level, the rest follow annealed Langevin dynamics.")
    p.add_argument("target", help="a run directory (its newest checkpoint) or a checkpoint file")
    p.add_argument("--image", default="dataset",
                   help="an image file, or 'dataset' to take --n-images from the run's dataset (default)")
    p.add_argument("--n-images", type=positive_int, default=8, help="images taken from the dataset (default 8)")
    p.add_argument("--mask", default="right",
                   help=f"one of {', '.join(MASK_NAMES)} (the occluded part), or a mask image (white = known)")
    p.add_argument("--completions", type=positive_int, default=4, help="completions per image (default 4)")
    p.add_argument("--out", default="inpainting.png", help="PNG grid: occluded input, completions, original")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="sampling.KEY=VALUE",
                   help="sampler settings (step_lr, n_steps_each, denoise, sigmas, n_levels); inpainting uses "
                        "annealed Langevin (NCSN's Algorithm 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def named_mask(name: str, size: int) -> torch.Tensor:
    """A ``(1, 1, size, size)`` mask, 1 where pixels are known, 0 on the occluded part ``name``."""
    mask = torch.ones(1, 1, size, size)
    half, quarter = size // 2, size // 4
    region = {
        "right": (slice(None), slice(half, None)),
        "left": (slice(None), slice(None, half)),
        "bottom": (slice(half, None), slice(None)),
        "top": (slice(None, half), slice(None)),
        "center": (slice(quarter, size - quarter), slice(quarter, size - quarter)),
    }[name]
    mask[..., region[0], region[1]] = 0.0
    return mask


def read_image(path: str | Path, channels: int, size: int) -> torch.Tensor:
    """An image file as a ``(1, C, size, size)`` tensor in [0, 1] (centre-cropped, resized)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())[None]


def run(args) -> int:
    """Run ``ncsn inpaint`` with the parsed ``args``; returns the exit status."""
    from ncsn.data.images import get_dataset
    from ncsn.device import resolve_device
    from ncsn.commands.sample import apply_sampling_overrides
    from ncsn.generate import is_continuous, load_model_for_sampling, plan_sampler
    from ncsn.plotting import save_image_grid
    from ncsn.processes import ve_view
    from ncsn.sampling import annealed_langevin_inpaint

    device = resolve_device(args.device)
    model, config, info = load_model_for_sampling(args.target, use_ema=not args.no_ema, device=device)
    asked = apply_sampling_overrides(config, args.overrides)["sampling"]["method"]
    explicit = any(o.split("=", 1)[0].strip() == "sampling.method" for o in args.overrides)
    if explicit and asked not in ("auto", "annealed_langevin"):
        raise UserError(f"inpainting runs annealed Langevin dynamics (Song & Ermon 2019, Algorithm 2); "
                        f"sampling.method={asked} has no conditional form here")
    # whatever the model samples with, inpainting is annealed Langevin on its levels
    config = apply_sampling_overrides(config, [*args.overrides, "sampling.method=annealed_langevin"])
    plan = plan_sampler(config, model.process, is_continuous(model))
    d, s = config["data"], config["sampling"]
    channels, size = d["channels"], d["image_size"]
    if args.image == "dataset":
        kwargs = dict(root=d["root"], train=False, image_size=size, download=False, progress=False)
        if d["dataset"] == "folder":
            kwargs["channels"] = channels
        data = get_dataset(d["dataset"], **kwargs)
        gen = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(len(data), generator=gen)[: args.n_images]
        images = data.get_batch(idx)
    else:
        images = read_image(args.image, channels, size)
    if args.mask in MASK_NAMES:
        mask = named_mask(args.mask, size)
    else:
        mask = (read_image(args.mask, 1, size) > 0.5).float()
    k = args.completions
    known = images.repeat_interleave(k, dim=0).to(device)
    mask_b = mask.expand(known.shape[0], channels, size, size).to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    # in the VE form y = x / a of the process (a VP model too): the known pixels are clean data y = x0
    process = model.process
    levels = plan.noise_levels.to(device=device, dtype=torch.float32)
    if process.name == "ve":
        start = torch.rand(known.shape, generator=gen, device=device)  # NCSN's uniform start
    else:
        start = float(levels[0]) * torch.randn(known.shape, generator=gen, device=device)
    with torch.no_grad():
        filled = annealed_langevin_inpaint(ve_view(model, process), start, process.to_model(known), mask_b, levels,
                                           s["step_lr"], s["n_steps_each"], denoise=s["denoise"], generator=gen,
                                           progress=not args.no_progress)
    filled = process.to_images(filled).clamp(0, 1).cpu().view(images.shape[0], k, channels, size, size)
    occluded = images * mask + 0.5 * (1 - mask)
    rows = [torch.cat([occluded[i : i + 1], filled[i], images[i : i + 1]]) for i in range(images.shape[0])]
    save_image_grid(torch.cat(rows), args.out, nrow=k + 2)
    print(f"inpainted {images.shape[0]} image(s) x {k} completions with {info['checkpoint']} "
          f"(step {info['step']}) -> {args.out}  [columns: occluded input, {k} completions, original]")
    return 0
