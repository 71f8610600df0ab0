r"""Forward (noising) processes: NCSN's variance-exploding and DDPM's variance-preserving one.

Both perturb clean data ``x0`` with a Gaussian kernel over a finite set of training
*levels* ``i``:

.. math:: q(x_i \mid x_0) = \mathcal{N}(a_i x_0, s_i^2 I), \qquad x_i = a_i x_0 + s_i z, \quad z \sim \mathcal{N}(0, I),

so both have the same denoising score target, grad log q(x_i | x0) = -z / s_i, and the
same relation between a noise prediction and a score,

.. math:: s(x, i) = -\epsilon(x, i) / s_i, \qquad \epsilon(x, i) = -s_i\, s(x, i)   (:func:`eps_to_score`),

which lets one network serve both. They differ in ``a_i`` and in where the noise ends:

* :class:`VEProcess` (Song & Ermon 2019): a_i = 1, s_i = sigma_i over the L geometric levels
  sigma_1 > ... > sigma_L (index 0 is the largest). The variance grows ("explodes") with the
  noise; the prior is N(0, sigma_1^2 I) only approximately (the data's spread is not removed, see
  :meth:`Process.prior_kl`); NCSN's sampler starts from uniform noise on [0, 1]. Data in [0, 1].
* :class:`VPProcess` (Ho et al. 2020): a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t) with
  abar_t = prod_{s<=t} (1 - beta_s), t = 0..T-1 (index 0 is the least noisy). The data are scaled
  down at each step so the variance stays ~1 ("preserved"), and abar_T ~ 4e-5 destroys the signal:
  q(x_T | x0) ~ N(0, I), the prior. Data in [-1, 1], as Ho et al.

Every level also has an *equivalent noise level* sigma~_i = s_i / a_i (x_i / a_i = x0 + sigma~_i z):
the noise-to-signal ratio, which the networks are conditioned on, so a network conditioned on a
continuous noise level (the U-Net) can be queried by either process.
"""

from __future__ import annotations

import math

import torch

from ncsn.score import per_sample
from ncsn.sigmas import ddpm_betas

PROCESSES = ("ve", "vp")


