"""Evaluation metrics.

Sample quality on feature arrays (:mod:`ncsn.metrics.maths`): FID, Inception Score, KID,
precision/recall, density/coverage. Distances between low-dimensional distributions
(:mod:`ncsn.metrics.toy`): MMD, sliced Wasserstein, mixture mode weights, log-likelihood;
these are imported on first use.
"""

from ncsn.metrics.maths import (
    MetricInputError,
    density_coverage,
    feature_stats,
    fid,
    fid_from_stats,
    inception_score,
    kid,
    knn_radii,
    load_stats,
    mmd2_unbiased,
    precision_recall,
    save_stats,
)

_FROM_TOY = ("mmd", "sliced_wasserstein", "mode_weights", "avg_log_likelihood")

__all__ = [
    "MetricInputError",
    "density_coverage",
    "feature_stats",
    "fid",
    "fid_from_stats",
    "inception_score",
    "kid",
    "knn_radii",
    "load_stats",
    "mmd2_unbiased",
    "precision_recall",
    "save_stats",
    *_FROM_TOY,
]


def __getattr__(name: str):
    if name in _FROM_TOY:
        from ncsn.metrics import toy

        return getattr(toy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
