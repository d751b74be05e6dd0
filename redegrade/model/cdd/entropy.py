"""CDD's entropy models (``CompressorWraper``): compressai's ``EntropyBottleneck`` with head/tail MLPs, or
its ``ImageCompressor`` (Ballé'17) on e_l."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.errors import ConfigError, ShapeError
from redegrade.model.cdd.config import CompressorSpec
from redegrade.model.entropy import MODES, CodeEntropyModel, quantize
from redegrade.model.layers import ResidualMLP


class CDDEntropy(CodeEntropyModel):
    """CDD ``CompressorWraper`` around compressai's ``EntropyBottleneck``: head MLP → quantise → tail MLP.

    Head and tail may differ in depth and width (CDD configures them apart).
    """

    def __init__(self, spec: CompressorSpec):
        super().__init__(spec.channels, mlp_layers=0, step=1.0)
        from compressai.entropy_models import EntropyBottleneck

        self.head = ResidualMLP(spec.channels, spec.head[0], hidden=spec.head[1]) if spec.head[0] else None
        self.tail = ResidualMLP(spec.channels, spec.tail[0], hidden=spec.tail[1]) if spec.tail[0] else None
        self.bottleneck = EntropyBottleneck(spec.channels, filters=tuple(spec.filters))


class BitEstimator(nn.Module):
    """The ImageCompressor's factorised CDF: three ``x·softplus(h) + b`` + ``tanh(·)·tanh(a)`` stages and
    a final ``sigmoid(x·softplus(h) + b)``, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        for i in range(1, 5):
            stage = nn.Module()
            stage.h = nn.Parameter(torch.zeros(1, channels, 1, 1))
            stage.b = nn.Parameter(torch.zeros(1, channels, 1, 1))
            if i < 4:
                stage.a = nn.Parameter(torch.zeros(1, channels, 1, 1))
            setattr(self, f"f{i}", stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 4):
            s = getattr(self, f"f{i}")
            x = x * F.softplus(s.h) + s.b
            x = x + torch.tanh(x) * torch.tanh(s.a)
        return torch.sigmoid(x * F.softplus(self.f4.h) + self.f4.b)


class CDDImageCompressor(nn.Module):
    """CDD's ``ImageCompressor`` on e_l (in eval mode): analysis (9×9 s4 → GDN → 5×5 s2 → GDN → 5×5 s2),
    rounding, synthesis (mirror, inverse GDN), clamp to [0, 1]; bits from :class:`BitEstimator`.

    e_l's sides must be multiples of 16. See the module docstring for what is verified.
    """

    def __init__(self, spec: CompressorSpec):
        super().__init__()
        from compressai.layers import GDN

        c, n = spec.channels, spec.latent
        self.encoder = nn.Sequential(nn.Conv2d(c, n, 9, 4, 4), GDN(n), nn.Conv2d(n, n, 5, 2, 2), GDN(n),
                                     nn.Conv2d(n, n, 5, 2, 2, bias=False))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(n, n, 5, 2, 2, 1), GDN(n, inverse=True),
                                     nn.ConvTranspose2d(n, n, 5, 2, 2, 1), GDN(n, inverse=True),
                                     nn.ConvTranspose2d(n, c, 9, 4, 4, 3))
        self.bit_estimator = BitEstimator(n)
        self.head = self.tail = None

    def forward(self, z: torch.Tensor, mode: str, *, generator: torch.Generator | None = None, rate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if mode not in MODES:
            raise ConfigError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")
        if z.shape[-2] % 16 or z.shape[-1] % 16:
            raise ShapeError(f"CDD's ImageCompressor needs e_l sides that are multiples of 16 (images of "
                             f"multiples of 32), got e_l {tuple(z.shape[-2:])}")
        v = self.encoder(z)
        vq = quantize(v, mode, torch.zeros((), dtype=v.dtype, device=v.device), generator)
        if not rate:
            return self.decoder(vq).clamp(0.0, 1.0), vq.new_zeros(vq.shape[0])
        prob = self.bit_estimator(vq + 0.5) - self.bit_estimator(vq - 0.5)
        bits = torch.clamp(-torch.log(prob + 1e-10) / math.log(2.0), 0, 50).flatten(1).sum(dim=1)
        return self.decoder(vq).clamp(0.0, 1.0), bits

    def aux_loss(self) -> torch.Tensor:
        return self.encoder[0].weight.new_zeros(())


def make_compressor(spec: CompressorSpec) -> nn.Module:
    return CDDEntropy(spec) if spec.type == "EntropyBottleneck" else CDDImageCompressor(spec)
