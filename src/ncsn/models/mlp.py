"""Multilayer perceptrons for low-dimensional data: a noise-conditional score network and an energy network.

Both are conditioned on the noise level through sinusoidal features of log sigma,

    e(sigma) = [sin(w_k log sigma), cos(w_k log sigma)]_{k=1..K/2},   w_k geometric in [1/4, 4],

which each hidden layer receives through its own linear map (added to its pre-activation):

    h_0 = x,   h_l = SiLU(W_l h_{l-1} + V_l e(sigma) + b_l),   l = 1..n_layers,

followed by a linear read-out. The lowest frequency (period 8 pi in log sigma) keeps the features
one-to-one over noise levels from 1e-5 to 1e5; the higher ones resolve nearby levels. This
follows NCSN (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data
Distribution"), where one network s(x, sigma) serves every noise level; the log sigma features are
the continuous-level analogue of its per-level conditional normalisation.

*No-noise convention.* ``sigma=None`` replaces e(sigma) by a learned vector (initialised to zero,
which no noise level produces since cos^2 + sin^2 = 1): the network is then an ordinary
unconditional model s(x) or E(x), trained e.g. by exact, sliced or single-scale denoising score
matching. Because ``forward(x, sigma=None)`` has two positional parameters,
:func:`ncsn.score.call_score` treats these modules as noise-conditional; use
:func:`unconditional` to hand the unconditional network to code that calls ``s(x)``.

SiLU is smooth, so the second derivatives needed by exact and sliced score matching on an
energy (and the first derivatives needed on a score) exist everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ncsn.score import sigma_vector


def log_sigma_features(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``(N, dim)`` of log sigma: sin and cos at ``dim // 2`` frequencies from 1/4 to 4."""
    n_freq = dim // 2
    freqs = torch.logspace(math.log10(0.25), math.log10(4.0), n_freq, dtype=sigma.dtype, device=sigma.device)
    angles = sigma.log().unsqueeze(1) * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _ConditionalMLP(nn.Module):
    """The shared trunk: ``n_layers`` SiLU layers, each fed e(sigma) (or the learned no-noise vector)."""

    def __init__(self, dim: int, out_dim: int, hidden: int, n_layers: int, sigma_embed_dim: int):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("n_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(sigma_embed_dim, bool) or not isinstance(sigma_embed_dim, int) or sigma_embed_dim < 2 \
                or sigma_embed_dim % 2:
            raise ValueError(f"sigma_embed_dim must be a positive even integer, got {sigma_embed_dim!r}")
        self.dim = dim
        self.sigma_embed_dim = sigma_embed_dim
        widths = [dim] + [hidden] * n_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.sigma_maps = nn.ModuleList(nn.Linear(sigma_embed_dim, hidden, bias=False) for _ in range(n_layers))
        self.no_noise_embedding = nn.Parameter(torch.zeros(sigma_embed_dim))
        self.readout = nn.Linear(hidden, out_dim)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")

    def embedding(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """e(sigma) as ``(N, sigma_embed_dim)``, or the learned no-noise vector when ``sigma`` is None."""
        if sigma is None:
            return self.no_noise_embedding.to(x.dtype).expand(x.shape[0], -1)
        sigma = sigma_vector(sigma, x)
        return log_sigma_features(sigma, self.sigma_embed_dim)

    def trunk(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self._check_input(x)
        emb = self.embedding(x, sigma)
        h = x
        for layer, sigma_map in zip(self.layers, self.sigma_maps):
            h = nn.functional.silu(layer(h) + sigma_map(emb))
        return self.readout(h)


class ScoreMLP(_ConditionalMLP):
    """Noise-conditional score network s(x, sigma) for ``(N, dim)`` data (see the module docstring).

    Args:
        dim: data dimension D.
        hidden: width of each hidden layer.
        n_layers: number of hidden layers.
        sigma_embed_dim: number of sinusoidal log sigma features (even).
        scale_by_sigma: return f(x, sigma) / sigma (NCSNv2, Song & Ermon 2020, "Improved Techniques
            for Training Score-Based Generative Models", Technique 3), so the network itself only
            has to output sigma s(x, sigma), of order one at every level. Ignored when ``sigma`` is None.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, n_layers: int = 3, sigma_embed_dim: int = 16,
                 scale_by_sigma: bool = False):
        super().__init__(dim, dim, hidden, n_layers, sigma_embed_dim)
        self.scale_by_sigma = scale_by_sigma

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        """s(x, sigma), shape ``(N, dim)``; ``sigma`` is an ``(N,)`` tensor, a float, or None (no noise)."""
        out = self.trunk(x, sigma)
        if self.scale_by_sigma and sigma is not None:
            out = out / sigma_vector(sigma, x).unsqueeze(1)
        return out


class EnergyMLP(_ConditionalMLP):
    """Noise-conditional energy network E(x, sigma) -> ``(N,)``, with score -grad_x E (wrap it in
    :class:`ncsn.energy.EnergyScore`). Same trunk and no-noise convention as :class:`ScoreMLP`."""

    def __init__(self, dim: int = 2, hidden: int = 128, n_layers: int = 3, sigma_embed_dim: int = 16):
        super().__init__(dim, 1, hidden, n_layers, sigma_embed_dim)

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        """E(x, sigma), shape ``(N,)``."""
        return self.trunk(x, sigma).squeeze(1)


class Unconditional(nn.Module):
    """The no-noise form x -> model(x, sigma=None) of a :class:`ScoreMLP` or :class:`EnergyMLP`, as a
    module whose ``forward`` takes ``x`` alone: :func:`ncsn.score.call_score`, the objectives and the
    samplers then call it as ``s(x)``, and :class:`ncsn.energy.EnergyScore` as an unconditional energy.
    It shares the wrapped model's parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, None)


def unconditional(model: nn.Module) -> Unconditional:
    """``model``'s no-noise form (see :class:`Unconditional`)."""
    return Unconditional(model)
