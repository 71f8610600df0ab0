"""`ncsn train-classifier --dataset digits|mnist --out PATH [--epochs N] [--seed S]`."""

from __future__ import annotations

from ncsn.argtypes import nonnegative_int, positive_int


def add_parser(subparsers) -> None:
    """Register ``ncsn train-classifier`` and its options with the CLI's ``subparsers``."""
    p = subparsers.add_parser(
        "train-classifier", help="train the digit classifier whose features score digits/MNIST samples",
        description="Train a small CNN on the real images (train split, random shifts), report its held-out "
                    "accuracy and save weights + metadata (loadable with weights_only=True).")
    p.add_argument("--dataset", default="digits", choices=["digits", "mnist"], help="default: digits")
    p.add_argument("--data-root", help="where the dataset lives (MNIST IDX files; unused by digits)")
    p.add_argument("--download", action="store_true",
                   help="fetch MNIST into --data-root when it is not there (MD5-checked)")
    p.add_argument("--out", required=True, help="weights file to write, e.g. mnist_classifier.pt")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: 30 digits, 3 mnist)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the weights, batch order and shifts")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``ncsn train-classifier`` with the parsed ``args``; returns the exit status."""
    from ncsn.classifier_training import train_classifier
    from ncsn.device import resolve_device
    from ncsn.models.classifier import save_classifier

    model, report = train_classifier(args.dataset, data_root=args.data_root, epochs=args.epochs, seed=args.seed,
                                     device=resolve_device(args.device), progress=not args.no_progress,
                                     download=args.download)
    saved = save_classifier(model, args.out, **report)  # atomic: a failed write is a one-line error
    acc, n_test = report["test_accuracy"], report["n_test"]
    print(f"{args.dataset} classifier: held-out accuracy {100 * acc:.2f}% ({round(acc * n_test)}/{n_test} test "
          f"images), train {100 * report['train_accuracy']:.2f}%; {report['epochs']} epochs in "
          f"{report['seconds']:.1f} s -> {args.out} (weights sha256 {saved['weights_sha256'][:12]})")
    return 0
