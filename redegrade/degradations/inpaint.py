"""P (inpainting task): round-capped brush strokes crossing the image, soft-edged, applied by multiplication."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from redegrade.degradations.base import Degradation

#: Brush width as a fraction of the image side (RSG: ``int(0.08·res)·4`` on the 4× canvas).
BRUSH_FRACTION = 0.08


def _taps(p: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``Σ_j [1,4,6,4,1]_j · p[2i + j]`` along ``dim``, ``i < ⌈n/2⌉`` (``p`` padded by 2 on both sides)."""
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


def _interval(a: float, b: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the x with ``lo ≤ a·x + b ≤ hi`` as ``(start, end)``, start > end when empty."""
    if a == 0:
        inside = (lo <= b) & (b <= hi)
        return np.where(inside, -np.inf, np.inf), np.where(inside, np.inf, -np.inf)
    x_lo, x_hi = (lo - b) / a, (hi - b) / a
    return (x_lo, x_hi) if a > 0 else (x_hi, x_lo)


def stroke_canvas(strokes: list[tuple[int, int, int, int]], side: int, brush: int) -> torch.Tensor:
    """A ``side×side`` float canvas, 1 on the pixels within ``brush/2`` of any stroke segment, else 0.

    This is OpenCV's thick ``cv2.line`` (thickness = ``brush``, round caps at both ends) with pixel
    centres at integer coordinates. The capsule is convex, so each row meets it in one interval, which
    spans the row's intervals through the two end discs and the band between them; a running sum over
    the rows' interval ends fills the canvas. RSG's extra ``cv2.circle`` of radius ``brush/2`` at the
    start (a thin ring, meant as a disc) lies in the start cap: it is the start disc here and adds
    nothing beyond it.
    """
    r = brush / 2
    y = np.arange(side, dtype=np.float64)
    # +1 where a run starts, −1 just after it ends; a pixel's running sum counts the strokes over it
    depth = np.int8 if len(strokes) < 128 else np.int32  # int8: a quarter of the memory traffic
    runs = np.zeros((side, side + 1), dtype=depth)
    for x0, y0, x1, y1 in strokes:
        starts, ends = [], []
        for cx, cy in ((x0, y0), (x1, y1)):  # the round caps; the first is also RSG's start circle
            h2 = r * r - (y - cy) ** 2
            h = np.sqrt(np.maximum(h2, 0))
            starts.append(np.where(h2 >= 0, cx - h, np.inf))
            ends.append(np.where(h2 >= 0, cx + h, -np.inf))
        dx, dy = x1 - x0, y1 - y0
        length = float(np.hypot(dx, dy))
        if length > 0:  # the band: 0 ≤ along-stroke position ≤ length, |across| ≤ r
            along = _interval(dx, (y - y0) * dy - x0 * dx, 0, length * length)
            across = _interval(dy, -(y - y0) * dx - x0 * dy, -r * length, r * length)
            start, end = np.maximum(along[0], across[0]), np.minimum(along[1], across[1])
            empty = start > end  # such a row must not widen the union
            starts.append(np.where(empty, np.inf, start))
            ends.append(np.where(empty, -np.inf, end))
        first = np.clip(np.ceil(np.min(starts, axis=0)), 0, side)
        last = np.clip(np.floor(np.max(ends, axis=0)), -1, side - 1)
        hit = np.nonzero(first <= last)[0]
        runs[hit, first[hit].astype(np.int64)] += 1
        runs[hit, last[hit].astype(np.int64) + 1] -= 1
    runs = torch.from_numpy(runs)[:, :side]
    return torch.cumsum(runs, 1, dtype=runs.dtype).gt_(0).to(torch.float32)


def stroke_mask(strokes: list[tuple[int, int, int, int]], resolution: int) -> torch.Tensor:
    """The ``[1,1,R,R]`` soft keep-mask (1 = kept) of strokes given by their 4×-canvas end points.

    Brush width ``int(0.08·R)·4`` on the ``4R``² canvas; two pyrDown steps bring it to R² with soft edges.
    """
    side = 4 * resolution
    canvas = stroke_canvas(strokes, side, int(BRUSH_FRACTION * resolution) * 4)[None, None]
    return (1.0 - pyr_down(pyr_down(canvas))).clamp(0, 1)


def draw_strokes(n: int, resolution: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """A ``[1,1,R,R]`` keep-mask (1 = kept) with ``n`` strokes, and the strokes' canvas end points.

    Each coordinate of both end points is drawn from ``rng`` in the outer thirds of the 4R² canvas, so
    strokes cross the centre; :func:`stroke_mask` draws them.
    """
    last = 4 * resolution - 1

    def coord() -> int:
        if rng.random() < 0.5:
            return int(rng.integers(0, last // 3, endpoint=True))
        return int(rng.integers(2 * last // 3, last, endpoint=True))

    strokes = [(coord(), coord(), coord(), coord()) for _ in range(n)]
    return stroke_mask(strokes, resolution), strokes


class Strokes(Degradation):
    """Ground truth and approximation alike: multiply by the soft stroke mask (masked pixels → black).

    Each stroke is a thick ``cv2.line`` with round caps at both ends (see :func:`stroke_canvas`), its
    end points drawn from ``seed``. The mask is drawn at ``mask_resolution`` (the task resolution, so
    stroke widths are relative to the full image) and area-resized to ``resolution`` when the two
    differ (in composed tasks P runs after U). RSG resizes bicubically without antialiasing, which
    overshoots to [−0.03, 1.03]; area keeps the mask in [0, 1].
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
