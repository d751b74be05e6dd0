"""Building blocks of the synthesis network: pre-activation convs, the SFT layer with its IDA term,
and the SFT residual block (tech-facts §1.7).

Noise is always an argument: no layer draws random numbers, so a backend can optimise and replay it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lrelu(slope: float = 0.01) -> nn.Module:
    return nn.LeakyReLU(slope)


class PreActConv(nn.Sequential):
    """(activation →) conv, bias-free by default, "same" padding for stride 1 and halving for 4×4 s2.

    Pre-activation as in CDD's ``modules.Conv2d``: the activation acts on the input of the conv.
    """

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, act: nn.Module | None = None,
                 bias: bool = False):
        pad = kernel // 2 - 1 if (stride == 2 and kernel % 2 == 0) else (kernel - 1) // 2
        layers = [act] if act is not None else []
        layers.append(nn.Conv2d(cin, cout, kernel, stride, pad, bias=bias))
        super().__init__(*layers)


class PreActConvT(nn.Sequential):
    """(activation →) transposed conv that doubles the size (4×4 s2, padding 1, bias-free)."""

    def __init__(self, cin: int, cout: int, kernel: int = 4, *, stride: int = 2, act: nn.Module | None = None):
        pad = (kernel - 1 + 1 - stride) // 2
        layers = [act] if act is not None else []
        layers.append(nn.ConvTranspose2d(cin, cout, kernel, stride, pad, bias=False))
        super().__init__(*layers)


class IDA(nn.Module):
    """Degradation-aware depthwise interaction term: IDA(F, e) = DConv(DS(DConv(e_sm)) ⊙ DS(F)).

    ``e_sm`` is the degradation map at half the feature resolution; the map path lifts it to h with a
    2×2 transposed conv and brings it back to h/2 with a strided 3×3, the feature path halves F, and
    their product is lifted back to h.
    """

    def __init__(self, channels: int, map_channels: int):
        super().__init__()
        mid = (channels + map_channels) // 2
        self.map_up = nn.ConvTranspose2d(map_channels, mid, 2, 2, bias=False)
        self.map_act = nn.LeakyReLU(0.1)
        self.map_down = nn.Conv2d(mid, mid, 3, 2, 1, bias=False)
        self.feat_down = nn.Conv2d(channels, mid, 3, 2, 1, bias=False)
        self.out_up = nn.ConvTranspose2d(mid, channels, 2, 2, bias=True)

    def forward(self, feat: torch.Tensor, e_sm: torch.Tensor) -> torch.Tensor:
        m = self.map_down(self.map_act(self.map_up(e_sm)))       # [B,mid,h/2,w/2]
        return self.out_up(m * self.feat_down(feat))             # [B,C,h,w]


class SFTLayer(nn.Module):
    """Spatial feature transform conditioned on the degradation map e and one noise map n.

    out = F·(1 + γ(e)) + β(e, n) + IDA(F, e), with e resized (bilinear, align_corners=True) to the
    feature resolution (for γ, β) and to half of it (for IDA).
    """

    def __init__(self, channels: int, map_channels: int):
        super().__init__()
        reduce = (map_channels + channels) // 4
        self.gamma = nn.Sequential(nn.Conv2d(map_channels, reduce, 1), nn.LeakyReLU(0.1),
                                   nn.Conv2d(reduce, channels, 1))
        self.beta = nn.Sequential(nn.Conv2d(map_channels + 1, reduce, 1), nn.LeakyReLU(0.1),
                                  nn.Conv2d(reduce, channels, 1))
        self.ida = IDA(channels, map_channels)

    def forward(self, feat: torch.Tensor, e: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[-2:]
        e_full = F.interpolate(e, size=(h, w), mode="bilinear", align_corners=True)
        e_sm = F.interpolate(e, size=(h // 2, w // 2), mode="bilinear", align_corners=True)
        beta = self.beta(torch.cat([e_full, noise.to(feat.dtype)], dim=1))
        return feat * (1 + self.gamma(e_full)) + beta + self.ida(feat, e_sm)


class SFTResBlock(nn.Module):
    """y = conv2(SFT₂(conv1(SFT₁(x, e, n₁)), e, n₂)); out = x + y. Consumes two noise maps."""

    def __init__(self, channels: int, map_channels: int, *, act: str = "relu"):
        super().__init__()
        make = (lambda: nn.ReLU()) if act == "relu" else (lambda: lrelu())
        self.sft1 = SFTLayer(channels, map_channels)
        self.conv1 = PreActConv(channels, channels, 3, act=make())
        self.sft2 = SFTLayer(channels, map_channels)
        self.conv2 = PreActConv(channels, channels, 3, act=make())

    def forward(self, x: torch.Tensor, e: torch.Tensor, n1: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.sft1(x, e, n1))
        y = self.conv2(self.sft2(y, e, n2))
        return x + y


class ResidualMLP(nn.Module):
    """``layers`` residual blocks x + Linear(ReLU(Linear(x))) with a C/4 bottleneck (entropy head/tail).

    ``hidden`` overrides the bottleneck width (CDD's ``mid_channels``; converted CDD models only).
    """

    def __init__(self, channels: int, layers: int, *, hidden: int | None = None):
        super().__init__()
        hidden = max(channels // 4, 1) if hidden is None else hidden
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b(x)
        return x
