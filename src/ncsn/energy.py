"""Energy parameterisation of a score: s(x) = -grad_x E(x).

An energy-based model p(x) ∝ exp(-E(x)) has score -grad_x E(x) (no normalising constant
needed), so wrapping an energy network in :class:`EnergyScore` lets every objective of
:mod:`ncsn.losses` train it and every sampler of :mod:`ncsn.sampling` draw from it
(Hyvarinen 2005 trains such models by score matching; Song et al. 2019, "Sliced Score
Matching", does so with sliced score matching).
"""

from __future__ import annotations

import torch
from torch import nn

from ncsn.score import call_score, takes_sigma


class EnergyScore(nn.Module):
    r"""The score :math:`s(x[, \sigma]) = -\nabla_x E(x[, \sigma])` of an energy network.

    ``energy_net`` maps ``x`` (``(N, ...)``), or ``(x, sigma)`` when it takes a noise level,
    to energies of shape ``(N,)`` or ``(N, 1)``. The gradient is taken with
    ``create_graph=True`` whenever gradients are enabled, so losses built on the score
    are differentiable in the energy's parameters and in ``x`` (exact and sliced score
    matching differentiate the score again). Under ``torch.no_grad()`` (the samplers)
    gradients are switched on just for this one derivative and the result is detached.

    The wrapper takes a noise level exactly when ``energy_net`` does, so
    :func:`ncsn.score.call_score` calls it the same way: ``forward(x, sigma=None)`` for a
    noise-conditional energy, ``forward(x)`` for an unconditional one.
    """

    def __init__(self, energy_net: nn.Module):
        super().__init__()
        self.energy_net = energy_net
        self.conditional = takes_sigma(energy_net)
        if not self.conditional:
            # call_score inspects `forward`: expose the one-argument form for unconditional energies
            self.forward = self._unconditional_forward

    def energy(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        """E(x[, sigma]) as a ``(N,)`` tensor."""
        out = call_score(self.energy_net, x, sigma)
        if out.numel() != x.shape[0]:
            raise ValueError(f"the energy network must return shape (N,) or (N, 1) for N={x.shape[0]}, "
                             f"got {tuple(out.shape)}")
        return out.reshape(x.shape[0])

    def forward(self, x: torch.Tensor, sigma=None) -> torch.Tensor:
        """s(x, sigma) = -grad_x E(x, sigma)."""
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in = x if x.requires_grad else x.detach().requires_grad_(True)
            energy = self.energy(x_in, sigma)
            (grad,) = torch.autograd.grad(energy.sum(), x_in, create_graph=create_graph)
        return -grad

    def _unconditional_forward(self, x: torch.Tensor) -> torch.Tensor:
        """s(x) = -grad_x E(x)."""
        return EnergyScore.forward(self, x, None)
