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

from ncsn.models.layers import (CondRefineBlock, CondResidualBlock, NormFactory, activation, check_numerics,
                                cond_norm, conv3x3)
from ncsn.score import per_sample, sigma_vector

#: NCSN's stages (Appendix B): per stage (width / ngf, first block marked ``down``, dilation)
NCSN_STAGES = ((1, False, 1), (2, True, 1), (2, True, 2), (2, True, 4))


def _check_sigmas(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).detach().clone()
    if sigmas.ndim != 1 or sigmas.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D tensor, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas > 0).all()):
        raise ValueError("sigmas must be finite and positive")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly decreasing (sigma_1 > ... > sigma_L)")
    return sigmas


class RefineCascade(nn.Module):
    """The body both papers share: ``begin_conv``, stages of two residual blocks, a cascade of
    RefineNet blocks coarse to fine, then norm -> ELU -> ``end_conv``.

    ``stages`` lists per stage ``(width / ngf, down, dilation)``; stage ``k`` is the attribute
    ``stage{k}``. Refine block ``k`` (``refine{k}``) takes the ``k``-th coarsest stage's output
    (and the previous refine block's) and gives the width of the next finer stage, ``ngf`` at
    the end. ``norm`` normalises the residual blocks and the final features, ``refine_norm``
    the refine blocks. The input is centred as ``2 x - 1``.
    """

    def __init__(self, channels: int, ngf: int, stages, norm: NormFactory, refine_norm: NormFactory,
                 align_corners: bool, pool: str):
        super().__init__()
        for name, value in (("channels", channels), ("ngf", ngf)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.channels = channels
        self.ngf = ngf
        self.depth = n = len(stages)
        widths = [mult * ngf for mult, _, _ in stages]

        self.begin_conv = conv3x3(channels, ngf)
        previous = ngf
        for k, (width, (_, down, dilation)) in enumerate(zip(widths, stages), start=1):
            setattr(self, f"stage{k}", nn.ModuleList([
                CondResidualBlock(previous, width, norm, down=down, dilation=dilation),
                CondResidualBlock(width, width, norm, dilation=dilation)]))
            previous = width
        inputs = []
        for k in range(1, n + 1):
            inputs = [widths[n - k]] + inputs[-1:]
            features = widths[max(n - k - 1, 0)]
            setattr(self, f"refine{k}", CondRefineBlock(inputs, features, refine_norm, end=k == n,
                                                        align_corners=align_corners, pool=pool))
            inputs = [features]
        self.end_norm = norm(ngf)
        self.end_conv = conv3x3(ngf, channels)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless ``x`` is a batch ``(N, channels, H, W)`` of images at least 2x2."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected x of shape (N, {self.channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] < 2 or x.shape[3] < 2:
            raise ValueError(f"images must be at least 2x2, got {x.shape[2]}x{x.shape[3]}")

    def cascade(self, x: torch.Tensor, level: torch.Tensor | None) -> torch.Tensor:
        """The network's output before any division by sigma."""
        h = self.begin_conv(2 * x - 1)
        skips = []
        for k in range(1, self.depth + 1):
            for block in getattr(self, f"stage{k}"):
                h = block(h, level)
            skips.append(h)
        h = self.refine1([skips[-1]], level)
        for k in range(2, self.depth + 1):
            h = getattr(self, f"refine{k}")([skips[self.depth - k], h], level)
        return self.end_conv(activation(self.end_norm(h, level)))


class RefineNet(RefineCascade):
    """Noise-conditional score network ``s(x, sigma)`` for images (NCSN, Song & Ermon 2019).

    Args:
        channels: image channels C.
        ngf: base width (64 for MNIST, 128 for CIFAR-10/CelebA in the paper).
        sigmas: the L noise levels, strictly decreasing; kept as the buffer ``sigmas``
            (saved in the state dict).
        scale_by_sigma: return ``f(x, sigma) / sigma`` (NCSNv2, Song & Ermon 2020,
            Technique 3) instead of ``f(x, sigma)``. The normalisation stays conditional
            on the level, so this only changes how the output's scale is parameterised.
        numerics: 1 (this project's first choices, what its checkpoints were trained with)
            or 2 (the authors' reference code: unbiased variance of the channel means in CIN++,
            ``align_corners=True`` in the fusion; for imported weights). See
            :mod:`ncsn.models.layers`. The weights are the same either way.

    ``forward(x, sigma)`` takes ``x`` of shape ``(N, C, H, W)`` (H, W >= 2) and ``sigma`` a
    ``(N,)`` tensor or a Python float, and returns a tensor shaped like ``x``. It has no
    data-dependent Python control flow and works with ``channels_last`` and
    ``torch.compile``.
    """

    #: conditioned on the index of its nearest trained level: other noise levels are not its own
    continuous_noise_level = False

    def __init__(self, channels: int, ngf: int, sigmas: torch.Tensor, scale_by_sigma: bool = False,
                 numerics: int = 1):
        sigmas = _check_sigmas(sigmas)
        reference = check_numerics(numerics) == 2
        norm = cond_norm(sigmas.shape[0], unbiased=reference)  # the same conditional norm in stages and refine blocks
        super().__init__(channels, ngf, NCSN_STAGES, norm, norm, align_corners=reference, pool="avg")
        self.scale_by_sigma = bool(scale_by_sigma)
        self.register_buffer("sigmas", sigmas)

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
        self.check_input(x)
        sigma = sigma_vector(sigma, x)
        out = self.cascade(x, self.level_index(sigma))
        if self.scale_by_sigma:
            out = out / per_sample(sigma, out)
        return out
