"""Two-dimensional toy distributions for score matching and Langevin dynamics.

Every distribution has ``sample(n, generator=None) -> (n, 2)`` (on the generator's device,
CPU without one). Gaussian mixtures also have the closed forms ``log_prob(x, sigma=0.0)`` and
``score(x, sigma=0.0)`` of the distribution convolved with N(0, sigma^2 I), which is what a
noise-conditional score network estimates at level sigma. ``mixture.score`` is therefore an
exact noise-conditional score function ``s(x, sigma)`` for the samplers.

:func:`paper_mixture` is the example of Song & Ermon (2019), "Generative Modeling by
Estimating Gradients of the Data Distribution", Section 3.2 / Figure 3. The others
(eight Gaussians, rings, two moons, Swiss roll, checkerboard) are common 2-D benchmarks,
scaled to lie roughly within [-4, 4]^2.
"""

from __future__ import annotations

import math

import torch

from ncsn.errors import UserError


def _device(generator: torch.Generator | None, default="cpu") -> torch.device:
    return generator.device if generator is not None else torch.device(default)


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of samples must be a non-negative integer, got {n!r}")
    return n


class GaussianMixture:
    r""":math:`p(x) = \sum_k w_k \mathcal{N}(x; \mu_k, \mathrm{std}_k^2 I)`, each Gaussian smoothing in closed form.

    Convolving with N(0, sigma^2 I) keeps the means and weights and widens each component to
    std_k' = sqrt(std_k^2 + sigma^2), so the perturbed density and its score are exact at
    every noise level. Densities go through logsumexp and scores through the components'
    responsibilities (a softmax), so both stay finite far from the modes.

    Args:
        means: ``(K, D)`` component means.
        stds: ``(K,)`` isotropic standard deviations (positive).
        weights: ``(K,)`` mixture weights (positive; normalised to sum to 1).
    """

    def __init__(self, means, stds, weights):
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.float()
        stds = torch.as_tensor(stds, dtype=means.dtype, device=means.device)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if means.ndim != 2 or means.shape[0] == 0:
            raise ValueError(f"means must have shape (K, D) with K >= 1, got {tuple(means.shape)}")
        k = means.shape[0]
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(f"stds and weights must have shape ({k},), got {tuple(stds.shape)} and {tuple(weights.shape)}")
        if not bool((stds > 0).all()) or not bool(torch.isfinite(stds).all()):
            raise ValueError("stds must be finite and positive")
        if not bool((weights > 0).all()) or not bool(torch.isfinite(weights).all()):
            raise ValueError("weights must be finite and positive")
        self.means = means
        self.stds = stds
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        """The dimension D of the data."""
        return self.means.shape[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(K={self.means.shape[0]}, D={self.dim})"

    def _params_like(self, x: torch.Tensor):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        kw = dict(dtype=x.dtype, device=x.device)
        return self.means.to(**kw), self.stds.to(**kw), self.weights.to(**kw)

    def _component_terms(self, x: torch.Tensor, sigma):
        """Per-component log(w_k N(x; mu_k, var_k I)) ``(N, K)``, the variances ``(N, K)`` and means."""
        means, stds, weights = self._params_like(x)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 1 and sigma.shape[0] != x.shape[0] or sigma.ndim > 1:
            raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
        sigma = sigma.reshape(-1, 1)  # (1, 1) or (N, 1)
        var = stds.square().unsqueeze(0) + sigma.square()  # (N or 1, K)
        sq_dist = (x.unsqueeze(1) - means.unsqueeze(0)).square().sum(dim=-1)  # (N, K)
        log_terms = weights.log() - 0.5 * sq_dist / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return log_terms, var.expand_as(log_terms), means

    def log_prob(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        """log p_sigma(x) = logsumexp_k [log w_k + log N(x; mu_k, (std_k^2 + sigma^2) I)], shape ``(N,)``.

        ``sigma`` is a scalar or an ``(N,)`` tensor (one level per sample).
        """
        log_terms, _, _ = self._component_terms(x, sigma)
        return torch.logsumexp(log_terms, dim=1)

    def score(self, x: torch.Tensor, sigma=0.0) -> torch.Tensor:
        r"""The score of the smoothed mixture, shape ``(N, D)``:

        .. math:: \nabla_x \log p_\sigma(x) = \sum_k r_k(x)\, \frac{\mu_k - x}{\mathrm{std}_k^2 + \sigma^2}.

        r_k(x) = softmax_k(log w_k + log N(x; mu_k, (std_k^2 + sigma^2) I)) are the responsibilities.
        ``sigma`` is a scalar or an ``(N,)`` tensor, so this is a noise-conditional score function.
        """
        log_terms, var, means = self._component_terms(x, sigma)
        resp_over_var = (torch.softmax(log_terms, dim=1) / var).unsqueeze(-1)  # (N, K, 1)
        return (resp_over_var * (means.unsqueeze(0) - x.unsqueeze(1))).sum(dim=1)

    def convolved(self, sigma: float) -> "GaussianMixture":
        """The mixture convolved with N(0, sigma^2 I): the same means and weights, stds sqrt(std^2 + sigma^2)."""
        return GaussianMixture(self.means, torch.sqrt(self.stds.square() + float(sigma) ** 2), self.weights)

    def nearest_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Index (LongTensor ``(N,)``) of the mean nearest to each row of ``x``."""
        means, _, _ = self._params_like(x)
        return (x.unsqueeze(1) - means.unsqueeze(0)).square().sum(dim=-1).argmin(dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws: a component k ~ Categorical(w), then mu_k + std_k z with z ~ N(0, I)."""
        n = _check_n(n)
        device = _device(generator, self.means.device)
        means, stds, weights = (t.to(device) for t in (self.means, self.stds, self.weights))
        if n == 0:
            return means.new_zeros((0, self.dim))
        components = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, self.dim), generator=generator, device=device, dtype=means.dtype)
        return means[components] + stds[components, None] * noise


