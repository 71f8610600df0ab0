"""Building blocks of the NCSN RefineNet and of the NCSNv2 networks.

Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
Distribution", Appendix A-B: conditional instance normalisation++ (CIN++), pre-activation
residual blocks with dilated convolutions, and the RefineNet cascade's blocks (Lin et
al. 2017, "RefineNet: Multi-Path Refinement Networks"): residual conv units (RCU),
multi-resolution fusion (MSF) and chained residual pooling (CRP, with average pooling).
Song & Ermon (2020), "Improved Techniques for Training Score-Based Generative Models"
(NCSNv2) use the same blocks with an unconditional InstanceNorm++, no normalisation inside
the refine blocks and max-pooling in the CRP.

Every module takes ``(x, level)`` where ``level`` is a ``(N,)`` integer tensor of
noise-level indices in ``[0, L)`` (``None`` for the unconditional networks); only the
normalisations depend on it, all convolution weights are shared across noise levels.
Blocks are given a normalisation factory ``norm(features) -> module`` (:func:`cond_norm`,
:func:`uncond_norm`, :func:`no_norm`), so one block serves both papers. The activation is
ELU throughout.

Two numerical choices differ between this project's first RefineNet and the authors'
reference code; ``numerics`` (``model.numerics``) picks them, so the project's own
checkpoints keep computing exactly what they did and imported weights compute what the
authors' code does (:data:`NUMERICS`):

* the variance of the channel means in (C)IN++: population (1) or unbiased (2);
* bilinear up-sampling in the multi-resolution fusion: pixel centres aligned as 2x2 mean
  pooling places them (``align_corners=False``, 1) or corner pixels aligned
  (``align_corners=True``, 2).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5

#: ``model.numerics``: 1, this project's first RefineNet (population variance of the channel means,
#: half-pixel bilinear fusion); 2, the authors' reference code (unbiased, ``align_corners=True``)
NUMERICS = (1, 2)

#: ``norm(features)``: a normalisation module called as ``norm(x, level)``
NormFactory = Callable[[int], nn.Module]


def check_numerics(numerics: int) -> int:
    """``numerics`` if it is one of :data:`NUMERICS` (1: this project's RefineNet, 2: the reference code's),
    else a ValueError."""
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    return numerics


def activation(x: torch.Tensor) -> torch.Tensor:
    """ELU, the activation of the NCSN RefineNet (Song & Ermon 2019, Appendix B)."""
    return F.elu(x)


def conv3x3(in_channels: int, out_channels: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """A 3x3 convolution (dilated by ``dilation``) that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=bias)


def instance_norm_plus(x: torch.Tensor, gamma: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                       unbiased: bool = False) -> torch.Tensor:
    """Instance normalisation++ (Song & Ermon 2019, Appendix A, eq. 7) with ``(N, C)`` or ``(1, C)`` parameters.

    For channel ``k``::

        z_k = gamma_k (x_k - mu_k) / s_k + beta_k + alpha_k (mu_k - m) / v

    where ``mu_k`` and ``s_k`` are the spatial mean and standard deviation of ``x_k``, and
    ``m``, ``v`` the mean and standard deviation of ``(mu_1, ..., mu_C)`` over channels. The
    alpha term puts back the channel means that plain instance normalisation removes
    (without it colours shift in generated images). ``s_k`` is the population standard
    deviation and ``EPS`` is added to both variances. ``v^2`` is the population variance
    (``unbiased=False``) or, as the reference code computes it, the unbiased one
    ``sum_k (mu_k - m)^2 / (C - 1)`` (``unbiased=True``; one channel falls back to the
    population variance, where ``mu_k - m = 0`` anyway).

    The reference code writes the map as ``gamma_k (x^_k + a_k (mu_k - m) / v) + beta_k``;
    that is this one with ``alpha_k = gamma_k a_k``. Statistics and the affine map are
    computed in at least float32 (then cast back to the input's dtype), the variance as
    ``E[x^2] - mu^2``: on CPU several times faster than ``torch.var_mean`` for the small
    feature maps here, and accurate while ``|mu_k| / s_k`` stays far below ``1e3``. The
    whole map is one per-sample, per-channel affine ``z = x * scale + shift``.
    """
    xs = x.to(torch.promote_types(x.dtype, torch.float32))
    mu = xs.mean(dim=(2, 3))  # (N, C)
    var = ((xs * xs).mean(dim=(2, 3)) - mu * mu).clamp_min(0.0)
    inv_s = torch.rsqrt(var + EPS)
    m = mu.mean(dim=1, keepdim=True)
    correction = 1 if unbiased and mu.shape[1] > 1 else 0
    inv_v = torch.rsqrt(mu.var(dim=1, correction=correction, keepdim=True) + EPS)
    scale = gamma * inv_s
    shift = beta + alpha * (mu - m) * inv_v - scale * mu
    return torch.addcmul(shift[:, :, None, None], xs, scale[:, :, None, None]).to(x.dtype)


