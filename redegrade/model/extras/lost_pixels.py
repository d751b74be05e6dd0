"""Pixels that y shows black in every channel stay black in ŷ (the ``lost_pixels`` extra)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: [0,1] level at or under which a pixel's brightest channel counts as black: half a step of 8 bits, so
#: only pixels stored as (0, 0, 0) do.
BLACK = 0.5 / 255


def keep_mask(y: torch.Tensor) -> torch.Tensor:
    """``[B,1,H,W]``: 0 where every channel of y ``[B,3,H,W]`` (in [-1,1]) is black, 1 elsewhere.

    FFHQ-X's N drops whole pixels to black and P paints strokes black, and y shows which ones: on
    in-range targets the share of black pixels in an N_M observation is its drop rate (0.15–0.18 for
    p = 0.16), where clean faces and U or A observations have none. A synthesis that has to render the
    drop itself learns a darkening that does not scale with intensity (E[y] = (1 − p)·x), and the
    inversion brightens dark regions to make up for it; read from y, the lost pixels are exactly
    where they are, and the synthesis learns only what the kept ones show. Content that is black in
    y (clipped shadows) counts as lost too: all it says is "at most 0", and the prior fills it.
    """
    brightest = y.detach().amax(dim=1, keepdim=True)
    return (brightest > 2 * BLACK - 1).to(y.dtype)


def resize(keep: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """``keep`` [B,1,h,w] at ``size`` (nearest neighbour, so it stays 0/1); None stays None."""
    return None if keep is None else F.interpolate(keep, size=size, mode="nearest")


def apply(out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``out`` [B,3,H,W] in [-1,1] with the pixels where ``keep`` [B,1,H,W] is 0 set to black (−1)."""
    return keep.to(out.dtype) * (out + 1) - 1
