"""JPEG's quantisation as the last step of the synthesis (:class:`JpegHead`)."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.pixels.jpeg import dither_to_step, quantise_ycc, quantization_tables, round_to_step


class JpegHead(nn.Module):
    """JPEG's quantisation applied to ŷ, with step sizes read from the degradation map e and code e_g.

    Each 8×8 block (on the grid anchored at pixel 0, as in a JPEG file) gets two multipliers
    ``m = softplus(conv1×1(avgpool(e)) + linear(e_g))`` of the libjpeg quality-50 luma and chroma tables
    (m = 2.5 is quality 20, m = 0.1 quality 95); its YCbCr DCT coefficients are rounded to those steps
    (:func:`~redegrade.pixels.jpeg.round_to_step`: m's gradient says how many coefficients a larger
    step would zero; ŷ's passes straight through outside the zero bin). An inversion passes ``dither``
    instead (see :meth:`forward`). A grid of independently
    rounded DCT coefficients is hard to draw with 3×3 convolutions; this draws it exactly. m starts at
    ``init_scale`` (quality ≈ 95) for every input. With ``subsample`` chroma is 2×2-averaged before and
    upsampled after (4:2:0, JPEG's default).
    """

    #: The 1×1 conv's output is multiplied by this (its weights stored divided by it), as StyleGAN's
    #: equalised learning rate does: Adam moves each weight by ≈ lr per step whatever its gradient, and
    #: JPEG moves the pooled map e by only ≈ 0.1, so a readout of weight ≈ 10 is needed.
    GAIN = 50.0

    def __init__(self, map_channels: int, dim_g: int, init_scale: float = 0.1, max_scale: float = 10.0,
                 *, subsample: bool = False):
        super().__init__()
        self.subsample = subsample
        self.scale = nn.Conv2d(map_channels, 2, 1)
        # a direct read of e_g as well: JPEG quality is global, and the fused map is a ReLU and an
        # 8-channel bottleneck away from it
        self.code = nn.Linear(dim_g, 2, bias=False)
        nn.init.normal_(self.code.weight, std=1e-4)
        # small, not zero: with zero weights the step would pass no gradient back to the code at first
        nn.init.normal_(self.scale.weight, std=1e-3)
        nn.init.constant_(self.scale.bias, math.log(math.expm1(init_scale)) / self.GAIN)
        self.max_scale = max_scale
        luma, chroma = quantization_tables(50)
        # not persistent: fixed constants, not weights (checkpoints stay free of them)
        self.register_buffer("tables", torch.stack([luma, chroma]), persistent=False)

    def multipliers(self, e: torch.Tensor, e_g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-block table multipliers ``[B,2,H/8,W/8]`` (luma, chroma) from e and e_g for an H×W image."""
        pooled = F.adaptive_avg_pool2d(e, (size[0] // 8, size[1] // 8))
        m = F.softplus(self.GAIN * (self.scale(pooled) + self.code(e_g)[:, :, None, None]))
        # a smooth cap (a clamp has no gradient above it: multipliers that overshoot would stay there)
        return self.max_scale * torch.tanh(m / self.max_scale)

    def forward(self, y: torch.Tensor, e: torch.Tensor, e_g: torch.Tensor, *,
                multipliers: torch.Tensor | None = None, dither: torch.Generator | None = None) -> torch.Tensor:
        """Round ``y``'s DCT to the steps of :meth:`multipliers` (or of the ``multipliers`` given).

        With ``dither`` (an inversion's forward model) the rounding becomes additive uniform noise,
        half a step wide, drawn from it (:func:`~redegrade.pixels.jpeg.dither_to_step`): a loss that
        pulls each coefficient to the centre of the observed bin instead of one that is flat inside it.
        """
        m = (self.multipliers(e, e_g, y.shape[-2:]) if multipliers is None else multipliers).to(y.dtype)
        steps = m[..., None, None] * self.tables.to(y.dtype)[None, :, None, None]  # [B,2,H/8,W/8,8,8]
        # baseline JPEG stores steps as bytes: libjpeg caps them at 255 (most high frequencies below q≈20)
        steps = torch.minimum(steps, steps.new_tensor(255.0))
        out = quantise_ycc((y + 1) * 127.5, steps[:, 0], steps[:, 1], subsample=self.subsample,
                           quantiser=(round_to_step if dither is None
                                      else functools.partial(dither_to_step, generator=dither)))
        return out / 127.5 - 1
