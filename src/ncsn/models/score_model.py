"""A network, its forward process and its output parameterisation, as one score function.

Samplers and objectives call ``model(x, s)`` with ``x`` in the process's space and ``s`` a
``(N,)`` tensor of kernel standard deviations (NCSN's sigma for the VE process, sqrt(1 - abar_t)
for the VP one) and get the score grad_x log q_s(x). The network itself is conditioned on the
equivalent noise level sigma~ = s / a (:mod:`ncsn.processes`) and outputs either

* ``"score"`` directly (NCSN's RefineNet, optionally f / sigma as NCSNv2), or
* ``"eps"``, the noise z of x = a x0 + s z (DDPM's parameterisation), turned into a score by
  s(x) = -eps / s (:func:`ncsn.processes.eps_to_score`).

``model(x, None, index=t, eps=True)`` gives DDPM's eps(x_t, t) at a training level ``t``
(looked up in the process's tables, exactly). Every call goes through ``forward``, so the model
can be wrapped by DistributedDataParallel or ``torch.compile``.
"""

from __future__ import annotations

import torch
from torch import nn

from ncsn.processes import Process, eps_to_score, score_to_eps
from ncsn.score import sigma_vector

OUTPUTS = ("score", "eps")


class ScoreModel(nn.Module):
    """Score function s(x, s) of a :class:`~ncsn.processes.Process`, computed by ``net(x, sigma~)``.

    The state dict holds the network's weights under ``net.``; the process's tables are
    non-persistent buffers (rebuilt from the config).
    """

    def __init__(self, net: nn.Module, process: Process, output: str):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.net = net
        self.process = process
        self.output = output
        self.register_buffer("level_stds", process.stds.to(torch.float32), persistent=False)
        self.register_buffer("level_noise", process.noise_levels.to(torch.float32), persistent=False)
        self.register_buffer("level_scales", process.scales.to(torch.float32), persistent=False)
        alphas_bar = getattr(process, "alphas_bar", process.scales.square())
        self.register_buffer("level_alphas_bar", alphas_bar.to(torch.float32), persistent=False)

    @property
    def sigmas(self) -> torch.Tensor:
        """The kernel standard deviations of the trained levels, noisiest first (VE: NCSN's sigmas)."""
        return self.process.noisiest_first(self.level_stds)

    def forward(self, x: torch.Tensor, sigma, *, index: torch.Tensor | None = None, eps: bool = False) -> torch.Tensor:
        """The score at kernel std ``sigma`` (or at training level ``index``); the noise prediction if ``eps``."""
        if index is not None:
            std, noise_level = self.level_stds[index].to(x.dtype), self.level_noise[index].to(x.dtype)
        else:
            std = sigma_vector(sigma, x)
            noise_level = self.process.noise_level_of_std(std)
        out = self.net(x, noise_level)
        if self.output == "score":
            return score_to_eps(out, std) if eps else out
        return out if eps else eps_to_score(out, std)


def eps_fn_of(model: nn.Module):
    """DDPM's ``eps_fn(x, t)`` of a score model (or of its DDP / compile wrapper): the noise at timestep ``t``."""
    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, None, index=t, eps=True)

    return eps_fn
