"""A noise-conditional U-Net after Ho et al. (2020), "Denoising Diffusion Probabilistic Models".

The architecture of Ho et al.'s Appendix B (a PixelCNN++-style U-Net backbone with
Wide-ResNet blocks, group normalisation and self-attention), conditioned on a continuous
noise level ``sigma`` instead of an integer diffusion timestep:

* noise embedding: sinusoidal features of ``c = 100 ln sigma`` (:func:`noise_embedding`,
  ``ch`` features), then ``Linear(ch, 4 ch) -> SiLU -> Linear(4 ch, 4 ch)``;
* ``conv_in``: a 3x3 conv to ``ch`` channels;
* down path: for each level ``i``, ``num_res_blocks`` residual blocks at ``ch * ch_mult[i]``
  channels, each followed by self-attention when the level's resolution is in
  ``attn_resolutions``; a stride-2 3x3 conv halves the resolution after every level but
  the last. The output of ``conv_in``, of every block and of every down-sampling is kept
  as a skip connection;
* middle: residual block, self-attention, residual block;
* up path, mirrored: per level ``num_res_blocks + 1`` residual blocks, each taking the
  concatenation of the running features and one skip connection (popped last-in
  first-out), attention where the resolution is in ``attn_resolutions``, and after every
  level but the last a nearest-neighbour up-sampling to the next skip's size followed by
  a 3x3 conv (so odd sizes such as 7 -> 4 -> 7 work);
* output: GroupNorm -> SiLU -> 3x3 conv to the image's channels, zero-initialised.

Residual block: ``GroupNorm -> SiLU -> conv3x3``, plus a per-channel projection of the
SiLU'd noise embedding, then ``GroupNorm -> SiLU -> Dropout -> conv3x3`` (zero-initialised),
added to the input (through a 1x1 conv when the channel count changes). Attention block:
single-head dot-product self-attention over the spatial positions with 1x1 convs for
queries, keys, values and a zero-initialised 1x1 output projection, added to the input.
Weights are Xavier-uniform and biases zero, as in Ho et al.

The output is not parameterised: a caller decides what it means. Trained as a noise
predictor ``eps(x + sigma z, sigma) ~ z`` (Ho et al.'s objective), the score is
``-eps / sigma``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ncsn.score import sigma_vector

GROUPNORM_EPS = 1e-6

UNET_PRESETS: dict[str, dict] = {
    # 8x8 digits: 8 -> 4, self-attention only in the middle (at 4x4), sized to the digits
    # RefineNet's 518,817 parameters: 517,537 for 1 channel.
    "digits": dict(ch=24, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(), dropout=0.1, image_size=8),
    # 28x28 MNIST: 28 -> 14 -> 7, attention at 14x14 (and in the middle, at 7x7); 6,469,889 parameters
    # for 1 channel.
    "mnist": dict(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(14,), dropout=0.1, image_size=28),
    # Ho et al.'s CIFAR-10 model: 35,746,307 parameters for 3 channels.
    "cifar10": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                    image_size=32),
}


def num_groups(channels: int) -> int:
    """Number of GroupNorm groups for ``channels`` channels.

    Ho et al. use 32 groups throughout (every width in their models is a multiple of 32).
    Narrow networks would then get groups of one or two channels, so this takes the largest
    divisor of ``channels`` that is at most ``min(32, channels // 4)`` -- at least four
    channels per group -- and at least 1. It gives 32 for every width of Ho's models.
    """
    limit = max(1, min(32, channels // 4))
    return next(g for g in range(limit, 0, -1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with :func:`num_groups` groups and Ho et al.'s ``eps = 1e-6``."""
    return nn.GroupNorm(num_groups(channels), channels, eps=GROUPNORM_EPS)


def noise_embedding(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the noise level: ``(N,)`` -> ``(N, dim)``.

    With ``c = 100 ln sigma`` and frequencies ``w_k = 10000^(-k / (dim / 2))`` for
    ``k = 0 .. dim/2 - 1``, the features are ``[sin(c w_0), ..., sin(c w_{dim/2-1}),
    cos(c w_0), ..., cos(c w_{dim/2-1})]`` (a zero column is appended when ``dim`` is odd).
    This is the Transformer position embedding Ho et al. apply to the integer timestep
    ``t``, applied to ``c`` instead:

    * the log makes one embedding serve noise levels of very different ranges -- about
      0.01 .. 5 for NCSN, 0.01 .. 160 for the noise levels ``sqrt((1 - abar_t) / abar_t)``
      equivalent to DDPM's 1000 timesteps -- with a resolution that is relative, not
      absolute;
    * the factor 100 gives adjacent DDPM timesteps a spacing in ``c`` comparable to the
      unit spacing of Ho's integer ``t`` (median 0.68, between 0.5 and 2 for 95 % of the
      steps, larger only for the first few, smallest levels).

    The embedding is computed in at least float32 (``c`` reaches several hundred, beyond
    half precision's resolution) and is a smooth function of ``sigma``.
    """
    if sigma.ndim != 1:
        raise ValueError(f"sigma must have shape (N,), got {tuple(sigma.shape)}")
    half = dim // 2
    dtype = torch.promote_types(sigma.dtype, torch.float32)
    c = 100.0 * sigma.to(dtype).log()
    k = torch.arange(half, dtype=dtype, device=sigma.device)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    angles = c[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Ho et al.'s residual block with an additive per-channel noise-embedding projection."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, ``softmax(q k^T / sqrt(C)) v``, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, height, width = x.shape
        h = self.norm(x)

        # The explicit .contiguous() calls let torch.compile with dynamic spatial sizes decide the
        # memory layouts (without them inductor cannot order the symbolic strides).
        def tokens(t: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, HW, C)
            return t.contiguous().reshape(n, c, height * width).transpose(1, 2)

        a = F.scaled_dot_product_attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        a = a.transpose(1, 2).reshape(n, c, height, width).contiguous()
        return x + self.proj_out(a)


class Downsample(nn.Module):
    """A 3x3 stride-2 conv (padding 1): ``H -> ceil(H / 2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour up-sampling to a given size, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention."""

    def __init__(self, blocks: Sequence[ResBlock], attn: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList([AttnBlock(b.conv2.out_channels) if attn else nn.Identity() for b in blocks])


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class UNet(nn.Module):
    """Noise-conditional U-Net ``f(x, sigma)`` after Ho et al. (2020), Appendix B.

    Args:
        channels: image channels C.
        ch: base width; the noise embedding has ``ch`` features and its MLP ``4 ch``.
        ch_mult: width multiplier of each resolution level (one level per entry; every
            level but the last ends with a 2x down-sampling).
        num_res_blocks: residual blocks per level in the down path (``+ 1`` in the up path).
        attn_resolutions: resolutions (side lengths, as tracked from ``image_size``) at which
            self-attention follows each residual block.
        dropout: dropout rate inside the residual blocks, in ``[0, 1)``.
        image_size: the nominal side length of the images; it decides only where attention
            goes (level ``i`` has resolution ``image_size`` halved, rounding up, ``i``
            times). Other sizes, non-square ones included, run with the same layout.

    ``forward(x, sigma)`` takes ``x`` of shape ``(N, C, H, W)`` and ``sigma`` a positive
    ``(N,)`` tensor or a Python float, and returns a tensor shaped like ``x``. The output
    convolution is zero-initialised, so a fresh network returns zeros. The forward pass has
    no data-dependent Python control flow, no fixed device, and works with
    ``channels_last`` and ``torch.compile``.

    Ho et al.'s CIFAR-10 configuration (``UNET_PRESETS["cifar10"]``) has 35,746,307
    parameters for 3 channels (35.7 M, as the paper reports); see :data:`UNET_PRESETS`.
    """

    #: conditioned on the noise level itself (any sigma > 0), not on the index of a trained level
    continuous_noise_level = True

    def __init__(self, channels: int, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.0,
                 image_size: int = 32):
        super().__init__()
        _positive_int("channels", channels)
        _positive_int("ch", ch)
        _positive_int("num_res_blocks", num_res_blocks)
        _positive_int("image_size", image_size)
        try:
            ch_mult = tuple(ch_mult)
            attn_resolutions = tuple(attn_resolutions)
        except TypeError:
            raise ValueError("ch_mult and attn_resolutions must be sequences of positive integers") from None
        if not ch_mult:
            raise ValueError("ch_mult must not be empty")
        for m in ch_mult:
            _positive_int("every entry of ch_mult", m)
        for r in attn_resolutions:
            _positive_int("every entry of attn_resolutions", r)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")

        self.channels = channels
        self.ch = ch
        self.ch_mult = ch_mult
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = attn_resolutions
        self.dropout = float(dropout)
        self.image_size = image_size
        temb_ch = 4 * ch

        self.temb = nn.Sequential(nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)

        # Down path; record the channel count of every skip connection.
        skip_channels = [ch]
        block_in, res = ch, image_size
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(block_in, ch * mult, temb_ch, dropout))
                block_in = ch * mult
                skip_channels.append(block_in)
            self.down.append(Level(blocks, res in attn_resolutions))
            if i != len(ch_mult) - 1:
                self.downsample.append(Downsample(block_in))
                skip_channels.append(block_in)
                res = (res + 1) // 2

        self.mid_block1 = ResBlock(block_in, block_in, temb_ch, dropout)
        self.mid_attn = AttnBlock(block_in)
        self.mid_block2 = ResBlock(block_in, block_in, temb_ch, dropout)

        # Up path, coarsest level first (self.up[0] is the coarsest).
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        level_res = [image_size]
        for _ in ch_mult[1:]:
            level_res.append((level_res[-1] + 1) // 2)
        for i in reversed(range(len(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(block_in + skip_channels.pop(), ch * ch_mult[i], temb_ch, dropout))
                block_in = ch * ch_mult[i]
            self.up.append(Level(blocks, level_res[i] in attn_resolutions))
            if i != 0:
                self.upsample.append(Upsample(block_in))
        assert not skip_channels

        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        zero = [self.conv_out] + [m.conv2 for m in self.modules() if isinstance(m, ResBlock)]
        zero += [m.proj_out for m in self.modules() if isinstance(m, AttnBlock)]
        for module in zero:
            nn.init.zeros_(module.weight)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected x of shape (N, {self.channels}, H, W), got {tuple(x.shape)}")
        sigma = sigma_vector(sigma, x)
        emb = noise_embedding(sigma, self.ch).to(self.temb[0].weight.dtype)
        temb = self.temb(emb)

        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, temb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)

        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, skips.pop()], dim=1), temb))
            if i < len(self.upsample):
                h = self.upsample[i](h, skips[-1].shape[-2:])

        return self.conv_out(F.silu(self.norm_out(h)))