def eps_to_score(eps: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """s = -eps / s_i: the score of q(x_i | x0) = N(a_i x0, s_i^2 I) in terms of its noise (``std``: ``(N,)``)."""
    return -eps / per_sample(std, eps)


def score_to_eps(score: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """eps = -s_i s: the inverse of :func:`eps_to_score`."""
    return -score * per_sample(std, score)


class Process:
    """A Gaussian forward process over discrete levels (see the module docstring).

    Attributes (float64 tensors indexed by level): ``scales`` (a_i), ``stds`` (s_i) and
    ``noise_levels`` (sigma~_i = s_i / a_i); ``data_range`` is the interval the process's
    data live in.
    """

    name: str = ""
    data_range: tuple[float, float] = (0.0, 1.0)

    def __init__(self, scales: torch.Tensor, stds: torch.Tensor):
        self.scales = scales.to(torch.float64)
        self.stds = stds.to(torch.float64)
        self.noise_levels = self.stds / self.scales

    @property
    def num_levels(self) -> int:
        """The number of training levels (L for VE, T for VP)."""
        return int(self.stds.shape[0])

    # data space <-> the process's space
    def to_model(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] mapped to the process's data range."""
        lo, hi = self.data_range
        return x01 if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * x01

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_model` (not clamped)."""
        lo, hi = self.data_range
        return x if (lo, hi) == (0.0, 1.0) else (x - lo) / (hi - lo)

    def perturb(self, x0: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_i = a_i x0 + s_i z for each sample's level ``index`` (``(N,)`` long)."""
        a = self.scales.to(x0.device)[index].to(x0.dtype)
        s = self.stds.to(x0.device)[index].to(x0.dtype)
        return per_sample(a, x0) * x0 + per_sample(s, x0) * noise

    def score_target(self, noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """grad_{x_i} log q(x_i | x0) = -z / s_i, the denoising score-matching target."""
        return -noise / per_sample(self.stds.to(noise.device)[index].to(noise.dtype), noise)

    def noise_level_of_std(self, std: torch.Tensor) -> torch.Tensor:
        """sigma~ for a kernel standard deviation s (for samplers that pass s)."""
        raise NotImplementedError

    def scale_of_std(self, std: torch.Tensor) -> torch.Tensor:
        """a for a kernel standard deviation s."""
        raise NotImplementedError

    def std_of_noise_level(self, noise_level: torch.Tensor) -> torch.Tensor:
        """The kernel standard deviation s of an equivalent noise level sigma~ (the inverse of :meth:`noise_level_of_std`)."""
        raise NotImplementedError

    def scale_of_noise_level(self, noise_level: torch.Tensor) -> torch.Tensor:
        """The kernel scale a of an equivalent noise level sigma~."""
        return self.scale_of_std(self.std_of_noise_level(noise_level))

    def prior_sample(self, shape, generator=None, device=None) -> torch.Tensor:
        """A draw of ``shape`` from the sampler's starting distribution (NCSN's uniform on [0, 1] for VE,
        N(0, I) for VP)."""
        raise NotImplementedError

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_last | x0) || prior) per sample in nats, for the noisiest level and the Gaussian prior."""
        a = float(self.scales[self.noisiest])
        s = float(self.stds[self.noisiest])
        prior_var = self.prior_variance
        flat = x0.reshape(x0.shape[0], -1).to(torch.float64)
        d = flat.shape[1]
        # KL(N(a x0, s^2) || N(0, v)) = 1/2 [s^2/v + a^2 x0^2 / v - 1 - log(s^2 / v)], summed over dimensions
        return 0.5 * (d * (s * s / prior_var - 1 - math.log(s * s / prior_var)) + a * a * flat.square().sum(1) / prior_var)

    def noisiest_first(self, table: torch.Tensor) -> torch.Tensor:
        """A per-level table reordered so the noisiest level comes first (VE's order; VP's reversed)."""
        return table if self.stds[0] >= self.stds[-1] else table.flip(0)

    @property
    def noisiest(self) -> int:
        """The index of the noisiest level (0 for VE, T - 1 for VP)."""
        return int(torch.argmax(self.noise_levels))

    @property
    def prior_variance(self) -> float:
        """The variance v of the Gaussian prior N(0, v I) that :meth:`prior_kl` measures against."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line summary of the process for logs."""
        raise NotImplementedError


class VEProcess(Process):
    """NCSN's variance-exploding process: x_i = x0 + sigma_i z over sigma_1 > ... > sigma_L.

    Prior: N(0, sigma_1^2 I) approximately (only when sigma_1 dwarfs the data's spread; see
    :meth:`prior_kl`). NCSN's Algorithm 1 starts from uniform noise on [0, 1], which
    :meth:`prior_sample` keeps.
    """

    name = "ve"
    data_range = (0.0, 1.0)

    def __init__(self, sigmas: torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        if sigmas.ndim != 1 or sigmas.numel() == 0 or not bool((sigmas > 0).all()):
            raise ValueError("sigmas must be a non-empty 1-D tensor of positive noise levels")
        super().__init__(torch.ones_like(sigmas), sigmas)

    @property
    def sigmas(self) -> torch.Tensor:
        """The noise levels sigma_1 > ... > sigma_L (the kernel standard deviations)."""
        return self.stds

    def noise_level_of_std(self, std):
        return std

    def scale_of_std(self, std):
        return torch.ones_like(std)

    def std_of_noise_level(self, noise_level):
        return noise_level

    def prior_sample(self, shape, generator=None, device=None):
        return torch.rand(shape, generator=generator, device=device)

    @property
    def prior_variance(self) -> float:
        return float(self.stds.max()) ** 2

    def describe(self) -> str:
        return f"VE, {self.num_levels} sigmas {float(self.stds[0]):g} -> {float(self.stds[-1]):g}"


class VPProcess(Process):
    """DDPM's variance-preserving process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z, t = 0..T-1.

    ``betas`` are beta_1..beta_T (:func:`ncsn.sigmas.ddpm_betas`); abar_t = prod_{s<=t} (1 - beta_s).
    Prior: N(0, I).
    """

    name = "vp"
    data_range = (-1.0, 1.0)

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty 1-D tensor of values in (0, 1)")
        self.betas = betas
        self.alphas_bar = torch.cumprod(1.0 - betas, dim=0)
        super().__init__(self.alphas_bar.sqrt(), (1.0 - self.alphas_bar).sqrt())

    def noise_level_of_std(self, std):
        s = std.double()
        return (s / (1.0 - s * s).clamp_min(1e-12).sqrt()).to(std.dtype)

    def scale_of_std(self, std):
        return (1.0 - std * std).clamp_min(0.0).sqrt()

    def std_of_noise_level(self, noise_level):
        # s / a = sigma~ with a^2 + s^2 = 1:  s = sigma~ / sqrt(1 + sigma~^2)
        return noise_level * torch.rsqrt(1.0 + noise_level * noise_level)

    def scale_of_noise_level(self, noise_level):
        return torch.rsqrt(1.0 + noise_level * noise_level)  # 1 / sqrt(1 + sigma~^2), accurate where a is tiny

    def prior_sample(self, shape, generator=None, device=None):
        return torch.randn(shape, generator=generator, device=device)

    @property
    def prior_variance(self) -> float:
        return 1.0

    def describe(self) -> str:
        return (f"VP, T={self.num_levels}, abar_T={float(self.alphas_bar[-1]):.2g} "
                f"(betas {float(self.betas[0]):g} -> {float(self.betas[-1]):g})")


def ve_view(score_fn, process: Process):
    """The score of y = x / a as a function of the noise level sigma~: the VE form of any Gaussian process.

    With x = a x0 + s z, y = x / a = x0 + sigma~ z (sigma~ = s / a) follows NCSN's VE process, and
    grad_y log p(y) = a grad_x log q(a y). The returned ``score(y, sigma~)`` evaluates ``score_fn(x, s)``
    at x = a y, s = a sigma~, so a VP model can be sampled with the VE form of the probability-flow
    ODE (:func:`ncsn.sampling.pf_ode`), consistent annealing or the ODE likelihood; start from
    y = x_T / a_T and read the sample at sigma~ = 0, where y = x0. For a VE process it is ``score_fn``.
    """
    if isinstance(process, VEProcess):
        return score_fn

    def score(y, noise_level):
        noise_level = noise_level.to(y.dtype)
        a = process.scale_of_noise_level(noise_level)
        a_col = per_sample(a, y)
        return a_col * score_fn(a_col * y, a * noise_level)

    return score


def ve_process(sigma_begin: float, sigma_end: float, num_levels: int) -> VEProcess:
    """A :class:`VEProcess` over ``num_levels`` geometric sigmas from ``sigma_begin`` down to ``sigma_end``."""
    from ncsn.sigmas import geometric

    return VEProcess(geometric(sigma_begin, sigma_end, num_levels, dtype=torch.float64))


def vp_process(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, schedule: str = "linear") -> VPProcess:
    """A :class:`VPProcess` over DDPM's ``T`` betas (:func:`ncsn.sigmas.ddpm_betas`, ``linear`` or ``cosine``)."""
    return VPProcess(ddpm_betas(T, beta_start, beta_end, schedule))
