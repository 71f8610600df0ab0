"""Pictures: image grids, the per-level strip (NCSN Figure 4) and loss curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ncsn.atomic import atomic_write


def make_grid(images: torch.Tensor | np.ndarray, nrow: int | None = None, pad: int = 1,
              pad_value: float = 1.0) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in ``[0, 1]`` into one ``(H', W', C)`` uint8 array."""
    images = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images.detach().cpu())
    images = images.float().clamp(0, 1)
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    array = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return array


def save_image_grid(images, path: str | Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Save ``(N, C, H, W)`` images in ``[0, 1]`` as a PNG grid.

    Small images are enlarged with nearest-neighbour resampling (``scale``, chosen
    automatically so each tile is at least 64 pixels) so that 8x8 digits are visible.
    """
    array = make_grid(images, nrow=nrow)
    scale = scale or max(1, 64 // images.shape[2])
    mode = "L" if array.shape[2] == 1 else "RGB"
    picture = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_write(path) as handle:
        picture.save(handle, format="PNG")
    return Path(path)


def save_strip(levels: list[torch.Tensor], path: str | Path) -> Path:
    """Intermediate samples at each noise level: one column per level, one row per sample.

    ``levels[i]`` holds ``(N, C, H, W)`` samples at the end of level ``i``.
    """
    stacked = torch.stack([x.detach().cpu() for x in levels], dim=1)  # (N, L, C, H, W)
    n, n_levels = stacked.shape[:2]
    return save_image_grid(stacked.reshape(n * n_levels, *stacked.shape[2:]), path, nrow=n_levels)


def save_loss_curve(log_csv: str | Path, path: str | Path) -> Path:
    """Plot the ``loss`` column of a training log CSV against ``step`` (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncsn.runlog import FIELDS, read_rows

    rows = read_rows(log_csv, FIELDS)
    steps, losses = [int(row["step"]) for row in rows], [float(row["loss"]) for row in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("NCSN loss (lambda = sigma^2)")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_write(path) as handle:
            fig.savefig(handle, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
