"""Model zoo: score networks for 2-D data and images, energy networks.

- :class:`RefineNet`: NCSN's dilated RefineNet with conditional instance normalisation++.
- :class:`ScoreMLP`, :class:`EnergyMLP`: noise-conditional networks for low-dimensional data.
"""

from ncsn.models.mlp import EnergyMLP, ScoreMLP
from ncsn.models.refinenet import RefineNet

__all__ = ["RefineNet", "ScoreMLP", "EnergyMLP"]
