"""Objectives ``loss(y, y_hat, mask=None) -> scalar`` comparing an observation with a re-degraded guess.

The default is RSG's multiscale LPIPS-VGG (the ``lpips`` package; never re-implemented): LPIPS at
every scale down to 16 px plus 0.1·L1 at the coarsest scale reached. ``l1``/``l2`` are weight-free
multiscale alternatives for machines where the VGG backbone cannot be downloaded.
"""
from __future__ import annotations

import urllib.error
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from redegrade import settings
from redegrade.errors import CheckpointError, ConfigError, ShapeError

VGG_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
NAMES = ("lpips", "l1", "l2")


class Multiscale(nn.Module):
    """Sum a per-scale distance over an image pyramid (halving until the side is ≤ ``min_res``).

    ``coarse_l1`` weights an extra L1 term at the coarsest scale reached. With a ``mask``
    (1 = observed), both images get the same noise where the mask is 0 (RSG's trick: a constant fill
    would bias the prior towards that colour) and the mask is pooled along with them.
    """

    def __init__(self, distance: nn.Module | None, *, min_res: int = 16, coarse_l1: float = 0.1,
                 pointwise: str | None = None, seed: int = 0):
        super().__init__()
        self.distance = distance
        self.pointwise = pointwise
        self.min_res = min_res
        self.coarse_l1 = coarse_l1
        self.seed = seed

    def _dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.distance is not None:
            return self.distance(a, b).mean()
        return (a - b).abs().mean() if self.pointwise == "l1" else (a - b).pow(2).mean()

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if y.shape != y_hat.shape:
            raise ShapeError(f"observation {tuple(y.shape)} and re-degraded image {tuple(y_hat.shape)} differ in shape")
        if mask is not None:
            mask = F.interpolate(mask.to(y), size=y.shape[-2:], mode="area")
            g = torch.Generator(device="cpu").manual_seed(self.seed)
            fill = torch.randn(y.shape, generator=g).to(y) * 0.5  # N(0, 0.5²) in [-1,1] = RSG's (randn+0.5)/2 on [0,1]
            y = y * mask + fill * (1 - mask)
            y_hat = y_hat * mask + fill * (1 - mask)
        total = y.new_zeros(())
        while True:
            total = total + self._dist(y_hat, y)
            if min(y.shape[-2:]) // 2 < self.min_res or min(y.shape[-2:]) <= self.min_res:
                break
            y, y_hat = F.avg_pool2d(y, 2), F.avg_pool2d(y_hat, 2)
        if self.coarse_l1:
            total = total + self.coarse_l1 * (y_hat - y).abs().mean()
        return total


def lpips_vgg(*, pretrained_backbone: bool = True) -> nn.Module:
    """The ``lpips`` package's VGG LPIPS in eval mode with frozen weights, taking ``[-1,1]`` inputs.

    ``pretrained_backbone=False`` uses a random VGG (differentiable, not the real metric): for tests.
    """
    from redegrade import _compat  # noqa: F401  (before lpips, which imports torchvision)
    import lpips  # heavy import (torchvision); only when asked for

    def missing(why: str) -> CheckpointError:
        return CheckpointError(
            f"LPIPS-VGG needs torchvision's ImageNet VGG16 weights, which could not be loaded ({why}): "
            f"download {VGG_URL} into {settings.torch_hub_file(VGG_URL).parent}/, "
            "or use the weight-free objective --loss l1")

    cached = settings.torch_hub_file(VGG_URL)
    if pretrained_backbone and settings.offline() and not cached.is_file():
        raise missing("offline: REDEGRADE_OFFLINE is set")
    try:
        with warnings.catch_warnings():  # torchvision's deprecation notices about lpips' `pretrained=` call
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=not pretrained_backbone, verbose=False)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise missing(exc.__class__.__name__) from exc
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def build(name: str = "lpips", *, pretrained_backbone: bool = True, min_res: int = 16) -> Multiscale:
    """Build a named objective: ``lpips`` (RSG's default), ``l1`` or ``l2`` (weight-free, multiscale)."""
    if name == "lpips":
        return Multiscale(lpips_vgg(pretrained_backbone=pretrained_backbone), min_res=min_res)
    if name in ("l1", "l2"):
        return Multiscale(None, pointwise=name, min_res=min_res, coarse_l1=0.0)
    raise ConfigError(f"unknown objective {name!r}; choose one of {', '.join(NAMES)}")
