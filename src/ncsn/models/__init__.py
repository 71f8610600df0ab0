"""Model zoo: score networks for 2-D data and images, energy networks.

- :class:`RefineNet`: NCSN's dilated RefineNet with conditional instance normalisation++.
- :class:`NCSNv2`: NCSNv2's networks (unconditional InstanceNorm++, output f(x) / sigma).
- :class:`UNet`: DDPM's U-Net (Ho et al. 2020), conditioned on a continuous noise level.
- :class:`ScoreModel`: a network with its forward process and output parameterisation, as one
  score function (built from a config by :mod:`ncsn.build`).
- :class:`ScoreMLP`, :class:`EnergyMLP`: noise-conditional networks for low-dimensional data.
"""

from ncsn.models.mlp import EnergyMLP, ScoreMLP
from ncsn.models.ncsnv2 import NCSNv2
from ncsn.models.refinenet import RefineNet
from ncsn.models.score_model import ScoreModel
from ncsn.models.unet import UNet

__all__ = ["RefineNet", "NCSNv2", "UNet", "ScoreModel", "ScoreMLP", "EnergyMLP"]
