"""Image I/O and validation. Inside redegrade images are float32 tensors ``[B,3,H,W]`` in ``[-1, 1]``.

Every image a CLI or the benchmark reads goes through :func:`read_image` (or :func:`load_image`, the
same as a tensor): the file is checked, EXIF orientation is applied, each Pillow mode is read at its own
scale (8-bit, 16-bit, 32-bit integer and floating-point greyscale, palette, CMYK, ...), transparency is
composited onto white and only the first frame of an animation is kept, with a one-line notice for
whatever changed the pixels. :func:`probe_image` reads only the header (size, readability), cheaply.

torch is imported inside the functions that need it, so a CLI can check its inputs and outputs before
paying for ``import torch``.
"""
from __future__ import annotations

import io
import logging
import os
import re
import stat
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from redegrade.errors import InputError, ShapeError
from redegrade.files import atomic_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BACKGROUND = 255
"""Transparent pixels are composited onto this grey level (white), as most viewers show them."""
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = ExifTags.Base.Orientation
_TURNS = {2: "mirrored", 3: "rotated 180°", 4: "flipped", 5: "transposed", 6: "rotated 90°", 7: "transversed",
          8: "rotated 270°"}


# ------------------------------------------------------------------------------------------ tensors
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


def check_finite(x: torch.Tensor, what: str, remedy: str = "") -> None:
    """Raise :class:`InputError` when ``x`` holds NaN or inf (a diverged computation): writing it would
    give a silently wrong image (NaN becomes black)."""
    import torch

    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{what} has non-finite values (NaN or inf): the computation diverged and nothing was "
                         f"written{'; ' + remedy if remedy else ''}")


# ------------------------------------------------------------------------------------------ reading
def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"cannot read image {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {(exc.strerror or str(exc)).lower()}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"cannot read image {path}: it is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"cannot read image {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read image {path}: permission denied")


def _open(path: Path) -> Image.Image:
    """``Image.open`` with every failure as one :class:`InputError` line (nothing decoded yet)."""
    _check_file(path)
    try:
        with warnings.catch_warnings():
            # large images are handled by the callers (memory estimates); Pillow's bomb *error* still applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "its size"
        raise InputError(f"cannot read image {path}: {size} is above the "
                         f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f}-megapixel safety limit for decoding; "
                         "downscale it first") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not an image format Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def _orientation(im: Image.Image, *, warn: bool = False) -> int:
    try:
        if im.format == "PNG" and im.im is None:  # PNG's getexif() decodes the whole image to look past IDAT
            exif = Image.Exif()
            if im.info.get("exif"):
                exif.load(im.info["exif"])
            value = exif.get(_ORIENTATION, 1)
        else:
            value = im.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not stop reading the pixels
        if warn:
            log.warning("%s: unreadable EXIF data; using the pixels as stored", getattr(im, "filename", "image"))
        return 1
    return value if value in _TURNS else 1


def _upright_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size  # before decoding, so EXIF may be unreadable yet (PNG keeps it after the pixels)
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _check_size(size: tuple[int, int], min_size: int, name: object) -> None:
    if min(size) < min_size:
        raise InputError(f"image {name} is {size[0]}×{size[1]}; at least {min_size}×{min_size} is needed")


def probe_image(path: str | os.PathLike, *, min_size: int = 1, verify: bool = False) -> tuple[int, int]:
    """Upright ``(width, height)`` of an image file from its header (nothing decoded); raises
    :class:`InputError` for a missing, unreadable or too small image. ``verify`` also runs Pillow's
    structural check (chunk checksums and completeness for PNG, without decoding the pixels)."""
    path = Path(path)
    with _open(path) as im:
        size = _upright_size(im)
        _check_size(size, min_size, path)
        if verify:
            try:
                im.verify()
            except Exception as exc:  # noqa: BLE001 - Pillow reports damage in many types
                raise InputError(f"cannot read image {path}: {exc or type(exc).__name__}") from None
    return size


def read_image(path: str | os.PathLike, *, min_size: int = 1) -> np.ndarray:
    """Decode an image file as float32 ``H×W×3`` in ``[-1, 1]`` (see the module docstring). No torch."""
    path = Path(path)
    with _open(path) as im:
        _check_size(im.size, min_size, path)  # a turn swaps width and height, not the shorter side
        try:
            frames = getattr(im, "n_frames", 1)
            im.load()
        except Image.DecompressionBombError as exc:
            raise InputError(f"cannot read image {path}: {exc}") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise InputError(f"cannot read image {path}: {exc}") from None
        if frames > 1:
            log.warning("%s has %d frames (an animation or a multi-page file); using the first only", path, frames)
        turn = _orientation(im, warn=True)
        if turn != 1:
            im = ImageOps.exif_transpose(im)
            log.info("%s: applied its EXIF orientation (%s)", path, _TURNS[turn])
        return rgb_array(im, name=path)


