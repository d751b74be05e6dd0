"""CDD's synthesis: the fused degradation map (``BasicWrapper.conv`` + ``map_head``) and the SFT U-Net
(``VUNet``/``VUNetPro``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.model.cdd.config import CDDConfig
from redegrade.model.layers import IDA, PreActConv, PreActConvT
from redegrade.model.network import MapFusion
from redegrade.model.synthesis import run_block


def _act(kind: str) -> nn.Module:
    return nn.ReLU() if kind == "relu" else nn.LeakyReLU()  # CDD's act_relu / act_lrelu (slope 0.01)


def _resize(e: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """CDD resizes the map only when its size differs (bilinear, align_corners=True)."""
    if tuple(e.shape[-2:]) == tuple(size):
        return e
    return F.interpolate(e, size=size, mode="bilinear", align_corners=True)


class CDDSFTLayer(nn.Module):
    """CDD ``SFTLayer``: out = F·(1 + γ(e)) + β(e, n) + IDA(F, e).

    γ = conv1×1(act(conv1×1(e))), β = conv1×1(act(conv1×1([e, n]))), bias-free, with the block's
    activation; e resized to the feature size (and to half of it for IDA) when it differs.
    """

    def __init__(self, channels: int, map_channels: int, act: str):
        super().__init__()
        reduce = (map_channels + channels) // 4
        self.gamma = nn.Sequential(nn.Conv2d(map_channels, reduce, 1, bias=False), _act(act),
                                   nn.Conv2d(reduce, channels, 1, bias=False))
        self.beta = nn.Sequential(nn.Conv2d(map_channels + 1, reduce, 1, bias=False), _act(act),
                                  nn.Conv2d(reduce, channels, 1, bias=False))
        self.ida = IDA(channels, map_channels)

    def forward(self, feat: torch.Tensor, e: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[-2:]
        e_sm = _resize(e, (h // 2, w // 2))
        e_full = _resize(e, (h, w))
        gamma = self.gamma(e_full)
        beta = self.beta(torch.cat([e_full, noise.to(e_full.dtype)], dim=1))
        return feat * (1 + gamma) + beta + self.ida(feat, e_sm)


class CDDBlock(nn.Module):
    """CDD ``SFTResBlock``: y = conv2(SFT₂(conv1(SFT₁(x)))) with pre-activation 3×3 convs; out = y + x."""

    def __init__(self, channels: int, map_channels: int, act: str):
        super().__init__()
        self.sft1 = CDDSFTLayer(channels, map_channels, act)
        self.conv1 = PreActConv(channels, channels, 3, act=_act(act))
        self.sft2 = CDDSFTLayer(channels, map_channels, act)
        self.conv2 = PreActConv(channels, channels, 3, act=_act(act))

    def forward(self, x: torch.Tensor, e: torch.Tensor, n1: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.sft1(x, e, n1))
        y = self.conv2(self.sft2(y, e, n2))
        return y + x


class CDDSynthesis(nn.Module):
    """CDD ``VUNet`` (3 levels) / ``VUNetPro`` (5 levels) given the fused map e (``map_head`` applied).

    ``conv_first`` (3×3, no activation) on ``2x−1``; per level its blocks, then a 4×4 stride-2 conv
    down; on the way up a 4×4 stride-2 transposed conv, ``LeakyReLU → 3×3`` on [up, skip], the level's
    blocks; ``conv_last`` = LeakyReLU → 1×1. No output squashing.
    """

    def __init__(self, config: CDDConfig):
        super().__init__()
        w, m, L = config.widths, config.map_channels, config.levels
        self.conv_first = PreActConv(3, w[0], 3)
        self.down_blocks = nn.ModuleList(nn.ModuleList(CDDBlock(w[lv], m, "lrelu") for _ in range(config.blocks[lv]))
                                         for lv in range(L))
        self.downsample = nn.ModuleList(PreActConv(w[lv], w[lv + 1], 4, stride=2) for lv in range(L - 1))
        self.upsample = nn.ModuleList(PreActConvT(w[lv + 1], w[lv]) for lv in range(L - 1))
        self.skip = nn.ModuleList(PreActConv(2 * w[lv], w[lv], 3, act=_act("lrelu")) for lv in range(L - 1))
        self.up_blocks = nn.ModuleList(
            nn.ModuleList(CDDBlock(w[lv], m, "relu" if (lv == 0 and i == config.blocks_up[lv] - 1) else "lrelu")
                          for i in range(config.blocks_up[lv]))
            for lv in range(L - 1))
        self.conv_last = PreActConv(w[0], 3, 1, act=_act("lrelu"))
        self.levels = L

    def forward(self, x: torch.Tensor, e: torch.Tensor, noise: list[torch.Tensor], *,
                checkpoint: bool = False) -> torch.Tensor:
        it = iter(noise)
        h = self.conv_first(x * 2 - 1)  # CDD's VUNet: "inp = clean * 2 - 1" on an input already in [-1, 1]
        skips = []
        for lv in range(self.levels):
            for b in self.down_blocks[lv]:
                h = run_block(b, h, e, next(it), next(it), checkpoint=checkpoint)
            if lv < self.levels - 1:
                skips.append(h)
                h = self.downsample[lv](h)
        for lv in reversed(range(self.levels - 1)):
            h = self.skip[lv](torch.cat([self.upsample[lv](h), skips[lv]], dim=1))
            for b in self.up_blocks[lv]:
                h = run_block(b, h, e, next(it), next(it), checkpoint=checkpoint)
        return self.conv_last(h)


class CDDFusion(MapFusion):
    """``BasicWrapper.conv`` on ``[e_l, e_g broadcast]`` (3×3, bias) then ``VUNet.map_head`` (ReLU → 3×3).

    Unlike :class:`MapFusion` it materialises the broadcast and runs CDD's own convolution: the
    memory-saving split of ``MapFusion.project`` sums in another order (≈1e-6 off), which the 32 SFT
    layers of a random-weight model amplified to 5e-5; this way the synthesis is bit-identical. At 1024²
    the concatenated input is [B, c_l+256, 512, 512] (272 MB per image in float32).
    """

    def project(self, e_g: torch.Tensor, e_l: torch.Tensor) -> torch.Tensor:
        k_v = e_g[:, :, None, None].expand(-1, -1, *e_l.shape[-2:])
        return self.proj(torch.cat([e_l, k_v], dim=1))
