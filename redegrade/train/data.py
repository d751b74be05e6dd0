"""Training pairs from a folder of photos: clean crop x, degraded crop y, and MoCo's positive crop.

Images are read once (jpg/jpeg/png, recursive), downscaled so the short side is at most
``max_side`` and cached in memory as uint8. Each batch is a pure function of ``(seed, step)``: the
sampler makes its own ``torch.Generator`` per step, so a resumed run sees exactly the batches an
uninterrupted run would have seen, with no loader state to checkpoint.

Per sample (tech-facts §1.10): pick an image, cut a region of ``region_scale``·crop, degrade the
whole region with the WQI mix, then take two random crops of the degraded region — the first with
its clean counterpart (x, y), the second as the contrastive positive (same degradation, other content).
Crops start at multiples of 8 in the region, so JPEG's block grid stays anchored at each crop's
(0, 0), as it is in a JPEG file. With ``clean_prob`` a sample is left undegraded (y = x): the WQI mix
always blurs or compresses something, and a model that never sees a clean target degrades
everything a little.

With ``pairs`` the batch is made of pairs (2k, 2k+1): two different photos degraded with the same
parameters (independent noise fields). The trainer then synthesises each sample from its partner's
code — exactly what transfer does — so whatever the code carries about the content (brightness,
texture, a soft-focus background read as blur) costs loss; the partner is also MoCo's positive.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from redegrade.degradations.wqi import NOISE_STEPS, WQIConfig, WQIMix
from redegrade.errors import InputError
from redegrade.image import shrink_short_side

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png")
Degrade = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, dict]]
Apply = Callable[[torch.Tensor, dict, torch.Generator], torch.Tensor]


def find_images(root: str | Path) -> list[Path]:
    """All jpg/jpeg/png files under ``root`` (recursive), sorted for a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"training data folder {root} does not exist; fetch photos with "
                         "`python -m redegrade.train.photos --out DIR` or point --data at a folder of jpg/png files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise InputError(f"no .jpg/.jpeg/.png images found under {root}")
    return files


