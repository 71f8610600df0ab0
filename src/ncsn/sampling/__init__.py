"""Samplers over a score function ``score_fn(x, sigma)`` (or ``score_fn(x)``), as plain functions.

Langevin dynamics (:mod:`ncsn.sampling.langevin`):

* :func:`langevin`: plain (unadjusted) Langevin dynamics.
* :func:`annealed_langevin`: Song & Ermon (2019), "Generative Modeling by Estimating Gradients
  of the Data Distribution", Algorithm 1, with the optional final denoising step.
* :func:`annealed_langevin_inpaint`: the same paper's conditional sampler for inpainting.
* :func:`consistent_annealing`: Jolicoeur-Martineau et al. (2021), Algorithm 2: one step per
  level that keeps the noise on schedule.

Reverse diffusion (:mod:`ncsn.sampling.diffusion`):

* :func:`ddpm_ancestral`: Ho, Jain & Abbeel (2020), Algorithm 2, over ``eps_fn(x, t)``.
* :func:`predictor_corrector`: Song et al. (2021), reverse-diffusion or ancestral predictor and
  Langevin corrector, for VE and VP kernels.

Probability flow (:mod:`ncsn.sampling.ode`):

* :func:`pf_ode`: the deterministic ODE dx/dsigma = -sigma s(x, sigma) with Euler's or Heun's
  method (Karras et al. 2022), over e.g. :func:`ncsn.sigmas.karras` levels.

And :func:`tweedie_denoise`: E[x0 | x] = (x + s^2 grad log q(x)) / a for a kernel N(a x0, s^2 I).

Conventions: ``sigmas`` are strictly decreasing noise levels (kernel standard deviations), each
passed to the score as an ``(N,)`` tensor; all randomness comes from the optional ``generator``
(a ``torch.Generator`` on ``x``'s device), so a run is reproducible; ``callback(level, step, x)``
sees the working tensor after every update (clone what you keep); ``progress`` shows a bar over
levels; no sampler synchronises with the host inside its loop. The samplers run under
``torch.no_grad()`` (a score that needs gradients itself, :class:`ncsn.energy.EnergyScore`,
switches them on for its own derivative). The input ``x`` is never modified.
"""

from ncsn.sampling._common import Callback, tweedie_denoise
from ncsn.sampling.diffusion import CORRECTORS, PREDICTORS, VARIANCES, ddpm_ancestral, predictor_corrector
from ncsn.sampling.langevin import (ancestral_etas, annealed_langevin, annealed_langevin_inpaint,
                                    consistent_annealing, consistent_eta_range, langevin)
from ncsn.sampling.ode import SOLVERS, pf_ode

__all__ = ["CORRECTORS", "Callback", "PREDICTORS", "SOLVERS", "VARIANCES", "ancestral_etas", "annealed_langevin",
           "annealed_langevin_inpaint", "consistent_annealing", "consistent_eta_range", "ddpm_ancestral", "langevin",
           "pf_ode", "predictor_corrector", "tweedie_denoise"]
