"""The similarity loss d(y, ŷ) of training, by name (:func:`perceptual`).

* ``stats`` — the offline default: statistics of a FIXED, seeded random filter bank at several scales,
  compared DISTS-style (means and standard deviations over local windows). It compares distributions,
  not pixels, so a re-degraded image whose noise has a different random state is not punished (seed
  001 §1.2); no pretrained backbone is needed.
* ``gram`` — the same filter bank compared through per-scale Gram matrices (global texture statistics).
* ``lpips`` — the ``lpips`` package's VGG LPIPS (needs torchvision's ImageNet VGG16 weights).
* ``l1`` — plain pixel L1 (punishes a different noise random state; kept as a baseline).
* ``msl1`` — the inversion's own multiscale L1 objective.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.errors import ConfigError
from redegrade.train.losses import check_pair

PERCEPTUAL = ("stats", "gram", "lpips", "l1", "msl1")


class FilterBank(nn.Module):
    """A fixed, seeded bank of zero-mean random filters applied at several scales.

    Features per scale: the image itself (mapped to [0,1], so colour and brightness count) and the
    rectified responses ``|w * x|`` of ``channels`` random ``kernel``×``kernel`` filters. Zero-mean
    filters respond to structure (edges, noise, blockiness) rather than brightness; rectification
    makes the local mean of a response its energy, which blur lowers and noise raises.
    """

    def __init__(self, channels: int = 24, kernel: int = 5, scales: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(scales, channels, 3, kernel, kernel, generator=g)
        w = w - w.mean(dim=(2, 3, 4), keepdim=True)
        w = w / w.flatten(2).norm(dim=2).view(scales, channels, 1, 1, 1)
        self.register_buffer("weight", w, persistent=False)
        self.scales = scales

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in range(self.scales):
            if s:
                if min(x.shape[-2:]) < 2 * self.weight.shape[-1]:
                    break
                x = F.avg_pool2d(x, 2)
            r = F.conv2d(x, self.weight[s].to(x), padding=self.weight.shape[-1] // 2)
            feats.append(torch.cat([(x + 1) / 2, r.abs()], dim=1))
        return feats


class StatsLoss(nn.Module):
    """DISTS-style comparison of filter-bank statistics over local windows (weight-free).

    For every feature channel and ``window``×``window`` cell: a mean term
    ``(2μ_yμ_ŷ + c)/(μ_y² + μ_ŷ² + c)`` and a spread term ``(2σ_yσ_ŷ + c)/(σ_y² + σ_ŷ² + c)``;
    ``cov_weight`` adds DISTS's structure term ``(2σ_yŷ + c)/(σ_y² + σ_ŷ² + c)``, which is sensitive to
    the noise's random state and therefore off by default. Loss = ``scale``·(1 − mean similarity), 0
    when equal; ``scale`` = 10 puts visible distortions at ≈0.1–0.5, DISTS's range, so CDD's loss
    weights carry over.
    """

    def __init__(self, *, channels: int = 24, kernel: int = 5, scales: int = 4, window: int = 8,
                 cov_weight: float = 0.0, c: float = 1e-4, scale: float = 10.0, seed: int = 0):
        super().__init__()
        self.bank = FilterBank(channels, kernel, scales, seed)
        self.window, self.cov_weight, self.c, self.scale = window, cov_weight, c, scale

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        w = min(self.window, *t.shape[-2:])
        return F.avg_pool2d(t, w, stride=max(1, w // 2), ceil_mode=True) if w > 1 else t

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        check_pair(y, y_hat)
        c = self.c
        total = y.new_zeros(())
        fy, fh = self.bank(y), self.bank(y_hat)
        for a, b in zip(fy, fh):
            mu_a, mu_b = self._pool(a), self._pool(b)
            var_a = (self._pool(a * a) - mu_a ** 2).clamp_min(0)
            var_b = (self._pool(b * b) - mu_b ** 2).clamp_min(0)
            sd_a, sd_b = (var_a + 1e-12).sqrt(), (var_b + 1e-12).sqrt()
            mean_sim = (2 * mu_a * mu_b + c) / (mu_a ** 2 + mu_b ** 2 + c)
            spread_sim = (2 * sd_a * sd_b + c) / (var_a + var_b + c)
            sim = (mean_sim + spread_sim) / 2
            if self.cov_weight:
                cov = self._pool(a * b) - mu_a * mu_b
                struct = (2 * cov + c) / (var_a + var_b + c)
                sim = (sim + self.cov_weight * struct) / (1 + self.cov_weight)
            total = total + (1 - sim).mean()
        return self.scale * total / len(fy)


class GramLoss(nn.Module):
    """Per-scale Gram matrices of the filter-bank features, compared by a relative L1 distance."""

    def __init__(self, *, channels: int = 24, kernel: int = 5, scales: int = 4, seed: int = 0):
        super().__init__()
        self.bank = FilterBank(channels, kernel, scales, seed)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        check_pair(y, y_hat)
        total = y.new_zeros(())
        fy, fh = self.bank(y), self.bank(y_hat)
        for a, b in zip(fy, fh):
            ga = torch.einsum("bchw,bdhw->bcd", a, a) / a[0, 0].numel()
            gb = torch.einsum("bchw,bdhw->bcd", b, b) / b[0, 0].numel()
            total = total + (ga - gb).abs().mean() / (ga.abs().mean() + 1e-3)
        return total / len(fy)


class L1Loss(nn.Module):
    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        check_pair(y, y_hat)
        return (y - y_hat).abs().mean()


class LpipsLoss(nn.Module):
    """VGG LPIPS from ``redegrade.objective.lpips_vgg`` (frozen; ``[-1,1]`` inputs)."""

    def __init__(self, *, pretrained_backbone: bool = True):
        super().__init__()
        from redegrade.objective import lpips_vgg

        self.net = lpips_vgg(pretrained_backbone=pretrained_backbone)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        check_pair(y, y_hat)
        return self.net(y_hat, y).mean()


def perceptual(name: str, *, pretrained_backbone: bool = True, seed: int = 0) -> nn.Module:
    """Build the similarity loss ``d(y, ŷ)``: ``stats`` (default offline), ``gram``, ``lpips``, ``l1`` or
    ``msl1`` (the multiscale L1 objective of ``restore --loss l1``)."""
    if name == "stats":
        return StatsLoss(seed=seed)
    if name == "gram":
        return GramLoss(seed=seed)
    if name == "lpips":
        return LpipsLoss(pretrained_backbone=pretrained_backbone)
    if name == "l1":
        return L1Loss()
    if name == "msl1":
        from redegrade.objective import build

        return build("l1")  # the inversion's own multiscale L1: the model becomes its best predictor of y
    raise ConfigError(f"unknown perceptual loss {name!r}; choose one of {', '.join(PERCEPTUAL)}")
