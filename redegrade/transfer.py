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

Before any work the CLI checks, without torch, every input's header and the output (writable, none of
the inputs); then that the transfer's working memory (:func:`working_memory`) fits the device, so too
large an image is refused with the estimate and the remedy (``--size`` for the clean image, a crop for a
degraded one) before it is even decoded; then that every input decodes. Long transfers show a progress
bar.

CLI::

    python -m redegrade.transfer --degraded y.png --clean x.png -o out.png [--seed 0] [--device auto]
    python -m redegrade.transfer --global-from a.png --local-from b.png --clean x.png -o out.png
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from redegrade.cli import SEED, OneLineCommand, setup_logging, user_errors
from redegrade.errors import InputError
from redegrade.files import check_output
from redegrade.image import load_image, output_format, probe_image, read_image
from redegrade.pixels import MULTIPLE

if TYPE_CHECKING:
    import torch

    from redegrade.model import DegradationCode
    from redegrade.redegrader import Redegrader

log = logging.getLogger(__name__)

MIN_SIZE = 16
"""Smallest accepted image side (pixels)."""
MAX_ASPECT_MISMATCH = 1.25
"""Largest accepted ratio between the local source's and the clean image's aspect ratios."""


BYTES_PER_PIXEL = 900
"""Peak working memory of a transfer per pixel of the largest image the shipped model (widths 16/32/64)
encodes or synthesises: measured ~830 bytes at 1024² on CPU, for encoding and synthesis alike, plus a margin.
Wider models scale it by their first width (:func:`bytes_per_pixel`)."""
BASE_MEMORY = 256 * 2 ** 20
"""Memory a transfer needs whatever the image size (torch, the model, buffers)."""
HEADROOM = 0.8
"""The remedies suggested when a transfer does not fit aim at this fraction of the free memory."""


def crop_to_multiple(x: torch.Tensor, multiple: int = MULTIPLE, *, name: str = "image") -> torch.Tensor:
    """Crop the right/bottom edge so H and W are multiples of ``multiple`` (keeps the top-left origin)."""
    h, w = x.shape[-2:]
    h2, w2 = _cropped((h, w), multiple, name)
    if (h2, w2) != (h, w):
        log.info("%s is %d×%d; cropping the right/bottom edge to %d×%d (multiples of %d)",
                 name, w, h, w2, h2, multiple)
    return x[..., :h2, :w2]


def _cropped(hw: tuple[int, int], multiple: int = MULTIPLE, name: str = "image") -> tuple[int, int]:
    h, w = hw
    h2, w2 = h // multiple * multiple, w // multiple * multiple
    if h2 < MIN_SIZE or w2 < MIN_SIZE:
        raise InputError(f"{name} is {w}×{h}; at least {MIN_SIZE}×{MIN_SIZE} pixels are needed")
    return h2, w2


def _fitted(hw: tuple[int, int], size: int | None) -> tuple[int, int]:
    h, w = hw
    if size is None or max(h, w) <= size:
        return h, w
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def fit_longer_side(x: torch.Tensor, size: int, *, name: str = "image") -> torch.Tensor:
    """Downscale (area) so the longer side is at most ``size``; smaller images are left alone."""
    from redegrade.image import resize

    h, w = x.shape[-2:]
    h2, w2 = _fitted((h, w), size)
    if (h2, w2) == (h, w):
        return x
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
    import torch.nn.functional as F

    if tuple(e_l.shape[-2:]) == tuple(hw):
        return e_l
    return F.interpolate(e_l, size=hw, mode="bilinear", align_corners=False).clamp(0, 1)