def rgb_array(im: Image.Image, *, name: object = "image") -> np.ndarray:
    """Any Pillow image → float32 ``H×W×3`` in ``[-1, 1]``, each mode at its own scale."""
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        return _grey(np.asarray(im).astype(np.float32) / 32767.5 - 1.0)
    if mode == "I":
        a = np.asarray(im)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise InputError(f"image {name} is 32-bit integer greyscale with values {lo}…{hi}; only 0…65535 "
                             "(16 bits) has a known scale: convert it to an 8- or 16-bit image")
        log.info("%s: reading 32-bit integer greyscale as 16-bit (0…65535)", name)
        return _grey(a.astype(np.float32) / 32767.5 - 1.0)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise InputError(f"image {name} is floating-point greyscale outside 0…1, so its scale is unknown: "
                             "convert it to an 8- or 16-bit image")
        log.info("%s: reading floating-point greyscale as 0…1", name)
        return _grey(a * 2.0 - 1.0)
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return _composite(im, name)
    if mode == "CMYK":
        im = _cmyk_to_rgb(im, name)
    try:
        rgb = im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"image {name} has pixel mode {mode}, which cannot be read as RGB ({exc})") from None
    return np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0


def _grey(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=-1))


def _composite(im: Image.Image, name: object) -> np.ndarray:
    try:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
    except (ValueError, OSError) as exc:
        raise InputError(f"image {name} has pixel mode {im.mode}, which cannot be read as RGB ({exc})") from None
    alpha = rgba[..., 3:] / 255.0
    if (alpha < 1).any():
        log.warning("%s has transparency (%.0f%% of its pixels are not opaque); composited onto white, "
                    "the result has no alpha", name, 100 * float((alpha < 1).mean()))
    rgb = rgba[..., :3] * alpha + BACKGROUND * (1 - alpha)
    return rgb / 127.5 - 1.0


def _cmyk_to_rgb(im: Image.Image, name: object) -> Image.Image:
    profile = im.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            log.info("%s: converted CMYK to sRGB with its embedded colour profile", name)
            return out
        except Exception:  # noqa: BLE001 - a broken profile falls back to the plain conversion below
            pass
    log.warning("%s is CMYK without a usable colour profile; converted to RGB without colour management", name)
    return im.convert("RGB")


def load_image(path: str | os.PathLike, *, min_size: int = 1) -> torch.Tensor:
    """Read an image file as ``[1,3,H,W]`` float32 in ``[-1,1]`` (:func:`read_image` as a tensor)."""
    return array_to_tensor(read_image(path, min_size=min_size))


def array_to_tensor(a: np.ndarray) -> torch.Tensor:
    """``H×W×3`` array → ``[1,3,H,W]`` float32 tensor (values unchanged)."""
    import torch

    return torch.from_numpy(np.asarray(a, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


def shrink_short_side(im: Image.Image, max_side: int) -> Image.Image:
    """Downscale (Lanczos) so the shorter side is at most ``max_side``; smaller images are returned as is."""
    w, h = im.size
    if min(w, h) <= max_side:
        return im
    s = max_side / min(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL image (any mode, see :func:`rgb_array`) → ``[1,3,H,W]`` float32 in ``[-1,1]``."""
    return array_to_tensor(rgb_array(im))


# ------------------------------------------------------------------------------------------ writing
def output_format(path: str | os.PathLike) -> str:
    """Pillow's format name for ``path``'s suffix; :class:`InputError` unless it can store an RGB image."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write {path}: unknown image extension {path.suffix!r} (use .png)")
    try:
        Image.new("RGB", (16, 16)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001 - Pillow reports "cannot write" in many types (KeyError, OSError, ...)
        raise InputError(f"cannot write {path}: Pillow cannot write RGB images as {path.suffix} (use .png)") from None
    return fmt


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """``[1,3,H,W]`` or ``[3,H,W]`` in ``[-1,1]`` → 8-bit PIL RGB image (rounded, not truncated)."""
    import torch

    if x.ndim == 4:
        check_shape(x, (1, 3, None, None), "image")
        x = x[0]
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB")


def save_image(x: torch.Tensor, path: str | os.PathLike, **save_kwargs) -> Path:
    """Write an image atomically (temp file + rename); the format follows the suffix."""
    path = Path(path)
    im = tensor_to_pil(x)
    fmt = output_format(path)
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **save_kwargs)
    return path


# ------------------------------------------------------------------------------------------ geometry
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
    import torch.nn.functional as F

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