class CondInstanceNormPlus(nn.Module):
    """Conditional instance normalisation++ (Song & Ermon 2019, Appendix A, eq. 7): one row of
    ``gamma``, ``alpha``, ``beta`` per noise level; :func:`instance_norm_plus` with the sample's row.

    Initialisation: ``gamma, alpha ~ N(1, 0.02)``, ``beta = 0``.
    """

    def __init__(self, num_features: int, num_levels: int, unbiased: bool = False):
        super().__init__()
        self.num_features = num_features
        self.unbiased = bool(unbiased)
        self.gamma = nn.Parameter(torch.empty(num_levels, num_features).normal_(1.0, 0.02))
        self.alpha = nn.Parameter(torch.empty(num_levels, num_features).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(num_levels, num_features))

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        return instance_norm_plus(x, self.gamma[level], self.alpha[level], self.beta[level], self.unbiased)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_levels={self.gamma.shape[0]}, unbiased={self.unbiased}"


class InstanceNormPlus(nn.Module):
    """Unconditional instance normalisation++ (NCSNv2, Song & Ermon 2020): :func:`instance_norm_plus`
    with one ``gamma``, ``alpha``, ``beta`` per channel shared by all noise levels (``level`` is ignored).

    Initialisation: ``gamma, alpha ~ N(1, 0.02)``, ``beta = 0``.
    """

    def __init__(self, num_features: int, unbiased: bool = True):
        super().__init__()
        self.num_features = num_features
        self.unbiased = bool(unbiased)
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        return instance_norm_plus(x, self.gamma[None], self.alpha[None], self.beta[None], self.unbiased)

    def extra_repr(self) -> str:
        return f"{self.num_features}, unbiased={self.unbiased}"


class NoNorm(nn.Module):
    """The identity in a normalisation's place (NCSNv2's refine blocks have none); no parameters."""

    def forward(self, x: torch.Tensor, level: torch.Tensor | None = None) -> torch.Tensor:
        return x


def cond_norm(num_levels: int, unbiased: bool = False) -> NormFactory:
    """CIN++ with ``num_levels`` rows (the NCSN RefineNet's normalisation)."""
    return lambda features: CondInstanceNormPlus(features, num_levels, unbiased)


def uncond_norm(unbiased: bool = True) -> NormFactory:
    """InstanceNorm++ with per-channel parameters (NCSNv2's normalisation)."""
    return lambda features: InstanceNormPlus(features, unbiased)


def no_norm() -> NormFactory:
    """No normalisation (NCSNv2's refine blocks)."""
    return lambda features: NoNorm()


class ConvMeanPool(nn.Module):
    """A stride-1 convolution followed by 2x2 mean pooling (halves height and width, rounding down)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(x), 2)


class CondResidualBlock(nn.Module):
    """Pre-activation residual block: ``shortcut(x) + conv2(act(norm2(conv1(act(norm1(x))))))``.

    ``down=True`` marks a stage's first block. With ``dilation == 1`` it sub-samples by
    two (``conv2`` and the 1x1 shortcut are followed by 2x2 mean pooling). With
    ``dilation > 1`` the sub-sampling is *replaced* by dilated convolutions, as the NCSN
    network does for every stage after the first sub-sampling one (Song & Ermon 2019,
    Appendix B): the resolution is kept and the shortcut is a learned dilated 3x3 conv.
    A block that neither changes the channel count nor is marked ``down`` has the
    identity shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormFactory, down: bool = False,
                 dilation: int = 1):
        super().__init__()
        self.norm1 = norm(in_channels)
        if down:
            self.conv1 = conv3x3(in_channels, in_channels, dilation)
            self.norm2 = norm(in_channels)
            if dilation == 1:
                self.conv2 = ConvMeanPool(in_channels, out_channels, 3)
                self.shortcut = ConvMeanPool(in_channels, out_channels, 1)
            else:
                self.conv2 = conv3x3(in_channels, out_channels, dilation)
                self.shortcut = conv3x3(in_channels, out_channels, dilation)
        else:
            self.conv1 = conv3x3(in_channels, out_channels, dilation)
            self.norm2 = norm(out_channels)
            self.conv2 = conv3x3(out_channels, out_channels, dilation)
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        h = self.conv1(activation(self.norm1(x, level)))
        h = self.conv2(activation(self.norm2(h, level)))
        return self.shortcut(x) + h


