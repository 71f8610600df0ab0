"""The NCSN image score network: a conditional RefineNet with dilated convolutions.

Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
Distribution", Appendix B ("CondRefineNetDilated"). With ``ngf`` the base width:

* input centring ``2 x - 1`` and a 3x3 conv to ``ngf`` channels;
* four stages of two conditional pre-activation residual blocks each:
  stage 1 keeps ``ngf`` channels at full resolution; stage 2 goes to ``2 ngf`` and
  sub-samples by two (the only sub-sampling); stages 3 and 4 replace further
  sub-sampling by dilation 2 and 4, so they stay at half resolution (28x28 MNIST:
  28 -> 14, no padding tricks needed; odd sizes round down and are up-sampled back);
* a cascade of four conditional RefineNet blocks, coarse to fine: stage 4 alone
  (``2 ngf``), then fused with stage 3 (``2 ngf``), with stage 2 (``ngf``) and with
  stage 1 (``ngf``, back at full resolution);
* CIN++ -> ELU -> 3x3 conv back to the image's channels.

Noise conditioning: the network holds the L noise levels ``sigmas`` (decreasing) and
maps each sample's ``sigma`` to the index of the nearest level in log space; only the
CIN++ normalisations depend on that index, all other weights are shared across levels.

Data convention (as NCSN): images are in ``[0, 1]`` (plus Gaussian noise); the network
itself re-centres its input as ``2 x - 1`` -- a fixed map inside the model, so scores
are with respect to the ``[0, 1]`` data the samplers work with.
"""

from __future__ import annotations

import torch
from torch import nn

from ncsn.models.layers import CondInstanceNormPlus, CondRefineBlock, CondResidualBlock, activation, conv3x3
from ncsn.score import per_sample, sigma_vector


def _check_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).detach().clone()
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas > 0).all()):
        raise ValueError("sigmas must be finite and positive")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L)")
    return sigmas


class RefineNet(nn.Module):
    """Noise-conditional score network ``s(x, sigma)`` for images (NCSN, Song & Ermon 2019).

    Args:
        channels: image channels C.
        ngf: base width (64 for MNIST, 128 for CIFAR-10/CelebA in the paper).
        sigmas: the L noise levels, strictly decreasing; kept as the buffer ``sigmas``
            (saved in the state dict).
        scale_by_sigma: return ``f(x, sigma) / sigma`` (NCSNv2, Song & Ermon 2020,
            Technique 3) instead of ``f(x, sigma)``. The normalisation stays conditional
            on the level, so this only changes how the output's scale is parameterised.

    ``forward(x, sigma)`` takes ``x`` of shape ``(N, C, H, W)`` (H, W >= 2) and ``sigma`` a
    ``(N,)`` tensor or a Python float, and returns a tensor shaped like ``x``. It has no
    data-dependent Python control flow and works with ``channels_last`` and
    ``torch.compile``.
    """

    #: conditioned on the index of its nearest trained level: other noise levels are not its own
    continuous_noise_level = False

    def __init__(self, channels: int, ngf: int, sigmas: torch.Tensor, scale_by_sigma: bool = False):
        super().__init__()
        for name, value in (("channels", channels), ("ngf", ngf)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.channels = channels
        self.ngf = ngf
        self.scale_by_sigma = bool(scale_by_sigma)
        self.register_buffer("sigmas", _check_sigmas(sigmas))
        L = self.num_levels

        self.begin_conv = conv3x3(channels, ngf)
        self.stage1 = nn.ModuleList([CondResidualBlock(ngf, ngf, L), CondResidualBlock(ngf, ngf, L)])
        self.stage2 = nn.ModuleList([CondResidualBlock(ngf, 2 * ngf, L, down=True),
                                     CondResidualBlock(2 * ngf, 2 * ngf, L)])
        self.stage3 = nn.ModuleList([CondResidualBlock(2 * ngf, 2 * ngf, L, down=True, dilation=2),
                                     CondResidualBlock(2 * ngf, 2 * ngf, L, dilation=2)])
        self.stage4 = nn.ModuleList([CondResidualBlock(2 * ngf, 2 * ngf, L, down=True, dilation=4),
                                     CondResidualBlock(2 * ngf, 2 * ngf, L, dilation=4)])
        self.refine1 = CondRefineBlock([2 * ngf], 2 * ngf, L)
        self.refine2 = CondRefineBlock([2 * ngf, 2 * ngf], 2 * ngf, L)
        self.refine3 = CondRefineBlock([2 * ngf, 2 * ngf], ngf, L)
        self.refine4 = CondRefineBlock([ngf, ngf], ngf, L, end=True)
        self.end_norm = CondInstanceNormPlus(ngf, L)
        self.end_conv = conv3x3(ngf, channels)

    @property
    def num_levels(self) -> int:
        """L, the number of noise levels."""
        return self.sigmas.shape[0]

    def level_index(self, sigma) -> torch.Tensor:
        """Index of the noise level nearest to each ``sigma`` in log space:
        ``argmin_i |log sigma - log sigma_i|`` (a long tensor shaped like ``sigma``)."""
        sigma = torch.as_tensor(sigma, dtype=self.sigmas.dtype, device=self.sigmas.device)
        return (sigma.log().unsqueeze(-1) - self.sigmas.log()).abs().argmin(dim=-1)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected x of shape (N, {self.channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] < 2 or x.shape[3] < 2:
            raise ValueError(f"images must be at least 2x2, got {x.shape[2]}x{x.shape[3]}")
        sigma = sigma_vector(sigma, x)
        level = self.level_index(sigma)

        h = self.begin_conv(2 * x - 1)
        skips = []
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                h = block(h, level)
            skips.append(h)
        h1, h2, h3, h4 = skips

        h = self.refine1([h4], level)
        h = self.refine2([h3, h], level)
        h = self.refine3([h2, h], level)
        h = self.refine4([h1, h], level)
        out = self.end_conv(activation(self.end_norm(h, level)))
        if self.scale_by_sigma:
            out = out / per_sample(sigma, out)
        return out
