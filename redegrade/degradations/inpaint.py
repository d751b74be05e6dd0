"""P (inpainting task): brush strokes crossing the image, soft-edged, applied by multiplication."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from redegrade.degradations.base import Degradation

#: Brush width as a fraction of the image side (RSG: ``int(0.08·res)·4`` on the 4× canvas).
BRUSH_FRACTION = 0.08


def _taps(p: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``Σ_j [1,4,6,4,1]_j · p[2i + j]`` along ``dim`` for ``i < ⌈n/2⌉`` (``p`` padded by 2 on both sides)."""
    def tap(j: int) -> torch.Tensor:  # a strided view: p[j], p[j + 2], … along dim
        index = [slice(None)] * p.ndim
        index[dim] = slice(j, j + n, 2)
        return p[tuple(index)]

    out = tap(0) + tap(4)
    return out.add_(tap(2), alpha=6).add_(tap(1), alpha=4).add_(tap(3), alpha=4)


def pyr_down(m: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``pyrDown`` on ``[B,C,H,W]``: 5×5 binomial blur (reflect-101 border), keep even pixels.

    The output is ``⌈H/2⌉×⌈W/2⌉``. The separable [1,4,6,4,1] passes are computed at the kept rows,
    then the kept columns, only, with in-place fused adds, and scaled by 1/256 once (exact for the 0/1
    stroke canvas): a 4096² canvas takes ~0.1 s where full-size ``conv2d`` passes took 1–3 s.
    """
    h, w = m.shape[-2:]
    p = F.pad(m, (2, 2, 2, 2), mode="reflect")  # torch "reflect" = OpenCV BORDER_REFLECT_101
    return _taps(_taps(p, -2, h), -1, w).mul_(1 / 256)


def draw_strokes(n: int, resolution: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """A ``[1,1,R,R]`` keep-mask (1 = kept) with ``n`` strokes, and the strokes' canvas end points.

    Strokes are drawn at 4× resolution, brush width ``int(0.08·R)·4``; each coordinate of both end
    points lies in the outer thirds of the canvas, so strokes cross the centre. Two pyrDown steps
    bring the canvas to R² with soft edges.
    """
    side = 4 * resolution
    brush = int(BRUSH_FRACTION * resolution) * 4
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    last = side - 1

    def coord() -> int:
        if rng.random() < 0.5:
            return int(rng.integers(0, last // 3, endpoint=True))
        return int(rng.integers(2 * last // 3, last, endpoint=True))

    strokes = []
    for _ in range(n):
        x0, y0, x1, y1 = coord(), coord(), coord(), coord()
        strokes.append((x0, y0, x1, y1))
        draw.line([(x0, y0), (x1, y1)], fill=255, width=brush)
        # A round cap at the start. RSG's cv2.circle call has the default thickness 1 and so draws
        # only a thin ring; a filled disc is what it was meant to add.
        r = brush / 2
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=255)
    m = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)[None, None]
    return (1.0 - pyr_down(pyr_down(m))).clamp(0, 1), strokes


class Strokes(Degradation):
    """Ground truth and approximation alike: multiply by the soft stroke mask (masked pixels → black).

    The mask is drawn at ``mask_resolution`` (the task resolution, so stroke widths are relative to
    the full image) and area-resized to ``resolution`` when the two differ (in composed tasks P runs
    after U). RSG resizes bicubically without antialiasing, which overshoots to [−0.03, 1.03]; area
    keeps the mask in [0, 1].
    """

    name = "P"

    def __init__(self, strokes: int, *, resolution: int, seed: int, mask_resolution: int | None = None):
        mask_resolution = mask_resolution or resolution
        mask, ends = draw_strokes(int(strokes), mask_resolution, np.random.default_rng(seed))
        if mask_resolution != resolution:
            mask = F.interpolate(mask, size=(resolution, resolution), mode="area")
        self.mask = mask
        super().__init__(input_size=resolution, output_size=resolution,
                         params={"strokes": int(strokes), "stroke_endpoints": ends}, seed=seed)

    def _apply(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.mask.to(u)

    def _approx(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.mask.to(u)
