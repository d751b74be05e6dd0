"""The two intensity scales and the one PSNR.

Images travel as ``[-1,1]`` (the generators' range); degradations, statistics and JPEG work in ``[0,1]``.
"""
from __future__ import annotations

import torch

from redegrade.errors import ShapeError


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """``[-1,1]`` → ``[0,1]``."""
    return (x + 1) * 0.5


def from_unit(u: torch.Tensor) -> torch.Tensor:
    """``[0,1]`` → ``[-1,1]``."""
    return u * 2 - 1


def psnr(x: torch.Tensor, ref: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """PSNR in dB per image ``[B]`` of ``x`` against ``ref`` (``data_range`` 2 for ``[-1,1]`` images, as
    torchmetrics in RSG), computed in float64; ``inf`` where they are equal."""
    if x.shape != ref.shape:
        raise ShapeError(f"PSNR needs equal shapes, got {tuple(x.shape)} and {tuple(ref.shape)}")
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range ** 2 / mse)