class CondRCU(nn.Module):
    """Residual conv unit (RefineNet's RCU): ``n_blocks`` residual blocks, each of ``n_stages``
    (norm -> ELU -> bias-free 3x3 conv) stages: ``x <- x + stages(x)`` (NCSNv2: no norm)."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, norm: NormFactory):
        super().__init__()
        self.n_stages = n_stages
        self.norms = nn.ModuleList(norm(features) for _ in range(n_blocks * n_stages))
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_blocks * n_stages))

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        h = x
        for j, (norm, conv) in enumerate(zip(self.norms, self.convs)):
            h = conv(activation(norm(h, level)))
            if (j + 1) % self.n_stages == 0:
                x = x + h
                h = x
        return x


class CondMSF(nn.Module):
    """Multi-resolution fusion: ``sum_i upsample(conv_i(norm_i(x_i)))`` at the finest input's
    resolution. Bilinear up-sampling with pixel centres aligned as 2x2 mean pooling places
    them (``align_corners=False``), or with the corner pixels aligned as the reference code
    does (``align_corners=True``: output pixel ``j`` of ``n_out`` samples the input at
    ``j (n_in - 1) / (n_out - 1)``)."""

    def __init__(self, in_channels: Sequence[int], features: int, norm: NormFactory, align_corners: bool = False):
        super().__init__()
        self.align_corners = bool(align_corners)
        self.norms = nn.ModuleList(norm(c) for c in in_channels)
        self.convs = nn.ModuleList(conv3x3(c, features) for c in in_channels)

    def forward(self, xs: Sequence[torch.Tensor], level: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = None
        for x, norm, conv in zip(xs, self.norms, self.convs):
            h = conv(norm(x, level))
            if tuple(h.shape[2:]) != tuple(size):
                h = F.interpolate(h, size=size, mode="bilinear", align_corners=self.align_corners)
            out = h if out is None else out + h
        return out


class CondCRP(nn.Module):
    """Chained residual pooling: ``x <- act(x)``, then ``n_stages`` times
    ``p <- conv(pool5x5(norm(p)))``, ``x <- x + p``. NCSN pools by the average
    (``pool="avg"``, zero padding counted), NCSNv2 by the maximum (``pool="max"``)."""

    def __init__(self, features: int, n_stages: int, norm: NormFactory, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be avg or max, got {pool!r}")
        self.pool = pool
        self.norms = nn.ModuleList(norm(features) for _ in range(n_stages))
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_stages))

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool2d if self.pool == "avg" else F.max_pool2d
        x = activation(x)
        path = x
        for norm, conv in zip(self.norms, self.convs):
            path = conv(pool(norm(path, level), 5, stride=1, padding=2))
            x = x + path
        return x


class CondRefineBlock(nn.Module):
    """One RefineNet block: per-input RCUs (2 blocks x 2 stages), fusion (when there are
    several inputs), chained residual pooling (2 stages), output RCU (3 blocks at the
    ``end`` of the cascade, else 1). ``align_corners`` and ``pool`` as in :class:`CondMSF`
    and :class:`CondCRP`."""

    def __init__(self, in_channels: Sequence[int], features: int, norm: NormFactory, end: bool = False,
                 align_corners: bool = False, pool: str = "avg"):
        super().__init__()
        if len(in_channels) == 1 and in_channels[0] != features:
            raise ValueError("a single-input refine block keeps the channel count")
        self.adapt = nn.ModuleList(CondRCU(c, 2, 2, norm) for c in in_channels)
        self.fuse = CondMSF(in_channels, features, norm, align_corners) if len(in_channels) > 1 else None
        self.crp = CondCRP(features, 2, norm, pool)
        self.out = CondRCU(features, 3 if end else 1, 2, norm)

    def forward(self, xs: Sequence[torch.Tensor], level: torch.Tensor) -> torch.Tensor:
        hs = [rcu(x, level) for rcu, x in zip(self.adapt, xs)]
        h = hs[0] if self.fuse is None else self.fuse(hs, level, hs[0].shape[2:])
        return self.out(self.crp(h, level), level)
