"""Noise-conditional building blocks of the NCSN RefineNet.

Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
Distribution", Appendix A-B: conditional instance normalisation++ (CIN++), pre-activation
residual blocks with dilated convolutions, and the RefineNet cascade's blocks (Lin et
al. 2017, "RefineNet: Multi-Path Refinement Networks"): residual conv units (RCU),
multi-resolution fusion (MSF) and chained residual pooling (CRP, with average pooling).

Every conditional module takes ``(x, level)`` where ``level`` is a ``(N,)`` integer
tensor of noise-level indices in ``[0, L)``; only the normalisations depend on it, all
convolution weights are shared across noise levels. The activation is ELU throughout.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def activation(x: torch.Tensor) -> torch.Tensor:
    """ELU, the activation of the NCSN RefineNet (Song & Ermon 2019, Appendix B)."""
    return F.elu(x)


def conv3x3(in_channels: int, out_channels: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """A 3x3 convolution (dilated by ``dilation``) that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=bias)


class CondInstanceNormPlus(nn.Module):
    """Conditional instance normalisation++ (Song & Ermon 2019, Appendix A, eq. 7).

    For channel ``k`` of one sample at noise level ``i``::

        z_k = gamma[i, k] (x_k - mu_k) / s_k + beta[i, k] + alpha[i, k] (mu_k - m) / v

    where ``mu_k`` and ``s_k`` are the spatial mean and standard deviation of ``x_k``, and
    ``m``, ``v`` the mean and standard deviation of ``(mu_1, ..., mu_C)`` over channels.
    The alpha term puts back the channel means that plain instance normalisation
    removes (without it colours shift in generated images). Standard deviations are
    population ones with ``EPS`` added to the variance (so one channel is allowed: then
    ``mu_k - m = 0``). Statistics and the affine map are computed in at least float32
    (then cast back to the input's dtype), the variance as ``E[x^2] - mu^2``: on CPU
    several times faster than ``torch.var_mean`` for the small feature maps here, and
    accurate while ``|mu_k| / s_k`` stays far below ``1e3``. The whole
    map is one per-sample, per-channel affine ``z = x * scale + shift``.

    Initialisation: ``gamma, alpha ~ N(1, 0.02)``, ``beta = 0``.
    """

    def __init__(self, num_features: int, num_levels: int):
        super().__init__()
        self.num_features = num_features
        self.gamma = nn.Parameter(torch.empty(num_levels, num_features).normal_(1.0, 0.02))
        self.alpha = nn.Parameter(torch.empty(num_levels, num_features).normal_(1.0, 0.02))
        self.beta = nn.Parameter(torch.zeros(num_levels, num_features))

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        mu = xs.mean(dim=(2, 3))  # (N, C)
        var = ((xs * xs).mean(dim=(2, 3)) - mu * mu).clamp_min(0.0)
        inv_s = torch.rsqrt(var + EPS)
        m = mu.mean(dim=1, keepdim=True)
        inv_v = torch.rsqrt(mu.var(dim=1, correction=0, keepdim=True) + EPS)
        gamma, alpha, beta = self.gamma[level], self.alpha[level], self.beta[level]
        scale = gamma * inv_s
        shift = beta + alpha * (mu - m) * inv_v - scale * mu
        return torch.addcmul(shift[:, :, None, None], xs, scale[:, :, None, None]).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_levels={self.gamma.shape[0]}"


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

    def __init__(self, in_channels: int, out_channels: int, num_levels: int, down: bool = False,
                 dilation: int = 1):
        super().__init__()
        self.norm1 = CondInstanceNormPlus(in_channels, num_levels)
        if down:
            self.conv1 = conv3x3(in_channels, in_channels, dilation)
            self.norm2 = CondInstanceNormPlus(in_channels, num_levels)
            if dilation == 1:
                self.conv2 = ConvMeanPool(in_channels, out_channels, 3)
                self.shortcut = ConvMeanPool(in_channels, out_channels, 1)
            else:
                self.conv2 = conv3x3(in_channels, out_channels, dilation)
                self.shortcut = conv3x3(in_channels, out_channels, dilation)
        else:
            self.conv1 = conv3x3(in_channels, out_channels, dilation)
            self.norm2 = CondInstanceNormPlus(out_channels, num_levels)
            self.conv2 = conv3x3(out_channels, out_channels, dilation)
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        h = self.conv1(activation(self.norm1(x, level)))
        h = self.conv2(activation(self.norm2(h, level)))
        return self.shortcut(x) + h


