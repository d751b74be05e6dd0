"""The synthesis network f̂(x, e, n): a three-level U-Net of SFT residual blocks (tech-facts §1.7).

::

    x ─conv_first─► blocks1 ─┬─down1─► blocks2 ─┬─down2─► blocks3 ─up2─┐
                             │                  └──────── skip2 ◄──────┘
                             │                             blocks2_ ─up1─┐
                             └──────────────────────────── skip1 ◄──────┘
                                                           blocks1_ ─conv_last─► ŷ
    every SFT layer reads the degradation map e (resized to its level) and one noise map n_i

Options outside CDD (see :class:`ModelConfig`): ``grid_phase`` adds the pixel position modulo 8
to x's channels, ``noise_head`` adds ``σ(u1, e)·k∗z`` to ŷ, where z are the last three noise maps, and
``jpeg_head`` rounds ŷ's block-DCT coefficients to steps read from e and e_g (last, as JPEG comes last).

CDD's ``VUNet`` maps its input through ``2x−1`` although x is already in [-1,1] (so it sees [-3,1]).
Our presets feed x as is; CDD's exact architecture, quirk included, is :mod:`redegrade.model.cdd`
(what CDD's released checkpoints load into).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from redegrade.model.config import ModelConfig
from redegrade.model.layers import JpegHead, NoiseHead, PreActConv, PreActConvT, SFTResBlock, grid_phase, lrelu


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
    """x [B,3,H,W] + degradation map e [B,M,H/2,W/2] + noise maps → ŷ [B,3,H,W] (H, W multiples of 8).

    ``e_g`` [B,dim_g] is read only by the JPEG head and (with ``noise_code``) the noise head.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        c1, c2, c3 = config.widths
        n1, n2, n3, n2_, n1_ = config.blocks
        m = config.map_channels
        self.global_residual = config.global_residual
        self.grid_phase = config.grid_phase
        self.conv_first = PreActConv(3 + 8 * config.grid_phase, c1, 3)
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
        self.noise_head = (NoiseHead(c1, m, dim_g=config.dim_g if config.noise_code else 0) if config.noise_head else None)
        self.jpeg_head = (JpegHead(m, config.dim_g, subsample=config.jpeg_subsampling)
                          if config.jpeg_head else None)
        self.num_noise = len(config.noise_levels())

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, e: torch.Tensor, noise: list[torch.Tensor], i: int,
             checkpoint: bool):
        for b in blocks:
            h = run_block(b, h, e, noise[i], noise[i + 1], checkpoint=checkpoint)
            i += 2
        return h, i

    def forward(self, x: torch.Tensor, e: torch.Tensor, noise: list[torch.Tensor], e_g: torch.Tensor, *,
                checkpoint: bool = False, heads: dict[str, torch.Tensor] | None = None,
                fixed_jpeg_steps: bool = False) -> torch.Tensor:
        """``checkpoint`` recomputes each SFT block in the backward instead of storing its activations.

        ``heads`` (a dict) receives what the heads decided: ``noise_std`` ``[B,3,H,W]`` and
        ``jpeg_multipliers`` ``[B,2,H/8,W/8]``; with ``fixed_jpeg_steps`` ŷ's gradient does not reach
        the JPEG steps (those in ``heads`` keep theirs).
        """
        i, ck = 0, checkpoint
        inp = torch.cat([x, grid_phase(*x.shape[-2:], x).expand(x.shape[0], -1, -1, -1)], 1) if self.grid_phase else x
        h1 = self.conv_first(inp)
        h1, i = self._run(self.blocks1, h1, e, noise, i, ck)
        h2 = self.conv_down1(h1)
        h2, i = self._run(self.blocks2, h2, e, noise, i, ck)
        h3 = self.conv_down2(h2)
        h3, i = self._run(self.blocks3, h3, e, noise, i, ck)
        u2 = self.conv_skip2(torch.cat([self.conv_up2(h3), h2], dim=1))
        u2, i = self._run(self.blocks2_, u2, e, noise, i, ck)
        u1 = self.conv_skip1(torch.cat([self.conv_up1(u2), h1], dim=1))
        u1, i = self._run(self.blocks1_, u1, e, noise, i, ck)
        out = self.conv_last(u1)
        if self.noise_head is not None:
            out = out + self.noise_head(u1, e, torch.cat(noise[i:i + 3], dim=1), e_g)
            if heads is not None:
                heads["noise_std"] = self.noise_head.output_std(u1, e, e_g)
        out = x + out if self.global_residual else out
        if self.jpeg_head is None:
            return out
        # JPEG's rounding stays in float32 under autocast: bf16 holds 8 significant bits, too few for
        # DCT coefficients of up to ±1024 on 0…255 pixels
        with torch.autocast(x.device.type, enabled=False):
            m = self.jpeg_head.multipliers(e.float(), e_g.float(), out.shape[-2:])
            if heads is not None:
                heads["jpeg_multipliers"] = m
            return self.jpeg_head(out.float(), e.float(), e_g.float(),
                                  multipliers=m.detach() if fixed_jpeg_steps else m)
