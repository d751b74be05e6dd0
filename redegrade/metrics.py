"""FFHQ-X metrics, computed as RSG's ``benchmark/eval.py`` and the seed paper do.

* **accuracy**: LPIPS-VGG and PSNR of the restoration against the ground truth;
* **fidelity**: LPIPS-VGG (and PSNR) of the *truly* re-degraded restoration against the observation;
* **realism**: pFID — Fréchet distance between Inception pool3 features of random 128² crops of the
  restorations and of the ground truths (pytorch-fid's network and Fréchet distance; nothing here
  re-implements Inception or LPIPS).

Images are ``[1,3,H,W]`` in ``[-1,1]``. Networks whose weights cannot be had (offline machines)
raise :class:`~redegrade.errors.CheckpointError`; :class:`OptionalNetwork` turns that into one
warning and ``None`` so a benchmark leaves the column empty instead of failing.
"""
from __future__ import annotations

import logging
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from redegrade import settings
from redegrade.errors import CheckpointError, ShapeError

log = logging.getLogger(__name__)

LPIPS_MIN_SIDE = 16
"""VGG pools four times: smaller images (e.g. 32× upsampling targets of a 32² smoke run) are enlarged."""
PFID_CROP = 128
PFID_CROPS = 1000
T = TypeVar("T")


def _refuse_offline(what: str, url: str) -> None:
    """Offline (``REDEGRADE_OFFLINE``) and not cached: fail at once instead of waiting on the network."""
    cached = settings.torch_hub_file(url)
    if settings.offline() and not cached.is_file():
        raise CheckpointError(f"{what} needs {url}, which is not in {cached.parent} and the network is "
                              "off (REDEGRADE_OFFLINE); download it there")


def lpips_network(*, pretrained_backbone: bool = True) -> nn.Module:
    """LPIPS-VGG: :func:`redegrade.objective.lpips_vgg` (raises ``CheckpointError`` offline)."""
    from redegrade.objective import lpips_vgg

    return lpips_vgg(pretrained_backbone=pretrained_backbone)


@torch.no_grad()
def lpips_distance(net: nn.Module, x: torch.Tensor, ref: torch.Tensor) -> float:
    """LPIPS between two ``[1,3,H,W]`` images in ``[-1,1]`` (the range the ``lpips`` package expects)."""
    if x.shape != ref.shape:
        raise ShapeError(f"LPIPS needs equal shapes, got {tuple(x.shape)} and {tuple(ref.shape)}")
    side = min(x.shape[-2:])
    if side < LPIPS_MIN_SIDE:
        # nearest keeps the pixels as they are; only tiny smoke-test targets take this path
        scale = -(-LPIPS_MIN_SIDE // side)
        x, ref = (F.interpolate(t, scale_factor=scale, mode="nearest") for t in (x, ref))
    device = next(net.parameters()).device
    return float(net(x.to(device), ref.to(device)).mean().item())


class OptionalNetwork(Generic[T]):
    """Build a metric network on first use; when its weights cannot be had, warn once and give ``None``."""

    def __init__(self, what: str, build: Callable[[], T]):
        self.what = what
        self._build = build
        self._net: T | None = None
        self._failed = False

    def get(self) -> T | None:
        if self._net is None and not self._failed:
            try:
                self._net = self._build()
            except CheckpointError as exc:
                self._failed = True
                log.warning("%s is unavailable, its columns stay empty: %s", self.what, exc)
        return self._net

    @property
    def failed(self) -> bool:
        return self._failed


# ---------------------------------------------------------------------------------------------- pFID

def crop_positions(height: int, width: int, size: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random top-left corners ``[n,2]`` (row, col) of ``size²`` crops, uniform like ``T.RandomCrop``."""
    if size > height or size > width:
        raise ShapeError(f"cannot take {size}×{size} crops from a {width}×{height} image")
    rows = torch.randint(0, height - size + 1, (n,), generator=generator)
    cols = torch.randint(0, width - size + 1, (n,), generator=generator)
    return torch.stack([rows, cols], dim=1)


def take_crops(x: torch.Tensor, positions: torch.Tensor, size: int) -> torch.Tensor:
    """Crops ``[n,3,size,size]`` of the image ``x`` ([1,3,H,W]) at ``positions`` from :func:`crop_positions`."""
    return torch.cat([x[..., r:r + size, c:c + size] for r, c in positions.tolist()], dim=0)


def inception_network() -> nn.Module:
    """pytorch-fid's FID Inception-v3 returning pool3 features (2048-d); its weights download at run time."""
    from redegrade import _compat  # noqa: F401  (before pytorch-fid, which imports torchvision)

    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError as exc:
        raise CheckpointError("pFID needs pytorch-fid: pip install 'redegrade[bench]'") from exc
    from pytorch_fid.inception import FID_WEIGHTS_URL

    _refuse_offline("pFID's Inception network", FID_WEIGHTS_URL)
    try:
        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"pFID needs pytorch-fid's Inception weights, which could not be loaded ({exc.__class__.__name__}): "
            f"download {FID_WEIGHTS_URL} into $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/)"
        ) from exc
    return net.eval()


@torch.no_grad()
def inception_features(net: nn.Module, crops: torch.Tensor, *, batch_size: int = 50) -> np.ndarray:
    """Pool3 features ``[n,2048]`` of crops in ``[-1,1]`` (pytorch-fid takes ``[0,1]`` and resizes to 299)."""
    device = next(net.parameters()).device
    out = []
    for i in range(0, crops.shape[0], batch_size):
        batch = ((crops[i:i + batch_size] + 1) / 2).clamp(0, 1).to(device)
        feat = net(batch)[0]
        out.append(feat.reshape(feat.shape[0], -1).double().cpu().numpy())
    return np.concatenate(out, axis=0)


@dataclass
class FeatureStats:
    """Running mean and covariance of feature vectors (float64 sums, so any number of crops fits)."""

    n: int = 0
    total: np.ndarray | None = None
    outer: np.ndarray | None = None

    def add(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)
        if self.total is None:
            self.total = np.zeros(f.shape[1])
            self.outer = np.zeros((f.shape[1], f.shape[1]))
        self.n += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` as ``np.mean`` / ``np.cov(rowvar=False)`` (ddof 1) would give over all features."""
        if self.n < 2:
            raise ValueError("pFID needs at least two crops")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma

    def save(self, path) -> None:
        mu, sigma = self.mean_cov()
        np.savez(path, mu=mu, sigma=sigma, n=self.n)


def frechet_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance between two ``(mu, sigma)`` Gaussians (pytorch-fid's implementation)."""
    from redegrade import _compat  # noqa: F401  (before pytorch-fid, which imports torchvision)
    from pytorch_fid.fid_score import calculate_frechet_distance

    return float(calculate_frechet_distance(a[0], a[1], b[0], b[1]))
