"""Offline, no-reference image statistics for judging degradation transfer.

None of these needs pretrained weights, so they run anywhere. They answer three questions about an
image ``[B,3,H,W]`` in ``[-1,1]``, measured on intensities rescaled to ``[0,1]``:

* :func:`noise_level` — how noisy? Donoho's robust estimate ``median(|HH|) / 0.6745`` on the finest
  orthonormal Haar diagonal band, per channel, averaged. Unit: standard deviation in ``[0,1]`` units, so
  additive Gaussian noise of σ on a smooth image reads ≈ σ.
* :func:`sharpness` — how much fine detail? Variance of the Laplacian of the luma. Blur lowers it; noise
  raises it.
* :func:`blockiness` — JPEG blocking: mean absolute luma step across 8×8 block boundaries divided by the
  mean step inside blocks, both directions. ≈1 for natural or resampled images, > 1 for blocky JPEG.
  By default the grid may sit at any of the 8 phases (crops of JPEGs and synthesised images need not
  keep JPEG's origin).

:func:`filter_bank_stats` and :func:`gram_matrix` give distribution statistics (per-filter mean and
standard deviation, DISTS-style, and Gram matrices) of a fixed random filter bank, for comparing textures
whose noise realisations differ pixel by pixel. :func:`measure` bundles the three scalar statistics.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from redegrade.image import check_image
from redegrade.pixels.scale import to_unit
from redegrade.pixels.stats import MAD_TO_STD, haar_hh, luma
from redegrade.settings import generator

# Mean absolute step below which a region counts as flat (¼ of an 8-bit level, in [0,1] units).
_FLAT = 1e-3


def noise_level(x: torch.Tensor) -> torch.Tensor:
    """Robust noise standard deviation per image ``[B]`` (Donoho's MAD of the Haar HH band), in ``[0,1]`` units."""
    check_image(x, "image")
    hh = haar_hh(to_unit(x.float())).flatten(2)  # [B, C, N]
    sigma = hh.abs().median(dim=-1).values / MAD_TO_STD  # [B, C]
    return sigma.mean(dim=1)


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian of the luma, per image ``[B]`` (borders excluded)."""
    check_image(x, "image")
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device).view(1, 1, 3, 3)
    lap = F.conv2d(luma(x), k)
    return lap.flatten(1).var(dim=1)


def _phase_means(d: torch.Tensor, dim: int, block: int) -> torch.Tensor:
    """Mean of ``d`` ``[B,1,H,W]`` over the positions of each phase ``(j+1) % block`` along ``dim`` → ``[B,block]``."""
    n = d.shape[dim]
    phase = (torch.arange(n, device=d.device) + 1) % block
    d = d.movedim(dim, -1).flatten(1, -2)  # [B, other, n]
    return torch.stack([d[..., phase == k].mean(dim=(1, 2)) for k in range(block)], dim=1)


def blockiness(x: torch.Tensor, block: int = 8, *, any_phase: bool = True) -> torch.Tensor:
    """JPEG blockiness per image ``[B]``: mean absolute luma step across block boundaries / inside blocks.

    For each direction, the steps between neighbouring pixels are averaged per position modulo
    ``block``; the boundary phase is the grid JPEG uses (anchored at pixel 0), or with ``any_phase``
    the strongest of the ``block`` phases, so a grid that is shifted (a crop of a JPEG, or a synthesised
    image whose blocks are not at the origin) counts too. The ratio to the mean of the other phases is
    averaged over both directions. Natural images give ≈1 (slightly above with ``any_phase``); JPEG at
    low quality gives clearly more.
    """
    check_image(x, "image")
    y = luma(x)
    if min(y.shape[-2:]) < 2 * block:
        raise ValueError(f"blockiness needs at least {2 * block}×{2 * block} pixels, got {tuple(y.shape[-2:])}")
    ratios = []
    for dim in (-1, -2):
        d = (y.narrow(dim, 1, y.shape[dim] - 1) - y.narrow(dim, 0, y.shape[dim] - 1)).abs()
        m = _phase_means(d, dim % 4, block)  # [B, block]
        k = m.argmax(dim=1) if any_phase else torch.zeros(m.shape[0], dtype=torch.long, device=m.device)
        boundary = m.gather(1, k[:, None])[:, 0]
        interior = (m.sum(dim=1) - boundary) / (block - 1)
        # the floor (a quarter of an 8-bit step) keeps flat, featureless crops at ≈1 instead of 0/0
        ratios.append((boundary + _FLAT) / (interior + _FLAT))
    return (ratios[0] + ratios[1]) / 2


def local_variance(x: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Local luma variance map ``[B,1,H-window+1,W-window+1]`` over a ``window``² box."""
    check_image(x, "image")
    y = luma(x)
    mean = F.avg_pool2d(y, window, stride=1)
    return (F.avg_pool2d(y * y, window, stride=1) - mean * mean).clamp_min(0)


def random_filter_bank(n_filters: int = 16, size: int = 5, seed: int = 0) -> torch.Tensor:
    """A fixed bank of zero-mean, unit-norm random filters ``[n,3,size,size]`` (same seed → same bank).

    Zero mean makes every filter a band-pass: it responds to texture, noise and edges, not to brightness.
    """
    w = torch.randn(n_filters, 3, size, size, generator=generator(seed))
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def filter_bank_stats(x: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
    """DISTS-style texture statistics ``[B, 2n]``: per-filter mean and standard deviation of the responses.

    Two images with the same noise distribution but different noise realisations give nearly equal
    statistics, which pixel losses cannot express.
    """
    check_image(x, "image")
    bank = random_filter_bank() if bank is None else bank
    r = F.conv2d(to_unit(x.float()), bank.to(x.device, x.dtype)).flatten(2)  # [B, n, N]
    return torch.cat([r.mean(dim=-1), r.std(dim=-1)], dim=1)


def gram_matrix(x: torch.Tensor, bank: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix ``[B,n,n]`` of the random filter-bank responses (second-order texture statistics)."""
    check_image(x, "image")
    bank = random_filter_bank() if bank is None else bank
    r = F.conv2d(to_unit(x.float()), bank.to(x.device, x.dtype)).flatten(2)  # [B, n, N]
    return r @ r.transpose(1, 2) / r.shape[-1]


def measure(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three scalar statistics used in evaluation: ``noise``, ``sharpness``, ``blockiness`` (each ``[B]``)."""
    with torch.no_grad():
        return {"noise": noise_level(x), "sharpness": sharpness(x), "blockiness": blockiness(x)}


def fraction_moved(transferred: float, clean: float, target: float, *, log: bool = False) -> float:
    """How far a statistic moved from ``clean`` toward ``target``: 0 = not at all, 1 = all the way.

    ``log=True`` measures on a log scale (for statistics that span orders of magnitude, like sharpness).
    Returns NaN when the target does not differ from the clean value.
    """
    if log:
        transferred, clean, target = (math.log(max(v, 1e-7)) for v in (transferred, clean, target))
    span = target - clean
    if abs(span) < 1e-12:
        return float("nan")
    return (transferred - clean) / span
