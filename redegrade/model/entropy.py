"""Entropy models for the degradation codes (tech-facts §1.5).

compressai's :class:`~compressai.entropy_models.EntropyBottleneck` supplies the learned factorised
density and its auxiliary quantile loss; this wrapper only chooses *how* to quantise. compressai picks
noise or rounding from ``self.training`` and its rounding has zero gradient, which would cut a frozen
(eval-mode) model off from inversion gradients — so the mode is always an explicit argument:

- ``"noise"``: additive U(-½, ½) (training; needs a ``torch.Generator``),
- ``"ste"``: round around the medians forward, identity gradient backward (inversion),
- ``"round"``: round around the medians, no gradient trick (exact coding),
- ``"none"``: no quantisation (the rate is then the density at the continuous value).
"""
from __future__ import annotations

import math

import torch

from redegrade import _compat  # noqa: F401, I001  (before compressai, which imports torchvision)
from compressai.entropy_models import EntropyBottleneck  # noqa: I001
from torch import nn

from redegrade.errors import ConfigError, InputError
from redegrade.model.layers import ResidualMLP

MODES = ("noise", "ste", "round", "none")


def quantize(v: torch.Tensor, mode: str, medians: torch.Tensor, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """Quantise ``v`` ([B,C,...]) by ``mode`` on the integer grid offset by ``medians`` ([1,C,1,...])."""
    if mode == "none":
        return v
    if mode == "noise":
        if generator is None:
            raise InputError('quantize(mode="noise") draws random numbers: pass generator=torch.Generator(...)')
        u = torch.rand(v.shape, generator=generator, device=generator.device, dtype=v.dtype).to(v.device)
        return v + (u - 0.5)
    rounded = torch.round(v - medians) + medians
    if mode == "round":
        return rounded
    if mode == "ste":
        return v + (rounded - v).detach()
    raise ConfigError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")


class CodeEntropyModel(nn.Module):
    """Quantiser + factorised density for one code tensor ([B,C] vector or [B,C,h,w] map).

    ::

        z ─head─► /step ─quantise(mode)─► ·step ─tail─► ẑ
                             └─ EntropyBottleneck likelihood ─► bits per item [B]

    ``head``/``tail`` are residual MLPs (vectors only, CDD's ``CompressorHeadMLP``); ``step`` sets the
    quantisation grid (1 = integers, as compressai).
    """

    def __init__(self, channels: int, *, mlp_layers: int = 0, step: float = 1.0):
        super().__init__()
        self.channels = channels
        self.step = float(step)
        self.head = ResidualMLP(channels, mlp_layers) if mlp_layers else None
        self.tail = ResidualMLP(channels, mlp_layers) if mlp_layers else None
        self.bottleneck = EntropyBottleneck(channels)

    def forward(self, z: torch.Tensor, mode: str, *, generator: torch.Generator | None = None, rate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (ẑ same shape as z, bits [B]); ``rate=False`` skips the density (bits are zeros), which
        inversion never reads: at 1024² e_l has a million values to evaluate it on, every step."""
        if mode not in MODES:
            raise ConfigError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")
        if self.head is not None:
            z = self.head(z)
        v = z / self.step
        c = self.channels
        # the quantiles are trained by the aux loss only, so the medians are constants here
        medians = self.bottleneck.quantiles[:, 0, 1].detach().reshape(1, c, *([1] * (v.ndim - 2)))
        vq = quantize(v, mode, medians, generator)
        bits = self.bits(vq) if rate else vq.new_zeros(vq.shape[0])
        zq = vq * self.step
        if self.tail is not None:
            zq = self.tail(zq)
        return zq, bits

    def bits(self, v: torch.Tensor) -> torch.Tensor:
        """−log₂ likelihood of (quantised) values ``v`` [B,C,...], summed per item → [B]."""
        b, c = v.shape[:2]
        values = v.transpose(0, 1).reshape(c, 1, -1)          # compressai layout: [C,1,N]
        lik, _, _ = self.bottleneck._likelihood(values)
        if self.bottleneck.use_likelihood_bound:
            lik = self.bottleneck.likelihood_lower_bound(lik)
        return (-torch.log(lik) / math.log(2)).reshape(c, b, -1).sum(dim=(0, 2))

    def aux_loss(self) -> torch.Tensor:
        """compressai's quantile loss (fits the medians and tails of the density)."""
        return self.bottleneck.loss()
