"""Degradation encoders (tech-facts §1.3, §1.4).

HDEN (CDD ``LPE``) maps an image to the global code e_g ∈ R^dim_g; IDEN (CDD ``LPEL``) maps it to the
local map e_l ∈ [0,1]^{c_l×H/2×W/2}. Both have a long-range branch (large first kernel) and a
short-range branch (one stride-2 conv); convs are ``Conv → BatchNorm → LeakyReLU(0.2)``.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from redegrade.pixels.jpeg import dct_matrix, quantization_tables, split_blocks
from redegrade.pixels.scale import to_unit
from redegrade.pixels.stats import MAD_TO_STD, haar_hh, luma

#: Length of :func:`jpeg_signature`.
SIGNATURE_DIM = 64
#: The libjpeg qualities whose luma steps :func:`jpeg_lattice` tries (one feature each).
LATTICE_QUALITIES = tuple(range(5, 100))
#: Length of :func:`noise_signature`: 3 scales × 3 channels × 2 statistics.
NOISE_SIGNATURE_DIM = 18


def jpeg_signature(y: torch.Tensor) -> torch.Tensor:
    """Fixed (weight-free) JPEG evidence per image ``[B,64]``: for each of the 64 block-DCT frequencies
    of the luma, the share of near-zero coefficients on JPEG's 8×8 grid (anchored at pixel 0) minus that
    on the grid shifted by 4 pixels.

    JPEG zeroes coefficients only on its own grid; blur or flat content makes them small on every grid,
    so the difference isolates JPEG and grows as its quality falls. A small convnet with global pooling
    cannot find a fixed grid (it is translation-equivariant), and the shipped model's codes moved by
    only 0.2 of the photo-to-photo spread for q=20. "Near zero" is ``exp(−c²)`` with c in 8-bit levels.
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
    """Fixed (weight-free) JPEG quality evidence per image ``[B,K]``, one entry per quality in
    :data:`LATTICE_QUALITIES`: a softmax over how well the luma's AC coefficients (on the grid at pixel 0)
    sit on that quality's libjpeg steps, gated to 0 where no quality fits.

    The fit of steps s is the mean of cos(2π c/s) over coefficients with |c| > s/2 (those a JPEG of that
    quality kept): ≈1 on the file's own steps, ≤0 elsewhere. Why: JPEG's output lies on its lattice
    whatever came before it, and the learned codes confused noise with quality (σ = 0.05 noise before
    q = 75 got 1.2–1.4× libjpeg's steps, and the JPEG head rounded the noise away); this picks the
    quality exactly on 64² crops, noisy or not. Clean or noisy photos fit nothing (≤ 0.15).
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
    """Fixed (weight-free) noise evidence per image ``[B,18]``: for each RGB channel at 1, ½ and ¼ scale,
    the log of two robust noise estimates from the finest Haar diagonal band (Donoho's median/0.6745,
    and the mean of the smallest quarter of its magnitudes), relative to 1 % of the range.

    Why: a linear read of the shipped model's e_g put σ = 0.03 noise at 0.3 of its level on held-out
    photos, and weak noise transferred 0.1 of the way; these statistics see it directly (the coarser
    scales keep JPEG-compressed noise, whose finest band JPEG removes). ≈0 for a clean photo's texture.
    """
    u, feats = to_unit(y.float()), []
    for _ in range(3):
        hh = haar_hh(u).abs().flatten(2)  # [B,3,N]
        quarter = hh.topk(max(1, hh.shape[-1] // 4), dim=-1, largest=False).values.mean(dim=-1)
        for stat in (hh.median(dim=-1).values / MAD_TO_STD, quarter):
            feats.append(((stat + 1e-3) / 0.01).log())
        u = nn.functional.avg_pool2d(u, 2)
    return torch.cat(feats, dim=1)


class ConvBNAct(nn.Sequential):
    """zero-pad → Conv (bias) → BatchNorm → LeakyReLU(0.2) (CDD ``Conv2dBlock``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, pad: int | None = None):
        pad = kernel // 2 if pad is None else pad
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, pad, bias=True), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2))


def short_branch(w: int) -> nn.Sequential:
    """Short-range branch: [B,3,H,W] → [B,4w,H/2,W/2] (one stride-2 conv)."""
    return nn.Sequential(ConvBNAct(3, w, 3), ConvBNAct(w, w, 1), ConvBNAct(w, 2 * w, 3, 2),
                         ConvBNAct(2 * w, 2 * w, 1), ConvBNAct(2 * w, 4 * w, 3), ConvBNAct(4 * w, 4 * w, 1))


