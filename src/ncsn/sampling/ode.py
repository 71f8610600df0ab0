"""The probability-flow ODE of the variance-exploding process, solved with Euler's or Heun's method."""

from __future__ import annotations

import torch

from ncsn.sampling._common import Callback, ProgressBar, bound_score, check_choice, decreasing_levels, level_vectors
from ncsn.score import ScoreFn

SOLVERS = ("euler", "heun")


def pf_ode(score_fn: ScoreFn, x: torch.Tensor, sigmas, solver: str = "heun", callback: Callback | None = None,
           progress: bool = False) -> torch.Tensor:
    r"""Deterministic sampling along the probability-flow ODE (Song et al. 2021, eq. 13).

    For the VE process x = x0 + sigma z the ODE whose marginals are the perturbed data's p_sigma is
    (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", eq. 4)

    .. math:: \frac{dx}{d\sigma} = -\sigma\, s(x, \sigma) = \frac{x - D(x, \sigma)}{\sigma}, \qquad
              D(x, \sigma) = x + \sigma^2 s(x, \sigma) \ \text{(Tweedie's denoiser)},

    integrated from ``x`` at sigma_1 through the strictly decreasing ``sigmas`` (e.g.
    :func:`ncsn.sigmas.karras`) down to sigma = 0. With d_i = -sigma_i s(x, sigma_i) and
    h_i = sigma_{i+1} - sigma_i:

    * ``"euler"``: x <- x + h_i d_i (L network evaluations);
    * ``"heun"`` (Karras et al. Algorithm 1): x' = x + h_i d_i, then x <- x + h_i (d_i + d'_i) / 2 with
      d'_i = -sigma_{i+1} s(x', sigma_{i+1}); second order, 2 L - 1 evaluations, because the last
      step (to sigma = 0) is Euler's, which is Tweedie's denoising step x + sigma_L^2 s(x, sigma_L).

    The result depends on ``x`` alone (no noise is drawn). A VP model follows the same ODE in
    y = x / a over its noise level sigma~ = s / a (:func:`ncsn.processes.ve_view`), which is DDPM's
    probability flow after a change of variables (Karras et al. 2022, Section 4). The score is only
    evaluated at the given sigmas, so a network trained at L fixed levels can be sampled at those.
    ``callback(i, 0, x)`` runs after step i.
    """
    levels = decreasing_levels(sigmas)
    check_choice("solver", solver, SOLVERS)
    score = bound_score(score_fn)
    targets = levels[1:] + [0.0]
    with torch.no_grad():
        x = x.detach().clone()
        vecs = level_vectors(levels, x)
        with ProgressBar(len(levels), f"probability flow ({solver})", progress) as bar:
            for i, (sigma, sigma_next) in enumerate(zip(levels, targets)):
                slope = -sigma * score(x, vecs[i])
                moved = x + (sigma_next - sigma) * slope
                if solver == "heun" and sigma_next > 0:
                    slope_next = -sigma_next * score(moved, vecs[i + 1])
                    x = x + (0.5 * (sigma_next - sigma)) * (slope + slope_next)
                else:
                    x = moved
                if callback is not None:
                    callback(i, 0, x)
                bar.update()
    return x
