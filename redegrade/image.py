"""Image I/O and validation. Inside redegrade images are float32 tensors ``[B,3,H,W]`` in ``[-1, 1]``."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from redegrade.errors import InputError, ShapeError
from redegrade.files import atomic_path

log = logging.getLogger(__name__)


def check_shape(t: torch.Tensor, shape: tuple[int | None, ...], name: str = "tensor") -> None:
    """Raise :class:`ShapeError` unless ``t`` has ``shape`` (``None`` matches any size)."""
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "×".join("*" if s is None else str(s) for s in shape)
        raise ShapeError(f"{name} must have shape {want}, got {'×'.join(map(str, t.shape))}")


def check_image(x: torch.Tensor, name: str = "image", multiple_of: int = 1) -> None:
    """Validate an image tensor: ``[B,3,H,W]``, floating point, H and W multiples of ``multiple_of``."""
    check_shape(x, (None, 3, None, None), name)
    if not x.is_floating_point():
        raise ShapeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    h, w = x.shape[-2:]
    if h % multiple_of or w % multiple_of:
        raise ShapeError(f"{name} height and width must be multiples of {multiple_of}, got {h}×{w}")


def load_image(path: str | os.PathLike, *, min_size: int = 1) -> torch.Tensor:
    """Read an image file as ``[1,3,H,W]`` float32 in ``[-1,1]`` (alpha dropped, greyscale → RGB)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read image {path}: no such file")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    if min(rgb.size) < min_size:
        raise InputError(f"image {path} is {rgb.size[0]}×{rgb.size[1]}; at least {min_size}×{min_size} is needed")
    return pil_to_tensor(rgb)


def shrink_short_side(im: Image.Image, max_side: int) -> Image.Image:
    """Downscale (Lanczos) so the shorter side is at most ``max_side``; smaller images are returned as is."""
    w, h = im.size
    if min(w, h) <= max_side:
        return im
    s = max_side / min(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB image → ``[1,3,H,W]`` float32 in ``[-1,1]``."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """``[1,3,H,W]`` or ``[3,H,W]`` in ``[-1,1]`` → 8-bit PIL RGB image (rounded, not truncated)."""
    if x.ndim == 4:
        check_shape(x, (1, 3, None, None), "image")
        x = x[0]
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB")


def save_image(x: torch.Tensor, path: str | os.PathLike, **save_kwargs) -> Path:
    """Write an image atomically (temp file + rename); the format follows the suffix."""
    path = Path(path)
    im = tensor_to_pil(x)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write {path}: unknown image extension {path.suffix!r}")
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **save_kwargs)
    return path


#: Slack, in 8-bit levels, that keeps truncation idempotent: a level k/255 stored in [-1,1] can come
#: back a few float32 ulps below k, which a bare floor would take down to k − 1.
_TRUNCATE_SLACK = 1e-3


def png_roundtrip(x: torch.Tensor, *, truncate: bool = False) -> torch.Tensor:
    """Quantise ``x`` (``[-1,1]``) to 8 bits as an 8-bit PNG round trip would, keeping shape and device.

    ``truncate=False`` rounds, as :func:`save_image` writes. ``truncate=True`` floors like
    torchvision's ``to_pil_image`` (``mul(255).byte()``), which RSG uses for every round trip of its
    FFHQ-X ground truth: u in [0,1] → floor(u·255)/255, so 1.0 stays 255 and 0.5/255 becomes 0. A
    level within 10⁻³ below an integer counts as that integer, so 8-bit values pass unchanged.
    """
    v = (x.clamp(-1, 1) + 1) * 127.5
    v = (v + _TRUNCATE_SLACK).floor() if truncate else v.round()
    return v / 127.5 - 1


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize an image batch: area when shrinking (no aliasing), bicubic when enlarging."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def center_square(x: torch.Tensor) -> torch.Tensor:
    """Centre-crop to a square (the shorter side)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


def fit_to_resolution(x: torch.Tensor, resolution: int, *, name: str = "input") -> torch.Tensor:
    """Bring an image to ``resolution²`` (centre square crop, then resize), logging what changed."""
    h, w = x.shape[-2:]
    if (h, w) == (resolution, resolution):
        return x
    if h != w:
        log.warning("%s is %d×%d; centre-cropping to a square", name, w, h)
        x = center_square(x)
    log.warning("%s is %d×%d; resizing to the model's %d×%d", name, x.shape[-1], x.shape[-2], resolution, resolution)
    return resize(x, resolution)