class HDEN(nn.Module):
    """Global degradation encoder: y [B,3,H,W] → e_g [B,dim_g], unbounded.

    Both branches are global-average-pooled, concatenated and mapped by a two-layer MLP. With
    ``signature`` (not in CDD) a linear map of :func:`jpeg_signature` is added, with
    ``noise_signature`` one of :func:`noise_signature`, with ``lattice`` one of :func:`jpeg_lattice`.
    """

    def __init__(self, *, width: int = 64, dim_g: int = 256, kernel: int = 3, signature: bool = False,
                 noise_signature: bool = False, lattice: bool = False):
        super().__init__()
        w = width
        d = (kernel - 1) // 2  # CDD: stride of the first long-range conv, 1 for k = 3
        self.long = nn.Sequential(ConvBNAct(3, w, kernel, d, 0), ConvBNAct(w, w, 3), ConvBNAct(w, 2 * w, 3),
                                  ConvBNAct(2 * w, 4 * w, 3))
        self.short = short_branch(w)
        self.head = nn.Sequential(nn.Linear(8 * w, dim_g), nn.LeakyReLU(0.1), nn.Linear(dim_g, dim_g))
        # Added to e_g, randomly initialised, no bias: the signature is ≈0 without JPEG, so a warm start
        # keeps every other code, while JPEG'd inputs move at once (a zero start would be a saddle: the
        # JPEG head's zero weights give e_g no gradient towards JPEG and e_g gives them nothing to read).
        self.jpeg = nn.Linear(SIGNATURE_DIM, dim_g, bias=False) if signature else None
        if self.jpeg is not None:
            # small: on the shipped model's codes this moves q=20 JPEGs by about their photo-to-photo
            # spread (1.2×; Linear's default init: 17×) and clean photos by under a tenth of it (0.08×)
            nn.init.normal_(self.jpeg.weight, std=0.005)
        self.noise = nn.Linear(NOISE_SIGNATURE_DIM, dim_g, bias=False) if noise_signature else None
        if self.noise is not None:
            # tiny: unlike the JPEG signature this one is not ≈0 on every clean photo (texture reads as
            # noise), so a warm start must move every code as little as possible until it is trained
            nn.init.normal_(self.noise.weight, std=1e-3)

        self.lattice = nn.Linear(len(LATTICE_QUALITIES), dim_g, bias=False) if lattice else None
        if self.lattice is not None:
            # the feature is 0 without JPEG, so a warm start keeps those codes whatever this is; small,
            # so JPEG'd codes start near where they were
            nn.init.normal_(self.lattice.weight, std=0.01)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        e_g = self.head(torch.cat([self.long(y).mean(dim=(2, 3)), self.short(y).mean(dim=(2, 3))], dim=1))
        if self.jpeg is not None:
            e_g = e_g + self.jpeg(jpeg_signature(y))
        if self.noise is not None:
            e_g = e_g + self.noise(noise_signature(y))
        if self.lattice is not None:
            e_g = e_g + self.lattice(jpeg_lattice(y))
        return e_g


class IDEN(nn.Module):
    """Local degradation encoder: y [B,3,H,W] → e_l [B,c_l,H/2,W/2] in [0,1] (sigmoid).

    The long-range branch keeps full resolution (strided first conv undone by a transposed conv)
    and is average-pooled to H/2; a 1×1 fusion of both branches ends in a sigmoid.
    """

    def __init__(self, *, width: int = 64, c_l: int = 4, kernel: int = 3):
        super().__init__()
        w = width
        s = (kernel - 1) // 2
        p = s // 2
        self.long = nn.Sequential(ConvBNAct(3, w, kernel, s, p), ConvBNAct(w, w, 3), ConvBNAct(w, 2 * w, 3),
                                  ConvBNAct(2 * w, 2 * w, 3), nn.ConvTranspose2d(2 * w, 4 * w, kernel, s),
                                  nn.AvgPool2d(2))
        self.short = short_branch(w)
        self.fuse = nn.Sequential(nn.Conv2d(8 * w, 4 * w, 1), nn.LeakyReLU(0.1), nn.Conv2d(4 * w, c_l, 1),
                                  nn.Sigmoid())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b = self.short(y)
        a = self.long(y)
        h, w = b.shape[-2:]
        if a.shape[-2] < h or a.shape[-1] < w:
            # only for kernel/size combinations the configs never use; pad rather than fail
            a = nn.functional.pad(a, (0, max(w - a.shape[-1], 0), 0, max(h - a.shape[-2], 0)), mode="replicate")
        a = a[..., :h, :w]  # CDD crops the long branch when it comes out larger
        return self.fuse(torch.cat([a, b], dim=1))
