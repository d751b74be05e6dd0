"""Fixed (weight-free) statistics of y that HDEN's global code also reads: JPEG's grid, JPEG's quantisation
lattice and robust noise estimates, each added to e_g through its own linear map (:class:`Signatures`)."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from redegrade.errors import ShapeError
from redegrade.pixels.jpeg import dct_matrix, quantization_tables, split_blocks
from redegrade.pixels.scale import to_unit
from redegrade.pixels.stats import MAD_TO_STD, haar_hh, luma

#: Length of :func:`jpeg_signature`.
SIGNATURE_DIM = 64
#: The libjpeg qualities whose luma steps :func:`jpeg_lattice` tries (one feature each).
LATTICE_QUALITIES = tuple(range(5, 100))
#: Length of :func:`noise_signature`: 3 scales × 3 channels × 2 statistics.
NOISE_SIGNATURE_DIM = 18
#: Smallest side they read: :func:`jpeg_signature` also looks at the 8×8 grid shifted by 4, which a
#: side of 8 leaves empty (its mean is NaN, and so is every code that reads it).
MIN_SIDE = 16


def jpeg_signature(y: torch.Tensor) -> torch.Tensor:
    """JPEG evidence per image ``[B,64]``: for each of the 64 block-DCT frequencies of the luma, the share
    of near-zero coefficients on JPEG's 8×8 grid (anchored at pixel 0) minus that on the grid shifted by
    4 pixels.

    JPEG zeroes coefficients only on its own grid; blur or flat content makes them small on every grid,
    so the difference isolates JPEG and grows as its quality falls. "Near zero" is ``exp(−c²)`` with c in
    8-bit levels.
    """
    shares = [torch.exp(-_luma_dct(y, off).square()).mean(dim=1) for off in (0, 4)]  # [B,64] each
    return shares[0] - shares[1]


def _luma_dct(y: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """The luma's 8×8 block-DCT coefficients ``[B,N,64]`` in 8-bit levels, on the grid starting at ``offset``."""
    levels = luma(y)[:, 0, offset:, offset:] * 255
    h, w = levels.shape[-2] // 8 * 8, levels.shape[-1] // 8 * 8
    d = dct_matrix().to(levels)
    return (d @ split_blocks(levels[:, :h, :w]) @ d.T).flatten(3).flatten(1, 2)


@functools.lru_cache(maxsize=1)
def _lattice_steps() -> torch.Tensor:
    return torch.stack([quantization_tables(q)[0].flatten()[1:] for q in LATTICE_QUALITIES])  # [K,63] AC


def jpeg_lattice(y: torch.Tensor, *, width: float = 0.05, threshold: float = 0.3) -> torch.Tensor:
    """JPEG quality evidence per image ``[B,K]``, one entry per quality in :data:`LATTICE_QUALITIES`: a
    softmax over how well the luma's AC coefficients (on the grid at pixel 0) sit on that quality's
    libjpeg steps, gated to 0 where no quality fits.

    The fit of steps s is the mean of cos(2π c/s) over coefficients with |c| > s/2 (those a JPEG of that
    quality kept): ≈1 on the file's own steps, ≤0 elsewhere. JPEG's output lies on its lattice whatever
    came before it, so this names the quality on 64² crops, noisy or not; clean or noisy photos fit
    nothing (≤ 0.15).
    """
    coef = _luma_dct(y)[..., 1:]
    fits = []
    for steps in _lattice_steps().to(coef):  # one quality at a time: [B,N,63] rather than [B,K,N,63]
        kept = (coef.abs() > steps / 2).to(coef)
        fits.append((kept * torch.cos(2 * math.pi * coef / steps)).sum(dim=(1, 2)) / (kept.sum(dim=(1, 2)) + 1))
    fit = torch.stack(fits, dim=1)
    gate = torch.sigmoid((fit.amax(dim=1, keepdim=True) - threshold) / width)
    return gate * torch.softmax(fit / width, dim=1)


def noise_signature(y: torch.Tensor) -> torch.Tensor:
    """Noise evidence per image ``[B,18]``: for each RGB channel at 1, ½ and ¼ scale, the log of two robust
    noise estimates from the finest Haar diagonal band (Donoho's median/0.6745, and the mean of the
    smallest quarter of its magnitudes), relative to 1 % of the range.

    The coarser scales keep JPEG-compressed noise, whose finest band JPEG removes. ≈0 for a clean
    photo's texture.
    """
    u, feats = to_unit(y.float()), []
    for _ in range(3):
        hh = haar_hh(u).abs().flatten(2)  # [B,3,N]
        quarter = hh.topk(max(1, hh.shape[-1] // 4), dim=-1, largest=False).values.mean(dim=-1)
        for stat in (hh.median(dim=-1).values / MAD_TO_STD, quarter):
            feats.append(((stat + 1e-3) / 0.01).log())
        u = nn.functional.avg_pool2d(u, 2)
    return torch.cat(feats, dim=1)


class Signatures(nn.Module):
    """``e_g + jpeg(jpeg_signature(y)) + noise(noise_signature(y)) + lattice(jpeg_lattice(y))``: bias-free
    linear reads of the three fixed statistics, added to HDEN's code.

    The reads start small and random rather than zero (a zero read would be a saddle: the JPEG head's
    small weights give e_g no gradient towards JPEG and e_g gives them nothing to read), at a scale
    each that keeps a warm-started model's codes near where they were: the JPEG statistics are ≈0
    without JPEG, the noise statistics are not ≈0 on a clean photo's texture and start smallest.
    """

    def __init__(self, dim_g: int):
        super().__init__()
        self.jpeg = nn.Linear(SIGNATURE_DIM, dim_g, bias=False)
        nn.init.normal_(self.jpeg.weight, std=0.005)
        self.noise = nn.Linear(NOISE_SIGNATURE_DIM, dim_g, bias=False)
        nn.init.normal_(self.noise.weight, std=1e-3)
        self.lattice = nn.Linear(len(LATTICE_QUALITIES), dim_g, bias=False)
        nn.init.normal_(self.lattice.weight, std=0.01)

    def forward(self, e_g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """HDEN's code ``e_g`` [B,dim_g] plus the three reads of ``y`` [B,3,H,W] (sides ≥ :data:`MIN_SIDE`)."""
        if min(y.shape[-2:]) < MIN_SIDE:
            raise ShapeError(f"observation must be at least {MIN_SIDE}×{MIN_SIDE} px for the degradation "
                             f"model's signatures, got {y.shape[-2]}×{y.shape[-1]}")
        e_g = e_g + self.jpeg(jpeg_signature(y))
        e_g = e_g + self.noise(noise_signature(y))
        return e_g + self.lattice(jpeg_lattice(y))