def transfer_code(redegrader: Redegrader, clean: torch.Tensor, global_from: torch.Tensor,
                  local_from: torch.Tensor | None = None, *, uniform_local: bool = False) -> DegradationCode:
    """The code to synthesise on ``clean``: e_g from ``global_from``, e_l from ``local_from`` on clean's grid.

    ``local_from=None`` takes e_l from ``global_from`` too (plain transfer). ``uniform_local`` replaces e_l
    by its spatial mean, which works for any aspect ratio.
    """
    import torch

    from redegrade.model import DegradationCode
    from redegrade.model.extras import lost_pixels

    with torch.no_grad():
        local_from = global_from if local_from is None else local_from
        code_g = redegrader.encode(global_from)
        code_l = code_g if local_from is global_from else redegrader.encode(local_from)
        e_l, keep = code_l.e_l, code_l.keep
        grid = (clean.shape[-2] // 2, clean.shape[-1] // 2)
        if uniform_local:
            # lost pixels have places, which a uniform map cannot carry
            e_l, keep = e_l.mean(dim=(-2, -1), keepdim=True).expand(-1, -1, *grid), None
        else:
            check_local_shape(tuple(local_from.shape[-2:]), tuple(clean.shape[-2:]))
            e_l, keep = resize_local(e_l, grid), lost_pixels.resize(keep, tuple(clean.shape[-2:]))
        # the resize factor is a property of the whole observation, like e_g
        return DegradationCode(e_g=code_g.e_g, e_l=e_l.contiguous(), keep=keep, factor=code_g.factor)


def transfer(redegrader: Redegrader, clean: torch.Tensor, global_from: torch.Tensor,
             local_from: torch.Tensor | None = None, *, generator: torch.Generator | None = None,
             uniform_local: bool = False) -> torch.Tensor:
    """Degrade ``clean`` the way ``global_from`` (and ``local_from``) are degraded; returns ``[1,3,H,W]``.

    The noise maps are drawn from ``generator`` on the clean image's grid, so one seed gives one output.
    The code is quantised with the Redegrader's quantiser, as in :meth:`Redegrader.forward`.
    """
    import torch

    with torch.no_grad():
        code = transfer_code(redegrader, clean, global_from, local_from, uniform_local=uniform_local)
        noise = redegrader.sample_noise(clean, generator)
        # the synthesis was trained on entropy-coded codes (e_g through the head/tail MLPs, quantised), so
        # decode them exactly as the Redegrader's forward does; "ste" is plain rounding without gradients
        mode = "round" if redegrader.quantizer == "ste" else redegrader.quantizer
        code_hat, _ = redegrader.model.quantize(code, mode)
        return redegrader.synthesize(clean, code_hat, noise).clamp(-1, 1)


# ------------------------------------------------------------------------------------------ memory
def bytes_per_pixel(redegrader: str | os.PathLike | None = None) -> int:
    """:data:`BYTES_PER_PIXEL` scaled by the model's width, read from its ``config.json`` when there is
    one (a training checkpoint ``.pt`` or a registry name counts as the shipped model's width)."""
    from redegrade.settings import bundled_redegrader  # a shipped name, without importing the model

    folder = bundled_redegrader(redegrader or "wqi") or Path(redegrader).expanduser()
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        width = max(int(cfg.get("widths", [16])[0]), int(cfg.get("enc_width", 16)))
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        width = 16
    return int(BYTES_PER_PIXEL * max(1.0, width / 16))


def working_memory(pixels: int, per_pixel: int = BYTES_PER_PIXEL) -> int:
    """Estimated peak bytes of a transfer whose largest image has ``pixels`` pixels."""
    return BASE_MEMORY + per_pixel * pixels


def free_memory(device: torch.device | None = None) -> int | None:
    """Bytes free for a transfer on ``device``: GPU memory for CUDA, else available RAM (``None`` = unknown)."""
    if device is not None and device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if device is not None and device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_memory(sizes: dict[str, tuple[int, int]], clean_key: str, *, per_pixel: int, free: int | None) -> None:
    """Refuse (with the estimate and the remedy) when the largest image's transfer would not fit ``free``.

    ``sizes`` maps a description of each image to the ``(height, width)`` it is processed at;
    ``clean_key`` names the clean image, which ``--size`` can shrink (degraded ones must be cropped).
    """
    if free is None:
        return
    name, (h, w) = max(sizes.items(), key=lambda kv: kv[1][0] * kv[1][1])
    need = working_memory(h * w, per_pixel)
    if need <= free:
        return
    gib = 2 ** 30
    fits = max(0, (int(free * HEADROOM) - BASE_MEMORY) // per_pixel)  # pixels that fit, leaving some room
    if name == clean_key:
        longer = int(math.sqrt(fits * max(h, w) / min(h, w))) // MULTIPLE * MULTIPLE
        remedy = (f"pass --size {longer} (or smaller) to downscale it" if longer >= MIN_SIZE else
                  "this device cannot hold even a small transfer")
    else:
        remedy = (f"crop it to about {fits / 1e6:.1f} megapixels or fewer (degraded images are encoded at their "
                  "own size, since resampling would change their degradation)")
    raise InputError(f"{name} ({w}×{h}) needs about {need / gib:.1f} GiB of working memory to transfer, but about "
                     f"{free / gib:.1f} GiB is free; {remedy}")


# ------------------------------------------------------------------------------------------ progress
@contextlib.contextmanager
def layer_progress(model: torch.nn.Module, total: int, *, enabled: bool = True) -> Iterator[None]:
    """A progress bar advanced by every convolution ``model`` runs (``total`` of them); shown only when the
    work lasts more than two seconds."""
    from torch import nn
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="transfer", unit="layer", disable=not enabled, delay=2, file=sys.stderr,
               leave=False)

    def tick(*_) -> None:  # a forward hook must return None, or it replaces the layer's output
        bar.update(1)

    hooks = [m.register_forward_hook(tick) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))] if enabled else []
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        bar.close()


