"""Training the digit classifier whose features and probabilities score samples of digits / MNIST.

Cross-entropy on the training split with AdamW and a cosine learning-rate decay; the only
augmentation is a random translation by up to ``max_shift`` pixels (zero fill), which
keeps the digits' appearance while making the features insensitive to small offsets.
Accuracy is reported on the held-out test split (digits: the 297 images outside
``get_dataset``'s training permutation; MNIST: the 10,000 t10k images).

Everything random (initial weights, batch order, shifts) follows from ``seed``.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F

from ncsn.errors import UserError
from ncsn.models.classifier import DigitClassifier, single_cpu_thread

__all__ = ["DEFAULTS", "SUPPORTED", "accuracy", "random_shift", "train_classifier"]

SUPPORTED = ("digits", "mnist")
# Per dataset: epochs, largest shift (pixels), batch size, peak learning rate.
DEFAULTS = {
    "digits": dict(epochs=30, max_shift=1, batch_size=64, lr=3e-3),
    "mnist": dict(epochs=3, max_shift=2, batch_size=128, lr=2e-3),
}
WEIGHT_DECAY = 5e-4


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image of ``x`` (N, C, H, W) by its own ``(dy, dx)`` uniform in ``{-s..s}^2``; zero fill.

    The output pixel ``(i, j)`` of image ``n`` is input pixel ``(i - dy_n, j - dx_n)`` (0 outside).
    """
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    s = int(max_shift)
    padded = F.pad(x, (s, s, s, s))
    offsets = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(x.device)  # 2s - offset = s + shift
    rows = torch.arange(h, device=x.device) + offsets[0][:, None]  # (N, H) in padded coordinates
    cols = torch.arange(w, device=x.device) + offsets[1][:, None]  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images_of, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of ``labels`` predicted by ``model``; ``images_of(indices)`` returns the image batch."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(labels)))
        pred = model(images_of(idx)).argmax(dim=1).cpu()
        correct += int((pred == labels[idx]).sum())
    model.train(was_training)
    return correct / max(len(labels), 1)


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 0."""
    warmup = max(1, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_classifier(dataset: str = "digits", data_root=None, epochs: int | None = None, seed: int = 0,
                     device="cpu", batch_size: int | None = None, lr: float | None = None, width: int = 32,
                     feature_dim: int = 128, progress: bool = True,
                     download: bool = False) -> tuple[DigitClassifier, dict]:
    """Train a :class:`DigitClassifier` on ``dataset``'s training split.

    Returns ``(model in eval mode, report)``; the report holds the metadata saved with the
    weights: dataset, image_size, channels, n_train, n_test, test_accuracy,
    train_accuracy, epochs, seed, seconds.
    """
    from tqdm.auto import tqdm

    from ncsn.data.images import get_dataset

    if dataset not in SUPPORTED:
        raise UserError(f"train-classifier supports {', '.join(SUPPORTED)}, not {dataset!r}")
    settings = dict(DEFAULTS[dataset])
    settings.update({k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr).items() if v is not None})
    if settings["epochs"] < 1 or settings["batch_size"] < 1 or not settings["lr"] > 0:
        raise UserError(f"epochs and batch size must be >= 1 and lr > 0, got {settings}")
    device = torch.device(device)
    train = get_dataset(dataset, root=data_root, train=True, download=download, progress=progress)
    test = get_dataset(dataset, root=data_root, train=False, download=download, progress=progress)
    if train.labels is None or test.labels is None:
        raise UserError(f"{dataset} has no labels to train a classifier on")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(train.channels, 10, width, feature_dim).to(device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=WEIGHT_DECAY)
    n, bs = len(train), settings["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total = settings["epochs"] * steps_per_epoch
    start_time, step = time.perf_counter(), 0
    model.train()
    bar = tqdm(range(settings["epochs"]), desc=f"classifier ({dataset})", disable=not progress, dynamic_ncols=True)
    threads = single_cpu_thread(device) if train.image_size <= 16 else contextlib.nullcontext()
    with threads:
        for _ in bar:
            order = torch.randperm(n, generator=generator)
            for b in range(steps_per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                x = random_shift(train.get_batch(idx), settings["max_shift"], generator).to(device)
                loss = F.cross_entropy(model(x), train.labels[idx].to(device))
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, total, settings["lr"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        model.eval()
        seconds = time.perf_counter() - start_time
        test_accuracy = accuracy(model, test.get_batch, test.labels)
        train_accuracy = accuracy(model, train.get_batch, train.labels)
    report = {
        "dataset": dataset, "image_size": train.image_size, "channels": train.channels,
        "n_train": n, "n_test": len(test),
        "test_accuracy": test_accuracy,
        "train_accuracy": train_accuracy,
        "epochs": settings["epochs"], "batch_size": bs, "lr": settings["lr"], "max_shift": settings["max_shift"],
        "seed": seed, "seconds": round(seconds, 2),
    }
    return model, report
