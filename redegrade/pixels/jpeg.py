"""JPEG's lossy core as differentiable tensor operations: PIL's tables, the 8×8 DCT, rounding to a step.

libjpeg's pipeline as PIL runs it for RGB at 4:2:0: RGB → YCbCr (JFIF matrix, chroma centred on 128),
2×2 box-averaged chroma, level shift, 8×8 orthonormal DCT, quantisation with *the very tables PIL
writes for that quality* (read back from a file PIL saved), dequantisation, inverse DCT, chroma
upsampling by the triangle ("fancy") filter, YCbCr → RGB. The JPEG degradation and the model's JPEG
head both run it.
"""
from __future__ import annotations

import functools
import io
import math
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image

from redegrade.errors import ConfigError

#: PIL's ``subsampling`` argument for 4:2:0, the chroma subsampling RSG asserts.
SUBSAMPLING_420 = 2
#: Blend factor of the rounding surrogate's gradient (RSG's ``CompressJPEG.k``).
ROUNDING_K = 0.8
#: Width of :func:`dither_to_step`'s noise, in steps. A full step is rounding's error only for
#: coefficients spread evenly over their bin; at low quality most sit near 0 in the zero bin (96 % at
#: FFHQ-X's quality 12), where rounding's error is the small coefficient itself, so one step of noise
#: is ~15 dB above JPEG's own error and buries an inversion's gradient; with no noise at all the
#: inversion fits the synthesis' small errors more (worse on U_M). Measured on in-range targets
#: (``benchmarks/README.md`` §4): half a step is better than both on A_M and as good as one on U_M.
DITHER_WIDTH = 0.5


