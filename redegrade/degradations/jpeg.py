"""A (deartifacting task): real JPEG through PIL, and a differentiable JPEG with the same tables.

The differentiable codec is :func:`redegrade.pixels.jpeg.quantise_ycc` (libjpeg's pipeline as PIL runs
it for RGB at 4:2:0) with *the very tables PIL writes for that quality*, clamped as a decoder clamps.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from redegrade.degradations.base import Degradation
from redegrade.errors import InputError
from redegrade.pixels.jpeg import SUBSAMPLING_420, pil_tables, quantise_ycc, quantization_tables

_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


# -- real JPEG ----------------------------------------------------------------------------------
def encode(u: torch.Tensor, quality: int) -> list[bytes]:
    """JPEG-encode each image of ``u`` (``[B,3,H,W]`` in ``[0,1]``) with PIL at ``quality``, 4:2:0.

    Pixels are rounded to 8 bits first; RSG truncates here, which only differs off the 8-bit grid
    (FFHQ-X inputs, the ground truth and every step's truncated output, are on it).
    """
    arr = (u.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a), "RGB").save(buf, format="JPEG", quality=int(quality),
                                                           subsampling=SUBSAMPLING_420)
        out.append(buf.getvalue())
    return out


def decode(data: list[bytes], device: torch.device | str = "cpu") -> torch.Tensor:
    """Decode JPEG bytes (one per image) to ``[B,3,H,W]`` in ``[0,1]``."""
    ims = []
    for d in data:
        with Image.open(io.BytesIO(d)) as im:
            ims.append(torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0))
    return torch.stack(ims).permute(0, 3, 1, 2).contiguous().to(device)


def _open(path_or_bytes: str | os.PathLike | bytes) -> Image.Image:
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes)
    try:
        im = Image.open(src)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JPEG {'bytes' if isinstance(src, io.BytesIO) else src}: {exc}") from exc
    if im.format != "JPEG":
        raise InputError(f"not a JPEG file (format {im.format})")
    return im


def jpeg_quality_of(path_or_bytes: str | os.PathLike | bytes) -> int | None:
    """The PIL/libjpeg quality whose tables a JPEG file carries, or ``None`` when none matches exactly."""
    with _open(path_or_bytes) as im:
        q = im.quantization
        found = (tuple(q.get(0, ())), tuple(q.get(1, ())))
    for quality in range(1, 101):
        if pil_tables(quality) == found:
            return quality
    return None


def jpeg_subsampling_of(path_or_bytes: str | os.PathLike | bytes) -> str:
    """Chroma subsampling of a JPEG file: ``"4:4:4"``, ``"4:2:2"``, ``"4:2:0"`` or ``"other"``."""
    with _open(path_or_bytes) as im:
        return _SUBSAMPLING_NAMES.get(JpegImagePlugin.get_sampling(im), "other")


def diff_jpeg(u: torch.Tensor, luma: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG (4:2:0) of ``u`` (``[B,3,H,W]`` in ``[0,1]``) with the given ``[8,8]`` tables.

    Returns ``[B,3,H,W]`` in ``[0,1]`` (clamped, as a decoder clamps to 8 bits; RSG's version does
    not clamp).
    """
    return quantise_ycc(u * 255.0, luma, chroma).clamp(0, 255) / 255.0


class JPEG(Degradation):
    """Ground truth: PIL JPEG at ``quality`` with 4:2:0 chroma, decoded. Approx: :func:`diff_jpeg`."""

    name = "A"

    def __init__(self, quality: int, *, resolution: int, seed: int = 0):
        self.quality = int(quality)
        self.luma, self.chroma = quantization_tables(self.quality)
        super().__init__(input_size=resolution, output_size=resolution,
                         params={"quality": self.quality, "subsampling": "4:2:0"}, seed=seed)

    def encode(self, x: torch.Tensor) -> list[bytes]:
        """The JPEG files :meth:`apply` decodes, one per image of ``x`` (``[B,3,H,W]`` in ``[-1,1]``)."""
        self._check_input(x)
        return encode((x + 1) * 0.5, self.quality)

    def _apply(self, u: torch.Tensor) -> torch.Tensor:
        return decode(encode(u, self.quality), u.device)

    def _approx(self, u: torch.Tensor) -> torch.Tensor:
        return diff_jpeg(u, self.luma, self.chroma)