def load_cached(path: Path, max_side: int, min_side: int) -> torch.Tensor | None:
    """Read an image as uint8 [3,H,W], downscaled (Lanczos) so the short side is ≤ ``max_side``.

    Returns None (with a warning) for images smaller than ``min_side`` or unreadable files.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(shrink_short_side(im.convert("RGB"), max_side), dtype=np.uint8).copy()
    except OSError as exc:
        log.warning("skipping unreadable image %s (%s)", path, exc)
        return None
    if min(arr.shape[:2]) < min_side:
        log.warning("skipping %s: %dx%d is smaller than the %d px region a sample needs",
                    path, arr.shape[1], arr.shape[0], min_side)
        return None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class Batch:
    x: torch.Tensor      # clean crops [B,3,c,c] in [-1,1]
    y: torch.Tensor      # degraded crops at the same positions
    y_pos: torch.Tensor  # MoCo positives: the same degradation on other content
    partner: torch.Tensor | None = None  # [B] index of the sample degraded the same way (pairs only)
    clean: torch.Tensor | None = None    # [B] bool: y is x, undegraded (see clean_prob)
    jpeg_quality: torch.Tensor | None = None  # [B] int: the JPEG quality y was saved at, 0 for none
    noise_std: torch.Tensor | None = None     # [B] float: the Gaussian noise std added to y ([0,1] units), 0 for none
    noisy: torch.Tensor | None = None         # [B] bool: y given x is random pixel by pixel (the task adds noise)


class PairSampler:
    """Deterministic (seed, step) → :class:`Batch` sampler over an in-memory image cache."""

    def __init__(self, images: list[torch.Tensor], *, crop: int, batch: int, seed: int = 0,
                 degrade: Degrade | None = None, region_scale: float = 1.5, names: list[str] | None = None,
                 clean_prob: float = 0.0, pairs: bool = False, apply: Apply | None = None,
                 wqi: WQIConfig | None = None):
        if not images:
            raise InputError("no usable training images (all were unreadable or too small)")
        if crop % 8:
            raise InputError(f"--crop must be a multiple of 8 (the synthesis U-Net halves three times), got {crop}")
        if not 0.0 <= clean_prob <= 1.0:
            raise InputError(f"clean_prob must lie in [0, 1], got {clean_prob}")
        self.images, self.crop, self.batch, self.seed, self.clean_prob = images, crop, batch, seed, clean_prob
        self.region = int(round(crop * region_scale))
        small = min(min(im.shape[-2:]) for im in images)
        self.region = max(crop, min(self.region, small))
        if degrade is None:
            degrade = WQIMix(wqi)
        apply = apply or getattr(degrade, "apply", None)  # a mix object re-applies its own parameters
        self.degrade, self.apply, self.pairs = degrade, apply, pairs
        if pairs and (apply is None or batch % 2):
            raise InputError("pairs need an even batch and a degradation that can re-apply its parameters (apply=)")
        self.names = names or [str(i) for i in range(len(images))]
        # sample images in proportion to their area so big photos are not under-used
        area = torch.tensor([float(im.shape[-1] * im.shape[-2]) for im in images])
        self.weights = area / area.sum()

    @classmethod
    def from_folder(cls, root: str | Path, *, crop: int, batch: int, max_side: int = 512, seed: int = 0,
                    degrade: Degrade | None = None, region_scale: float = 1.5, clean_prob: float = 0.0,
                    pairs: bool = False, wqi: WQIConfig | None = None) -> PairSampler:
        """Load every photo under ``root`` once (short side ≤ ``max_side``) and build a sampler."""
        files = find_images(root)
        images, names = [], []
        for f in files:
            im = load_cached(f, max_side, crop)
            if im is not None:
                images.append(im)
                names.append(str(f))
        mb = sum(im.numel() for im in images) / 2 ** 20
        log.info("cached %d training images from %s (%.1f MiB as uint8)", len(images), root, mb)
        return cls(images, crop=crop, batch=batch, seed=seed, degrade=degrade, region_scale=region_scale, names=names,
                   clean_prob=clean_prob, pairs=pairs, wqi=wqi)

    def generator(self, step: int) -> torch.Generator:
        # one independent stream per (seed, step): resuming needs no sampler state
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2 ** 63))

    def _randint(self, high: int, g: torch.Generator) -> int:
        return int(torch.randint(0, high, (1,), generator=g)) if high > 0 else 0

    def _offset(self, g: torch.Generator) -> int:
        """A crop offset in the region on JPEG's 8-pixel grid."""
        return 8 * self._randint((self.region - self.crop) // 8 + 1, g)

    def _region(self, i: int, g: torch.Generator) -> torch.Tensor:
        """A random ``region``² cut of image ``i`` in [-1,1], flipped half the time."""
        im, r = self.images[i], self.region
        h, w = im.shape[-2:]
        top, left = self._randint(h - r + 1, g), self._randint(w - r + 1, g)
        region = im[:, top:top + r, left:left + r].float().div(127.5).sub(1).unsqueeze(0)
        if bool(torch.rand((), generator=g) < 0.5):  # flips add content variety for free
            region = region.flip(-1)
        return region

    def _crop(self, t: torch.Tensor, top: int, left: int) -> torch.Tensor:
        return t[..., top:top + self.crop, left:left + self.crop]

    def sample(self, step: int) -> Batch:
        """The batch for training step ``step`` (same step, same seed → same tensors)."""
        g = self.generator(step)
        xs, ys, ps, cl, jq, ns, nz = [], [], [], [], [], [], []
        groups = self.batch // 2 if self.pairs else self.batch
        idx = torch.multinomial(self.weights, groups, replacement=True, generator=g).tolist()
        for i in idx:
            regions = [self._region(i, g)]
            if self.pairs:
                j = int(torch.multinomial(self.weights, 1, generator=g))
                if j == i and len(self.images) > 1:  # another photo, so content cannot match
                    j = (i + 1 + self._randint(len(self.images) - 1, g)) % len(self.images)
                regions.append(self._region(j, g))
            clean = bool(self.clean_prob and torch.rand((), generator=g) < self.clean_prob)
            cl += [clean] * len(regions)
            if clean:
                degraded, params = regions, {}
            else:
                first, params = self.degrade(regions[0], g)
                degraded = [first] + [self.apply(r, params, g) for r in regions[1:]]
                degraded = [d.clamp(-1, 1) for d in degraded]
            jq += [int(params.get("jpeg", {}).get("quality", 0))] * len(regions)
            ns += [float(params.get("gaussian_noise", {}).get("std", 0.0))] * len(regions)
            # FFHQ-X labels its noisy tasks; a WQI draw is noisy when it ran one of the mix's noise steps
            nz += [bool(params.get("noisy") or any(k in params for k in NOISE_STEPS))] * len(regions)
            for region, deg in zip(regions, degraded):
                t1, l1 = self._offset(g), self._offset(g)
                t2, l2 = self._offset(g), self._offset(g)
                xs.append(self._crop(region, t1, l1))
                ys.append(self._crop(deg, t1, l1))
                ps.append(self._crop(deg, t2, l2))
        x, y, clean, quality, std = torch.cat(xs), torch.cat(ys), torch.tensor(cl), torch.tensor(jq), torch.tensor(ns)
        noisy = torch.tensor(nz)
        if not self.pairs:
            return Batch(x, y, torch.cat(ps), clean=clean, jpeg_quality=quality, noise_std=std, noisy=noisy)
        partner = torch.arange(self.batch) ^ 1
        return Batch(x, y, y[partner], partner, clean, quality, std, noisy)


def synthetic_images(n: int = 4, size: int = 96, seed: int = 0) -> list[torch.Tensor]:
    """Smooth random colour images with edges (uint8 [3,H,W]): a stand-in dataset for tests."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        base = torch.rand(1, 3, size // 8, size // 8, generator=g)
        im = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        cx, cy, rad = (torch.rand(3, generator=g) * size).tolist()
        disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < (rad / 2) ** 2).float()
        im = im * (1 - 0.5 * disc) + 0.5 * disc * torch.rand(3, 1, 1, generator=g)
        out.append((im[0].clamp(0, 1) * 255).round().to(torch.uint8))
    return out


__all__ = ["EXTENSIONS", "find_images", "load_cached", "Batch", "PairSampler", "synthetic_images"]
