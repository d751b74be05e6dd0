"""The ground truth: aligned faces from a folder, or the smoke run's synthetic images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from redegrade import settings
from redegrade.errors import InputError
from redegrade.image import save_image

from .protocol import IMAGE_SUFFIXES, seed_for


@dataclass(frozen=True)
class GroundTruth:
    index: int
    id: str
    path: Path


def list_images(data: Path, limit: int | None) -> list[GroundTruth]:
    """Aligned face images under ``data`` (recursive), sorted by relative path, the first ``limit``."""
    if not data.is_dir():
        raise InputError(f"--data {data}: no such directory")
    paths = sorted((p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(data).as_posix())
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise InputError(f"--data {data}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    ids = [p.relative_to(data).with_suffix("").as_posix().replace("/", "__") for p in paths]
    return [GroundTruth(i, name, p) for i, (name, p) in enumerate(zip(ids, paths))]


def tiny_images(folder: Path, n: int, resolution: int, seed: int) -> Path:
    """Write ``n`` smooth synthetic images (coloured blobs on a gradient) as the smoke run's ground truth."""
    folder.mkdir(parents=True, exist_ok=True)
    g = settings.generator(seed_for(seed, "tiny-images"))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, resolution), torch.linspace(-1, 1, resolution), indexing="ij")
    for i in range(n):
        base = torch.rand(3, 1, 1, generator=g) * 2 - 1
        tilt = torch.rand(3, 1, 1, generator=g) - 0.5
        img = base * 0.5 + tilt * xx
        for _ in range(4):
            cy, cx = (torch.rand(2, generator=g) * 1.6 - 0.8).tolist()
            r = 0.15 + 0.35 * torch.rand(1, generator=g).item()
            colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img * (1 - blob) + colour * blob
        path = folder / f"{i:05d}.png"
        if not path.exists():
            save_image(img.clamp(-1, 1).unsqueeze(0), path)
    return folder
