"""Closed-form scores of Gaussian data N(0, v I) under the VE and VP forward processes."""

import torch


def ve_gaussian_score(v: float):
    """x = x0 + sigma z: the marginal N(0, (v + sigma^2) I), score -x / (v + sigma^2)."""
    return lambda x, sigma: -x / (v + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2)


def vp_gaussian_score(v: float):
    """x = a x0 + s z with a^2 + s^2 = 1: the marginal N(0, (a^2 v + s^2) I)."""

    def score(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s2 = s.reshape(-1, *[1] * (x.ndim - 1)) ** 2
        return -x / ((1 - s2) * v + s2)

    return score
