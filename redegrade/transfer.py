"""Degradation transfer: put the degradation of one photo onto another (the seed paper's §4.1).

    degraded y ──HDEN──► e_g ─┐
               └─IDEN──► e_l ─┴─(e_l resized to x's grid)─► f̂(x, e_g, e_l, n) ──► out
    clean x ──────────────────────────────────────────────────┘         n ~ N(0, I), seeded

Mixed transfer takes e_g (homogeneous degradation: noise, blur, JPEG, ...) from one image and e_l
(inhomogeneous, spatial degradation) from another.

Sizes. The model needs H and W divisible by 8, so every input is cropped at the right and bottom edges
(never the top-left, which keeps JPEG's 8×8 grid in place) and the crop is logged. Degraded sources are
encoded at their own resolution, because resampling them would change the very degradation being
measured (downscaling removes noise and blocking). e_g is a global vector and fits any size; e_l is a
spatial map at half resolution, so it is resized (bilinear) to the clean image's grid. When the local
source's aspect ratio differs from the clean image's by more than :data:`MAX_ASPECT_MISMATCH`, stretching
the map would misplace local degradations, so transfer refuses unless ``uniform_local`` asks to replace
e_l by its spatial mean (right for degradations that are uniform anyway).

CLI::

    python -m redegrade.transfer --degraded y.png --clean x.png -o out.png [--seed 0] [--device auto]
    python -m redegrade.transfer --global-from a.png --local-from b.png --clean x.png -o out.png
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from PIL import Image

from redegrade.cli import setup_logging, user_errors
from redegrade.errors import InputError
from redegrade.image import load_image, resize, save_image
from redegrade.model import DegradationCode
from redegrade.redegrader import Redegrader
from redegrade.settings import generator, resolve_device

log = logging.getLogger(__name__)

MIN_SIZE = 16
"""Smallest accepted image side (pixels)."""
MULTIPLE = 8
"""H and W must be multiples of this (the synthesis U-Net goes down to H/8)."""
MAX_ASPECT_MISMATCH = 1.25
"""Largest accepted ratio between the local source's and the clean image's aspect ratios."""


def crop_to_multiple(x: torch.Tensor, multiple: int = MULTIPLE, *, name: str = "image") -> torch.Tensor:
    """Crop the right/bottom edge so H and W are multiples of ``multiple`` (keeps the top-left origin)."""
    h, w = x.shape[-2:]
    h2, w2 = h // multiple * multiple, w // multiple * multiple
    if h2 < MIN_SIZE or w2 < MIN_SIZE:
        raise InputError(f"{name} is {w}×{h}; at least {MIN_SIZE}×{MIN_SIZE} pixels are needed")
    if (h2, w2) != (h, w):
        log.info("%s is %d×%d; cropping the right/bottom edge to %d×%d (multiples of %d)",
                 name, w, h, w2, h2, multiple)
    return x[..., :h2, :w2]


def fit_longer_side(x: torch.Tensor, size: int, *, name: str = "image") -> torch.Tensor:
    """Downscale (area) so the longer side is at most ``size``; smaller images are left alone."""
    h, w = x.shape[-2:]
    if max(h, w) <= size:
        return x
    scale = size / max(h, w)
    h2, w2 = max(1, round(h * scale)), max(1, round(w * scale))
    log.info("%s is %d×%d; downscaling to %d×%d (--size %d)", name, w, h, w2, h2, size)
    return resize(x, (h2, w2))


def load_input(path: str | Path, *, name: str, size: int | None = None) -> torch.Tensor:
    """Read an image for transfer: RGB ``[1,3,H,W]`` in ``[-1,1]``, optionally fitted, cropped to /8."""
    x = load_image(path, min_size=MIN_SIZE)
    if size is not None:
        x = fit_longer_side(x, size, name=name)
    return crop_to_multiple(x, name=name)


def _aspect_mismatch(a: tuple[int, int], b: tuple[int, int]) -> float:
    ra, rb = a[1] / a[0], b[1] / b[0]
    return max(ra, rb) / min(ra, rb)


def check_local_shape(local_hw: tuple[int, int], clean_hw: tuple[int, int], *, name: str = "local source") -> None:
    """Raise :class:`InputError` when stretching e_l from ``local_hw`` to ``clean_hw`` would distort it."""
    if _aspect_mismatch(local_hw, clean_hw) > MAX_ASPECT_MISMATCH:
        raise InputError(
            f"{name} is {local_hw[1]}×{local_hw[0]} but the clean image is {clean_hw[1]}×{clean_hw[0]}: aspect "
            f"ratios differ by more than {MAX_ASPECT_MISMATCH:g}×, so its local degradation map cannot be "
            "placed; crop one of them to a similar shape, or pass --uniform-local")


def resize_local(e_l: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize a local map ``[B,c_l,h,w]`` (values in [0,1]) to ``hw`` (bilinear; exact when sizes match)."""
    if tuple(e_l.shape[-2:]) == tuple(hw):
        return e_l
    return F.interpolate(e_l, size=hw, mode="bilinear", align_corners=False).clamp(0, 1)