def paper_mixture() -> GaussianMixture:
    """p = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I): the toy of Song & Ermon (2019), Section 3.2.

    Its score alone cannot tell the modes' weights apart: plain Langevin dynamics from a
    uniform start ends with about as many samples in each mode, annealed Langevin recovers 1/5.
    """
    return GaussianMixture(torch.tensor([[-5.0, -5.0], [5.0, 5.0]]), torch.ones(2), torch.tensor([0.2, 0.8]))


class EightGaussians(GaussianMixture):
    """Eight equally weighted Gaussians of std ``std`` at angles 2 pi k / 8 on a circle of ``radius``."""

    def __init__(self, radius: float = 3.0, std: float = 0.25):
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
        super().__init__(means.float(), torch.full((8,), float(std)), torch.full((8,), 1 / 8))


class Rings:
    """Concentric circles of radii ``radius * k / n_rings`` (k = 1..n_rings), mass proportional to
    circumference, with Gaussian radial noise of std ``noise``."""

    def __init__(self, n_rings: int = 3, radius: float = 3.5, noise: float = 0.08):
        if n_rings < 1:
            raise ValueError(f"n_rings must be positive, got {n_rings}")
        self.radii = torch.arange(1, n_rings + 1, dtype=torch.float32) * (radius / n_rings)
        self.noise = noise

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws as an ``(n, 2)`` tensor, on the generator's device (CPU without one)."""
        n = _check_n(n)
        device = _device(generator)
        radii = self.radii.to(device)
        ring = torch.multinomial(radii, n, replacement=True, generator=generator) if n else radii.new_zeros(0).long()
        angle = torch.rand(n, generator=generator, device=device) * (2 * math.pi)
        r = radii[ring] + self.noise * torch.randn(n, generator=generator, device=device)
        return torch.stack([r * angle.cos(), r * angle.sin()], dim=1)


class TwoMoons:
    """Two interleaved half circles (the upper one centred at the origin, the lower at (1, 0.5)),
    with Gaussian noise of std ``noise``, centred and scaled by ``scale`` to about [-3.5, 3.5] x [-2, 2]."""

    def __init__(self, noise: float = 0.1, scale: float = 2.2):
        self.noise, self.scale = noise, scale

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws as an ``(n, 2)`` tensor, on the generator's device (CPU without one)."""
        n = _check_n(n)
        device = _device(generator)
        t = torch.rand(n, generator=generator, device=device) * math.pi
        lower = torch.rand(n, generator=generator, device=device) < 0.5
        upper_x, upper_y = t.cos(), t.sin()
        x = torch.where(lower, 1.0 - upper_x, upper_x)
        y = torch.where(lower, 0.5 - upper_y, upper_y)
        points = torch.stack([x - 0.5, y - 0.25], dim=1)
        points = points + self.noise * torch.randn((n, 2), generator=generator, device=device)
        return self.scale * points


class SwissRoll:
    """The 2-D Swiss roll (t cos t, t sin t), t = 1.5 pi (1 + 2u), u ~ U[0, 1], with Gaussian noise of
    std ``noise``, scaled by ``scale`` (|t| <= 4.5 pi, so about [-3.6, 3.6]^2 by default)."""

    def __init__(self, noise: float = 0.5, scale: float = 0.25):
        self.noise, self.scale = noise, scale

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws as an ``(n, 2)`` tensor, on the generator's device (CPU without one)."""
        n = _check_n(n)
        device = _device(generator)
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, device=device))
        points = torch.stack([t * t.cos(), t * t.sin()], dim=1)
        points = points + self.noise * torch.randn((n, 2), generator=generator, device=device)
        return self.scale * points


class Checkerboard:
    """Uniform on the 8 dark squares of a 4 x 4 board covering [-4, 4]^2 (squares of side 2;
    column i, row j is dark when i + j is even)."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws as an ``(n, 2)`` tensor, on the generator's device (CPU without one)."""
        n = _check_n(n)
        device = _device(generator)
        column = torch.randint(0, 4, (n,), generator=generator, device=device)
        row = 2 * torch.randint(0, 2, (n,), generator=generator, device=device) + column % 2
        corner = torch.stack([column, row], dim=1).float() * 2.0 - 4.0
        return corner + 2.0 * torch.rand((n, 2), generator=generator, device=device)


_TOYS = {
    "mixture": paper_mixture,
    "8gaussians": EightGaussians,
    "moons": TwoMoons,
    "swissroll": SwissRoll,
    "checkerboard": Checkerboard,
    "rings": Rings,
}
TOY_NAMES = tuple(_TOYS)


def get_toy(name: str):
    """The toy distribution called ``name`` (one of :data:`TOY_NAMES`), with default settings."""
    try:
        return _TOYS[name]()
    except KeyError:
        raise UserError(f"unknown toy distribution {name!r}; choose one of: {', '.join(TOY_NAMES)}") from None