def count_layers(model: Redegrader, *, two_sources: bool) -> int:
    """How many convolutions one transfer runs (counted on a tiny dry run; the count does not depend on size)."""
    import torch
    from torch import nn

    calls = [0]

    def tick(*_):
        calls[0] += 1

    hooks = [m.register_forward_hook(tick) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        device = next(model.parameters()).device
        x = torch.zeros(1, 3, 2 * MIN_SIZE, 2 * MIN_SIZE, device=device)
        transfer(model, x, x.clone(), x.clone() if two_sources else None, generator=None, uniform_local=True)
    finally:
        for hook in hooks:
            hook.remove()
    return calls[0]


# ------------------------------------------------------------------------------------------ the command
@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the synthesis noise maps.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda[:N] or mps; auto picks CUDA when present, others must be available here.")
@click.option("--size", type=click.IntRange(min=MIN_SIZE), default=None,
              help="Downscale the clean image so its longer side is at most SIZE pixels.")
@click.option("--no-progress", is_flag=True, help="No progress bar (it shows when a transfer takes over 2 s).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@user_errors
def main(degraded: Path | None, clean: Path, output: Path, global_from: Path | None, local_from: Path | None,
         uniform_local: bool, redegrader_name: str | None, seed: int, device: str, size: int | None,
         no_progress: bool, verbose: bool) -> None:
    """Put the degradation of a degraded photo onto a clean one (the paper's degradation transfer).

    \b
      python -m redegrade.transfer --degraded y.png --clean x.png -o out.png
      python -m redegrade.transfer --global-from a.png --local-from b.png --clean x.png -o out.png

    Inputs are cropped at the right/bottom edge to multiples of 8 (logged). Degraded images are encoded
    at their own size; the local map e_l is resized to the clean image's grid, which is refused when
    the aspect ratios differ by more than 1.25× unless --uniform-local is given. A transfer that would
    not fit the device's memory is refused with the estimate (use --size, or crop a degraded image).
    Every error, usage errors included, is one line on stderr (exit code 2) and nothing is written.
    """
    setup_logging(verbose)
    g_path, l_path = global_from or degraded, local_from or degraded
    if g_path is None or l_path is None:
        raise InputError("say where the degradation comes from: --degraded Y, or both --global-from and --local-from"
                         if g_path is None and l_path is None else
                         f"--{'global' if g_path is None else 'local'}-from needs a partner: pass --degraded Y "
                         "or both --global-from and --local-from")
    if degraded is not None and global_from is not None and local_from is not None:
        raise InputError("--degraded would be unused: pass either --degraded or both --global-from and --local-from")
    start = time.perf_counter()
    # 1. cheap checks, before torch: the output, each input's header, shapes, the model's files
    output_format(output)
    check_output(output, inputs=[clean, g_path, l_path, redegrader_name])
    names = {"clean": f"clean image {clean}", "global": f"degraded image {g_path}", "local": f"degraded image {l_path}"}
    paths = {"clean": clean, "global": g_path, "local": l_path}
    shapes = {}
    for key, path in paths.items():
        w, h = probe_image(path, min_size=MIN_SIZE)
        hw = _fitted((h, w), size) if key == "clean" else (h, w)
        shapes[key] = _cropped(hw, name=names[key])
    if not uniform_local:
        check_local_shape(shapes["local"], shapes["clean"], name=f"local source {l_path}")
    if redegrader_name is not None:
        from redegrade.weights import check_checkpoint

        check_checkpoint(redegrader_name, "--redegrader")

    # 2. the device, whether the transfer fits it (before decoding a huge image), then the pixels
    from redegrade.image import array_to_tensor
    from redegrade.settings import generator, resolve_device

    dev = resolve_device(device)
    used = [k for k in paths if k != "local" or l_path != g_path]
    check_memory({names[k]: shapes[k] for k in used}, names["clean"], per_pixel=bytes_per_pixel(redegrader_name),
                 free=free_memory(dev))
    pixels = {key: read_image(paths[key], min_size=MIN_SIZE) for key in used}

    # 3. the model and the work
    from redegrade.redegrader import Redegrader

    model = Redegrader.from_pretrained(redegrader_name).to(dev)
    model.freeze()
    x = fit_longer_side(array_to_tensor(pixels.pop("clean")), size, name=names["clean"]) if size else \
        array_to_tensor(pixels.pop("clean"))
    x = crop_to_multiple(x, name=names["clean"]).to(dev)
    y_g = crop_to_multiple(array_to_tensor(pixels.pop("global")), name=names["global"]).to(dev)
    y_l = y_g if l_path == g_path else crop_to_multiple(array_to_tensor(pixels.pop("local")),
                                                        name=names["local"]).to(dev)
    total = count_layers(model, two_sources=y_l is not y_g)
    with layer_progress(model, total, enabled=not no_progress):
        out = transfer(model, x, y_g, y_l, generator=generator(seed, dev), uniform_local=uniform_local)
    from redegrade.image import check_finite, save_image

    check_finite(out, "the transferred image", "the redegrader's weights or the inputs may be broken")
    save_image(out, output)
    log.info("wrote %s (%d×%d) in %.1f s", output, out.shape[-1], out.shape[-2], time.perf_counter() - start)


if __name__ == "__main__":
    main(prog_name="python -m redegrade.transfer")