class CondRCU(nn.Module):
    """Conditional residual conv unit (RefineNet's RCU): ``n_blocks`` residual blocks, each of
    ``n_stages`` (norm -> ELU -> bias-free 3x3 conv) stages: ``x <- x + stages(x)``."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, num_levels: int):
        super().__init__()
        self.n_stages = n_stages
        self.norms = nn.ModuleList(CondInstanceNormPlus(features, num_levels) for _ in range(n_blocks * n_stages))
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
    """Conditional multi-resolution fusion: ``sum_i upsample(conv_i(norm_i(x_i)))`` at the
    finest input's resolution (bilinear up-sampling, pixel centres aligned as 2x2 mean
    pooling places them)."""

    def __init__(self, in_channels: Sequence[int], features: int, num_levels: int):
        super().__init__()
        self.norms = nn.ModuleList(CondInstanceNormPlus(c, num_levels) for c in in_channels)
        self.convs = nn.ModuleList(conv3x3(c, features) for c in in_channels)

    def forward(self, xs: Sequence[torch.Tensor], level: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        out = None
        for x, norm, conv in zip(xs, self.norms, self.convs):
            h = conv(norm(x, level))
            if tuple(h.shape[2:]) != tuple(size):
                h = F.interpolate(h, size=size, mode="bilinear", align_corners=False)
            out = h if out is None else out + h
        return out


class CondCRP(nn.Module):
    """Conditional chained residual pooling: ``x <- act(x)``, then ``n_stages`` times
    ``p <- conv(avgpool5x5(norm(p)))``, ``x <- x + p`` (NCSN uses average, not max, pooling)."""

    def __init__(self, features: int, n_stages: int, num_levels: int):
        super().__init__()
        self.norms = nn.ModuleList(CondInstanceNormPlus(features, num_levels) for _ in range(n_stages))
        self.convs = nn.ModuleList(conv3x3(features, features, bias=False) for _ in range(n_stages))

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        x = activation(x)
        path = x
        for norm, conv in zip(self.norms, self.convs):
            path = conv(F.avg_pool2d(norm(path, level), 5, stride=1, padding=2))
            x = x + path
        return x


class CondRefineBlock(nn.Module):
    """One RefineNet block: per-input RCUs (2 blocks x 2 stages), fusion (when there are
    several inputs), chained residual pooling (2 stages), output RCU (3 blocks at the
    ``end`` of the cascade, else 1)."""

    def __init__(self, in_channels: Sequence[int], features: int, num_levels: int, end: bool = False):
        super().__init__()
        if len(in_channels) == 1 and in_channels[0] != features:
            raise ValueError("a single-input refine block keeps the channel count")
        self.adapt = nn.ModuleList(CondRCU(c, 2, 2, num_levels) for c in in_channels)
        self.fuse = CondMSF(in_channels, features, num_levels) if len(in_channels) > 1 else None
        self.crp = CondCRP(features, 2, num_levels)
        self.out = CondRCU(features, 3 if end else 1, 2, num_levels)

    def forward(self, xs: Sequence[torch.Tensor], level: torch.Tensor) -> torch.Tensor:
        hs = [rcu(x, level) for rcu, x in zip(self.adapt, xs)]
        h = hs[0] if self.fuse is None else self.fuse(hs, level, hs[0].shape[2:])
        return self.out(self.crp(h, level), level)
