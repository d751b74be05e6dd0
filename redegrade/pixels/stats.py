"""Colour and noise primitives: BT.601 luma, the finest Haar diagonal band, the MAD → σ factor."""
from __future__ import annotations

import torch

from redegrade.pixels.scale import to_unit

#: ITU-R BT.601 luma weights (what JPEG's YCbCr uses).
LUMA = (0.299, 0.587, 0.114)
#: MAD → standard deviation for a Gaussian: Φ⁻¹(3/4).
MAD_TO_STD = 0.6745


def luma(x: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` in ``[-1,1]`` → BT.601 luma ``[B,1,H,W]`` in ``[0,1]``."""
    w = torch.tensor(LUMA, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (to_unit(x.float()) * w).sum(dim=1, keepdim=True)


def haar_hh(x: torch.Tensor) -> torch.Tensor:
    """Finest orthonormal Haar diagonal band of each channel, ``[B,C,H//2,W//2]``.

    Orthonormal, so i.i.d. noise of standard deviation σ stays σ in this band, while smooth content
    (constant or linear over a 2×2 block) cancels exactly.
    """
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a - b - c + d) / 2
