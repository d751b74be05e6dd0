"""Additions to CDD's network, each selected by name in :attr:`ModelConfig.extras
<redegrade.model.config.ModelConfig.extras>` (none of them is in the paper).

===================  ===========================================================================
``global_residual``  ŷ = x + f(x): the synthesis learns a residual (a small model starts at identity)
``grid_phase``       the synthesis also reads the position modulo 8 (:func:`grid_phase`): JPEG's blocks
                     sit on a fixed 8×8 grid that a translation-equivariant network cannot see
``signatures``       e_g also reads fixed JPEG and noise statistics of y
                     (:class:`~redegrade.model.extras.signatures.Signatures`)
``noise_head``       pixel noise from three extra full-size noise maps
                     (:class:`~redegrade.model.extras.noise_head.NoiseHead`)
``jpeg_head``        ŷ's block DCT rounded to JPEG steps read from e and e_g, last, as JPEG comes last
                     (:class:`~redegrade.model.extras.jpeg_head.JpegHead`)
``jpeg_420``         the JPEG head also subsamples chroma 4:2:0, as PIL and OpenCV write JPEG by default
``lost_pixels``      pixels black in every channel of y stay black in ŷ: FFHQ-X's dropped pixels and
                     strokes, read from y (:func:`~redegrade.model.extras.lost_pixels.keep_mask`)
``resized``          a y that is an upsampled smaller image, its factor read from y
                     (:func:`~redegrade.model.extras.resized.measure`), is rendered from x taken
                     down and up by that factor
===================  ===========================================================================

Where they act (:class:`Extras`)::

    y ─HDEN─► e_g ─(+ signatures(y))─► e_g;   y ─► keep (lost_pixels);   y ─► factor (resized)
    x ─(↓↑ factor)─(‖ grid_phase)─► U-Net features F ─conv_last─► (+ noise_head(F, e, z, e_g)) ─(+ x)─► jpeg_head ─► ·keep ─► ŷ
"""
from __future__ import annotations

import math

import torch
from torch import nn

from redegrade.model.extras import lost_pixels, resized
from redegrade.model.extras.jpeg_head import JpegHead
from redegrade.model.extras.noise_head import NoiseHead
from redegrade.model.extras.signatures import Signatures

#: Every extra, in the order a config lists them.
NAMES = ("global_residual", "grid_phase", "signatures", "noise_head", "jpeg_head", "jpeg_420", "lost_pixels",
         "resized")
#: Extras that only modify another one.
NEEDS = {"jpeg_420": "jpeg_head"}
#: Channels :func:`grid_phase` adds to the synthesis input.
GRID_PHASE_CHANNELS = 8
#: Noise maps the noise head draws from (full size, after the SFT layers' maps).
NOISE_HEAD_MAPS = 3


def grid_phase(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """[1,8,H,W]: cos and sin of 2π·row/p and 2π·col/p for p = 8 and 4 (JPEG's block grid)."""
    rows = torch.arange(height, device=like.device, dtype=like.dtype)
    cols = torch.arange(width, device=like.device, dtype=like.dtype)
    maps = []
    for period in (8, 4):
        for t, shape in ((rows, (height, 1)), (cols, (1, width))):
            a = (2 * math.pi / period) * t.view(shape)
            maps += [a.cos().expand(height, width), a.sin().expand(height, width)]
    return torch.stack(maps).unsqueeze(0)


class Extras(nn.Module):
    """The extras a config names, applied around the paper's encoders and U-Net; with none, every
    method returns its input."""

    def __init__(self, names: tuple[str, ...], *, dim_g: int, map_channels: int, features: int):
        """``names``: a subset of :data:`NAMES`; ``dim_g``: length of e_g; ``map_channels``: channels of
        the fused map e; ``features``: channels of the U-Net's last decoder features."""
        super().__init__()
        self.global_residual = "global_residual" in names
        self.grid_phase = "grid_phase" in names
        self.lost_pixels = "lost_pixels" in names
        self.resized = "resized" in names
        self.signatures = Signatures(dim_g) if "signatures" in names else None
        self.noise_head = NoiseHead(features, map_channels, dim_g=dim_g) if "noise_head" in names else None
        self.jpeg_head = (JpegHead(map_channels, dim_g, subsample="jpeg_420" in names)
                          if "jpeg_head" in names else None)

    @staticmethod
    def input_channels_for(names: tuple[str, ...]) -> int:
        """Channels :meth:`synthesis_input` adds to x with the extras ``names``."""
        return GRID_PHASE_CHANNELS * ("grid_phase" in names)

    @property
    def num_noise(self) -> int:
        """Noise maps the extras read (after the SFT layers' maps)."""
        return NOISE_HEAD_MAPS * (self.noise_head is not None)

    def global_code(self, e_g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """HDEN's code e_g [B,dim_g] with the signature reads of y added."""
        return e_g if self.signatures is None else self.signatures(e_g, y)

    def keep_mask(self, y: torch.Tensor) -> torch.Tensor | None:
        """With ``lost_pixels``, y's kept pixels [B,1,H,W] (:func:`~redegrade.model.extras.lost_pixels.keep_mask`);
        else None."""
        return lost_pixels.keep_mask(y) if self.lost_pixels else None

    def resize_factor(self, y: torch.Tensor) -> torch.Tensor | None:
        """With ``resized``, the factor [B] by which each y was upsampled (:func:`~redegrade.model.extras.resized.measure`);
        else None."""
        return resized.measure(y) if self.resized else None

    def synthesis_input(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] with the grid phase appended → [B,3+input_channels,H,W]."""
        if not self.grid_phase:
            return x
        return torch.cat([x, grid_phase(*x.shape[-2:], x).expand(x.shape[0], -1, -1, -1)], 1)

    def finish(self, out: torch.Tensor, x: torch.Tensor, feat: torch.Tensor, e: torch.Tensor, e_g: torch.Tensor,
               noise: list[torch.Tensor], *, heads: dict[str, torch.Tensor] | None = None,
               fixed_jpeg_steps: bool = False, dither: torch.Generator | None = None) -> torch.Tensor:
        """The U-Net's output ``out`` [B,3,H,W] through the noise head, the global residual and the JPEG
        head, in that order. ``x``: the input image; ``feat``: the last decoder features; ``e``: the fused
        map; ``e_g``: the global code; ``noise``: the :attr:`num_noise` maps the extras read.

        ``heads`` (a dict) receives what the heads decided: ``noise_std`` ``[B,3,H,W]`` and
        ``jpeg_multipliers`` ``[B,2,H/8,W/8]``; with ``fixed_jpeg_steps`` ŷ's gradient does not reach
        the JPEG steps (those in ``heads`` keep theirs). ``dither`` makes the JPEG head add uniform noise
        (half its steps' width) instead of rounding (see :meth:`JpegHead.forward
        <redegrade.model.extras.jpeg_head.JpegHead.forward>`).
        """
        if self.noise_head is not None:
            out = out + self.noise_head(feat, e, torch.cat(noise[:NOISE_HEAD_MAPS], dim=1), e_g)
            if heads is not None:
                heads["noise_std"] = self.noise_head.output_std(feat, e, e_g)
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
                                  multipliers=m.detach() if fixed_jpeg_steps else m, dither=dither)
