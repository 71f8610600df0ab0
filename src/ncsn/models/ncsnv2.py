"""The NCSNv2 score networks (Song & Ermon 2020, "Improved Techniques for Training Score-Based
Generative Models", Section 4 and Appendix B).

The NCSN RefineNet's body (:class:`~ncsn.models.refinenet.RefineCascade`) with three changes:

* the normalisation is *unconditional* InstanceNorm++ (one ``gamma``, ``alpha``, ``beta`` per
  channel), and the refine blocks have no normalisation at all;
* chained residual pooling takes the maximum over 5x5 windows instead of the average;
* the noise level enters only through the output, ``s(x, sigma) = f(x) / sigma``
  (Technique 3), so the network accepts any sigma, not just its trained levels.

Three depths, by resolution (``model.arch``):

* ``ncsnv2`` (CIFAR-10 32 px, CelebA 64 px): NCSN's four stages, widths
  ``ngf, 2 ngf, 2 ngf, 2 ngf``, sub-sampling once, then dilation 2 and 4;
* ``ncsnv2_deeper`` (LSUN 96-128 px): five stages, widths ``ngf, 2, 2, 4, 4 ngf``, sub-sampling
  twice, then dilation 2 and 4;
* ``ncsnv2_deepest`` (FFHQ 256 px): six stages, widths ``ngf, 2, 2, 2, 4, 4 ngf``, sub-sampling
  three times, then dilation 2 and 4.

Image sides must be divisible by 2, 4 or 8 respectively for the reference code; this one also
takes other sizes (rounding down, up-sampled back).
"""

from __future__ import annotations

import torch

from ncsn.models.layers import check_numerics, no_norm, uncond_norm
from ncsn.models.refinenet import NCSN_STAGES, RefineCascade
from ncsn.score import per_sample, sigma_vector

#: per network: per stage (width / ngf, first block marked ``down``, dilation)
NCSNV2_STAGES = {
    "ncsnv2": NCSN_STAGES,
    "ncsnv2_deeper": ((1, False, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4)),
    "ncsnv2_deepest": ((1, False, 1), (2, True, 1), (2, True, 1), (2, True, 1), (4, True, 2), (4, True, 4)),
}


class NCSNv2(RefineCascade):
    """NCSNv2's score network ``s(x, sigma) = f(x) / sigma``.

    Args:
        channels: image channels C.
        ngf: base width (128 in all of the paper's configs).
        arch: ``ncsnv2``, ``ncsnv2_deeper`` or ``ncsnv2_deepest`` (:data:`NCSNV2_STAGES`).
        numerics: 2 (the reference code's: unbiased variance of the channel means,
            ``align_corners=True`` in the fusion) or 1 (this project's RefineNet's).

    ``forward(x, sigma)``: ``x`` of shape ``(N, C, H, W)``, ``sigma`` a ``(N,)`` tensor or a float.
    """

    #: f does not depend on sigma: any noise level is as good as a trained one
    continuous_noise_level = True

    def __init__(self, channels: int, ngf: int, arch: str = "ncsnv2", numerics: int = 2):
        if arch not in NCSNV2_STAGES:
            raise ValueError(f"arch must be one of {', '.join(NCSNV2_STAGES)}, got {arch!r}")
        reference = check_numerics(numerics) == 2
        super().__init__(channels, ngf, NCSNV2_STAGES[arch], uncond_norm(unbiased=reference), no_norm(),
                         align_corners=reference, pool="max")

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        self.check_input(x)
        sigma = sigma_vector(sigma, x)
        out = self.cascade(x, None)
        return out / per_sample(sigma, out)