@functools.lru_cache(maxsize=None)
def pil_tables(quality: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """PIL's (luma, chroma) tables for ``quality`` as 64-tuples in natural order."""
    # A flat grey image is enough: the tables depend on the quality only, not on the content.
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(buf, format="JPEG", quality=quality, subsampling=SUBSAMPLING_420)
    q = Image.open(io.BytesIO(buf.getvalue())).quantization
    return tuple(q[0]), tuple(q[1])


def quantization_tables(quality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's (luma, chroma) quantisation tables for ``quality`` as ``[8,8]`` float tensors.

    Read back from a file PIL wrote. Pillow returns them in natural (row-major) order, so
    ``table[u, v]`` divides the coefficient of vertical frequency ``u`` and horizontal frequency ``v``.
    """
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")
    luma, chroma = pil_tables(int(quality))
    return (torch.tensor(luma, dtype=torch.float32).view(8, 8), torch.tensor(chroma, dtype=torch.float32).view(8, 8))


# -- DCT and rounding -------------------------------------------------------------------------
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                              [-0.168736, -0.331264, 0.5],
                              [0.5, -0.418688, -0.081312]])
_YCBCR_TO_RGB = torch.tensor([[1.0, 0.0, 1.402],
                              [1.0, -0.344136, -0.714136],
                              [1.0, 1.772, 0.0]])


@functools.lru_cache(maxsize=None)
def dct_matrix() -> torch.Tensor:
    # Orthonormal DCT-II of size 8; JPEG's FDCT (with its ¼·C(u)·C(v) factors) is exactly this in 2-D.
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / 16)
    m[0] *= math.sqrt(1 / 8)
    m[1:] *= math.sqrt(2 / 8)
    return m.float()


def round_ste(x: torch.Tensor, k: float = ROUNDING_K) -> torch.Tensor:
    """Forward ``round(x)``; backward the gradient of ``lerp(x, round(x) + (x − round(x))³, k)``.

    The cubic keeps a little slope (1 − k) everywhere and more near the rounding steps, instead of
    the zero gradient of a plain round.
    """
    r = torch.round(x).detach()
    s = torch.lerp(x, r + (x - r) ** 3, k)
    return r + (s - s.detach())


def split_blocks(c: torch.Tensor) -> torch.Tensor:
    """Planes ``[B,H,W]`` (H, W multiples of 8) → 8×8 blocks ``[B,H/8,W/8,8,8]``."""
    b, h, w = c.shape
    return c.view(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def unblocks(c: torch.Tensor) -> torch.Tensor:
    """8×8 blocks ``[B,H/8,W/8,8,8]`` → planes ``[B,H,W]`` (the inverse of :func:`split_blocks`)."""
    b, nh, nw = c.shape[:3]
    return c.permute(0, 1, 3, 2, 4).reshape(b, nh * 8, nw * 8)


def round_to_step(c: torch.Tensor, step: torch.Tensor, rate: float = 2.0) -> torch.Tensor:
    """Forward ``step · round(c / step)`` for a learned ``step``; gradients reach both ``c`` and ``step``.

    To ``c`` the gradient passes unchanged (straight-through) outside the zero bin and not inside it:
    with a full pass-through the layers before the rounding kept raising detail that the step then
    removed, and both grew until training diverged. (An inversion does not round: it dithers, see
    :func:`dither_to_step`.)

    Rounding is piecewise constant in c/step, so the exact derivative in ``step`` is ``round(u)`` plus
    jumps where coefficients drop a level. Plain straight-through, ``round(u) − u``,
    spreads every jump evenly over its bin, including the jump from ±step to 0 over the zero bin, where
    it then claims that zeroed coefficients move away from 0 as the step grows: trained with it, the
    step went to 0 even for q=20 targets. Here the zero bin gets no gradient and its jump goes to the
    coefficients just outside it, ``−sign(u)·exp(−rate·(|u| − ½))``. On training batches its sign
    agrees with the loss's actual slope in the step at multipliers 0.1 and 2.5 (q=20, 50, 90 targets).
    """
    u = (c / step).detach()
    r = torch.round(u)
    outside = u.abs() >= 0.5
    slope = (r - u - u.sign() * torch.exp(-rate * (u.abs() - 0.5))) * outside
    passed = c * outside
    out = passed + (step * r - passed).detach()
    return out + (step - step.detach()) * slope


def dither_to_step(c: torch.Tensor, step: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Rounding to ``step`` relaxed to additive noise: ``c + DITHER_WIDTH·step·u``, u ~ U(−½, ½) drawn
    from ``generator``.

    With hard rounding every ``c`` in the right bin explains y exactly, and an inversion stops wherever
    it first enters one; with zero-mean noise the loss in expectation is smallest where ``c`` sits at the
    centre of the observed bin, which is where JPEG's own decoder puts it (Ballé et al. 2017 train
    through quantisation with uniform noise). ``step`` gets the reparameterised gradient
    ``DITHER_WIDTH·u·∂L/∂out``. See :data:`DITHER_WIDTH` for the noise's width.
    """
    u = torch.rand(c.shape, generator=generator, device=generator.device, dtype=c.dtype).to(c.device)
    return c + (DITHER_WIDTH * step) * (u - 0.5)


def _round_ste_to_step(c: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return round_ste(c / step) * step


def quantise_planes(plane: torch.Tensor, table: torch.Tensor,
                    quantiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _round_ste_to_step
                    ) -> torch.Tensor:
    """Level-shifted planes ``[B,H,W]`` (H, W multiples of 8) → 8×8 DCT → ``quantiser(coef, table)`` → IDCT.

    ``table`` is ``[8,8]``, or ``[B,H/8,W/8,8,8]`` for a step table per block.
    """
    d = dct_matrix().to(plane)
    coef = d @ split_blocks(plane) @ d.T  # rows: vertical frequency u, columns: horizontal frequency v
    t = table.to(plane)
    # The table is used as Pillow reports it, table[u, v]. RSG's DiffJPEG applies it transposed (a
    # bug: horizontal and vertical frequencies swap step sizes), which tracks real JPEG 2–3× worse.
    coef = quantiser(coef, t)
    return unblocks(d.T @ coef @ d)


def quantise_ycc(x: torch.Tensor, luma: torch.Tensor, chroma: torch.Tensor, *, subsample: bool = True,
                 quantiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _round_ste_to_step) -> torch.Tensor:
    """JPEG's lossy steps on ``x`` ``[B,3,H,W]`` RGB in 0..255, without clamping: RGB → YCbCr, chroma
    2×2 average-pooled when ``subsample`` (4:2:0, as PIL and OpenCV write by default), 8×8 DCT rounded
    to ``quantiser(coef, table)``, IDCT, chroma upsampled back, → RGB.

    ``luma``/``chroma`` are ``[8,8]`` or one table per 8×8 luma block ``[B,H/8,W/8,8,8]`` (chroma's
    per-block tables are then averaged over the 2×2 luma blocks each chroma block covers). Sizes that
    are not multiples of 16 (8 without subsampling) are edge-padded, as libjpeg pads partial MCUs.
    """
    b, _, h, w = x.shape
    mcu = 16 if subsample else 8
    ph, pw = -h % mcu, -w % mcu
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        luma, chroma = (_pad_blocks(t, ph // 8, pw // 8) for t in (luma, chroma))
    ycc = torch.einsum("ij,bjhw->bihw", _RGB_TO_YCBCR.to(x), x)
    y = quantise_planes(ycc[:, 0] - 128, luma, quantiser) + 128
    cbcr = ycc[:, 1:]
    if subsample:
        cbcr = F.avg_pool2d(cbcr, 2)
        if chroma.dim() == 5:  # [B,H/8,W/8,8,8] → [B,H/16,W/16,8,8]
            chroma = F.avg_pool2d(chroma.flatten(3).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).unflatten(3, (8, 8))
    hc, wc = cbcr.shape[-2:]
    planes = cbcr.reshape(b * 2, hc, wc)
    table = chroma.repeat_interleave(2, dim=0) if chroma.dim() == 5 else chroma
    cbcr = quantise_planes(planes, table, quantiser).view(b, 2, hc, wc)
    if subsample:
        # libjpeg's "fancy" h2v2 upsampling is the ¾/¼ triangle filter = bilinear with half-pixel centres.
        cbcr = F.interpolate(cbcr, scale_factor=2, mode="bilinear", align_corners=False)
    rgb = torch.einsum("ij,bjhw->bihw", _YCBCR_TO_RGB.to(x), torch.cat([y[:, None], cbcr], 1))
    return rgb[..., :h, :w]


def _pad_blocks(table: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """Edge-pad a per-block table ``[B,nh,nw,8,8]`` by ``bh``/``bw`` blocks; ``[8,8]`` passes unchanged."""
    if table.dim() != 5 or not (bh or bw):
        return table
    t = table.permute(0, 3, 4, 1, 2).flatten(1, 2)
    t = F.pad(t, (0, bw, 0, bh), mode="replicate")
    return t.unflatten(1, (8, 8)).permute(0, 3, 4, 1, 2)


