"""The synthesis network f̂(x, e, n): a three-level U-Net of SFT residual blocks (tech-facts §1.7).

::

    x ─conv_first─► blocks1 ─┬─down1─► blocks2 ─┬─down2─► blocks3 ─up2─┐
                             │                  └──────── skip2 ◄──────┘
                             │                             blocks2_ ─up1─┐
                             └──────────────────────────── skip1 ◄──────┘
                                                           blocks1_ ─conv_last─► ŷ
    every SFT layer reads the degradation map e (resized to its level) and one noise map n_i

CDD's ``VUNet`` maps its input through ``2x−1`` although x is already in [-1,1] (so it sees [-3,1]).
Our presets feed x as is; CDD's exact architecture, quirk included, is :mod:`redegrade.model.cdd`
(what CDD's released checkpoints load into).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from redegrade.model.config import ModelConfig
from redegrade.model.layers import PreActConv, PreActConvT, SFTResBlock, lrelu


def run_block(block: nn.Module, *args: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """``block(*args)``, or the same through activation checkpointing when ``checkpoint``.

    Checkpointed, the block keeps only its inputs for the backward and recomputes its activations
    there: one SFT block at 1024² holds ≈ 20 full-size 64-channel maps, so the paper-size U-Net needs
    tens of GB for its backward without it. Non-reentrant (the gradient reaches every input,
    autocast is replayed); the RNG state is not saved since no layer draws random numbers.
    """
    if not checkpoint:
        return block(*args)
    return _checkpoint(block, *args, use_reentrant=False, preserve_rng_state=False)


class SynthesisUNet(nn.Module):
    """x [B,in_channels,H,W] + degradation map e [B,M,H/2,W/2] + one noise map per SFT layer → ŷ [B,3,H,W]
    (H, W multiples of 8). ``in_channels`` is 3 unless extras add channels to x."""

    def __init__(self, config: ModelConfig, *, in_channels: int = 3):
        super().__init__()
        c1, c2, c3 = config.widths
        n1, n2, n3, n2_, n1_ = config.blocks
        m = config.map_channels
        self.conv_first = PreActConv(in_channels, c1, 3)
        self.blocks1 = nn.ModuleList(SFTResBlock(c1, m) for _ in range(n1))
        self.conv_down1 = PreActConv(c1, c2, 4, stride=2)
        self.blocks2 = nn.ModuleList(SFTResBlock(c2, m) for _ in range(n2))
        self.conv_down2 = PreActConv(c2, c3, 4, stride=2)
        self.blocks3 = nn.ModuleList(SFTResBlock(c3, m) for _ in range(n3))
        self.conv_up2 = PreActConvT(c3, c2)
        self.conv_skip2 = PreActConv(2 * c2, c2, 3, act=lrelu())
        self.blocks2_ = nn.ModuleList(SFTResBlock(c2, m) for _ in range(n2_))
        self.conv_up1 = PreActConvT(c2, c1)
        self.conv_skip1 = PreActConv(2 * c1, c1, 3, act=lrelu())
        self.blocks1_ = nn.ModuleList(SFTResBlock(c1, m, act="lrelu" if i < n1_ - 1 else "relu") for i in range(n1_))
        self.conv_last = PreActConv(c1, 3, 1, act=lrelu())
        self.num_noise = 2 * sum(config.blocks)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, e: torch.Tensor, noise: list[torch.Tensor], i: int,
             checkpoint: bool):
        for b in blocks:
            h = run_block(b, h, e, noise[i], noise[i + 1], checkpoint=checkpoint)
            i += 2
        return h, i

    def features(self, x: torch.Tensor, e: torch.Tensor, noise: list[torch.Tensor], *,
                 checkpoint: bool = False) -> torch.Tensor:
        """The last decoder features [B,widths[0],H,W] (what :attr:`conv_last` maps to ŷ).

        ``checkpoint`` recomputes each SFT block in the backward instead of storing its activations.
        """
        i, ck = 0, checkpoint
        h1 = self.conv_first(x)
        h1, i = self._run(self.blocks1, h1, e, noise, i, ck)
        h2 = self.conv_down1(h1)
        h2, i = self._run(self.blocks2, h2, e, noise, i, ck)
        h3 = self.conv_down2(h2)
        h3, i = self._run(self.blocks3, h3, e, noise, i, ck)
        u2 = self.conv_skip2(torch.cat([self.conv_up2(h3), h2], dim=1))
        u2, i = self._run(self.blocks2_, u2, e, noise, i, ck)
        u1 = self.conv_skip1(torch.cat([self.conv_up1(u2), h1], dim=1))
        u1, i = self._run(self.blocks1_, u1, e, noise, i, ck)
        return u1

    def forward(self, x: torch.Tensor, e: torch.Tensor, noise: list[torch.Tensor], *,
                checkpoint: bool = False) -> torch.Tensor:
        return self.conv_last(self.features(x, e, noise, checkpoint=checkpoint))