@torch.no_grad()
def transfer_code(redegrader: Redegrader, clean: torch.Tensor, global_from: torch.Tensor,
                  local_from: torch.Tensor | None = None, *, uniform_local: bool = False) -> DegradationCode:
    """The code to synthesise on ``clean``: e_g from ``global_from``, e_l from ``local_from`` on clean's grid.

    ``local_from=None`` takes e_l from ``global_from`` too (plain transfer). ``uniform_local`` replaces e_l
    by its spatial mean, which works for any aspect ratio.
    """
    local_from = global_from if local_from is None else local_from
    code_g = redegrader.encode(global_from)
    code_l = code_g if local_from is global_from else redegrader.encode(local_from)
    e_l = code_l.e_l
    grid = (clean.shape[-2] // 2, clean.shape[-1] // 2)
    if uniform_local:
        e_l = e_l.mean(dim=(-2, -1), keepdim=True).expand(-1, -1, *grid)
    else:
        check_local_shape(tuple(local_from.shape[-2:]), tuple(clean.shape[-2:]))
        e_l = resize_local(e_l, grid)
    return DegradationCode(e_g=code_g.e_g, e_l=e_l.contiguous())


@torch.no_grad()
def transfer(redegrader: Redegrader, clean: torch.Tensor, global_from: torch.Tensor,
             local_from: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
             uniform_local: bool = False) -> torch.Tensor:
    """Degrade ``clean`` the way ``global_from`` (and ``local_from``) are degraded; returns ``[1,3,H,W]``.

    The noise maps are drawn from ``generator`` on the clean image's grid, so one seed gives one output.
    The code is quantised with the Redegrader's quantiser, as in :meth:`Redegrader.forward`.
    """
    code = transfer_code(redegrader, clean, global_from, local_from, uniform_local=uniform_local)
    noise = redegrader.sample_noise(clean, generator)
    # the synthesis was trained on entropy-coded codes (e_g through the head/tail MLPs, quantised), so
    # decode them exactly as the Redegrader's forward does; "ste" is plain rounding without gradients
    mode = "round" if redegrader.quantizer == "ste" else redegrader.quantizer
    code_hat, _ = redegrader.model.quantize(code, mode)
    return redegrader.synthesize(clean, code_hat, noise).clamp(-1, 1)


def _check_output(path: Path) -> None:
    if path.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"cannot write {path}: unknown image extension {path.suffix!r} (use .png)")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--degraded", "degraded", type=click.Path(path_type=Path),
              help="Image whose degradation is transferred (both e_g and e_l).")
@click.option("--clean", "clean", type=click.Path(path_type=Path), required=True,
              help="Clean image that receives the degradation.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output image (e.g. out.png).")
@click.option("--global-from", "global_from", type=click.Path(path_type=Path),
              help="Take the homogeneous code e_g from this image instead (mixed transfer).")
@click.option("--local-from", "local_from", type=click.Path(path_type=Path),
              help="Take the local map e_l from this image instead (mixed transfer).")
@click.option("--uniform-local", is_flag=True,
              help="Use the spatial mean of e_l (any aspect ratio; right for uniform degradations).")
@click.option("--redegrader", "redegrader_name", default=None,
              help="Redegrader name or folder (config.json + model.safetensors); default: the shipped model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthesis noise maps.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--size", type=click.IntRange(min=MIN_SIZE), default=None,
              help="Downscale the clean image so its longer side is at most SIZE pixels.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@user_errors
def main(degraded: Path | None, clean: Path, output: Path, global_from: Path | None, local_from: Path | None,
         uniform_local: bool, redegrader_name: str | None, seed: int, device: str, size: int | None,
         verbose: bool) -> None:
    """Put the degradation of a degraded photo onto a clean one (the paper's degradation transfer).

    \b
      python -m redegrade.transfer --degraded y.png --clean x.png -o out.png
      python -m redegrade.transfer --global-from a.png --local-from b.png --clean x.png -o out.png

    Inputs are cropped at the right/bottom edge to multiples of 8 (logged). Degraded images are encoded
    at their own size; the local map e_l is resized to the clean image's grid, which is refused when
    the aspect ratios differ by more than 1.25× unless --uniform-local is given. Errors are one line on
    stderr (exit code 2) and nothing is written.
    """
    setup_logging(verbose)
    g_path, l_path = global_from or degraded, local_from or degraded
    if g_path is None or l_path is None:
        raise InputError("say where the degradation comes from: --degraded Y, or both --global-from and --local-from"
                         if g_path is None and l_path is None else
                         f"--{'global' if g_path is None else 'local'}-from needs a partner: pass --degraded Y "
                         "or both --global-from and --local-from")
    _check_output(output)
    dev = resolve_device(device)
    start = time.perf_counter()
    # read and check every input before saying anything, so a bad input costs one line and no work
    x = load_image(clean, min_size=MIN_SIZE)
    y_g = load_image(g_path, min_size=MIN_SIZE)
    y_l = y_g if l_path == g_path else load_image(l_path, min_size=MIN_SIZE)
    if size is not None:
        x = fit_longer_side(x, size, name=f"clean image {clean}")
    if not uniform_local:
        check_local_shape(tuple(y_l.shape[-2:]), tuple(x.shape[-2:]), name=f"local source {l_path}")
    model = Redegrader.from_pretrained(redegrader_name).to(dev)
    model.freeze()
    x = crop_to_multiple(x, name=f"clean image {clean}").to(dev)
    y_g = crop_to_multiple(y_g, name=f"degraded image {g_path}").to(dev)
    y_l = y_g if l_path == g_path else crop_to_multiple(y_l, name=f"degraded image {l_path}").to(dev)
    out = transfer(model, x, y_g, y_l, generator=generator(seed, dev), uniform_local=uniform_local)
    save_image(out, output)
    log.info("wrote %s (%d×%d) in %.1f s", output, out.shape[-1], out.shape[-2], time.perf_counter() - start)


if __name__ == "__main__":
    main()
