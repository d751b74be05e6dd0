"""FFHQ-X inpainting (P): strokes, brush width, stroke masks and the image pyramid."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from redegrade.degradations import ffhqx
from redegrade.degradations.inpaint import Strokes, pyr_down, stroke_canvas, stroke_mask

from degradation_helpers import R, unit

ROOT = Path(__file__).resolve().parents[1]


# -- P ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_inpainting_strokes_and_soft_mask(level, face):
    d = ffhqx.task("P", level, resolution=R, seed=4)
    ends = d.params["stroke_endpoints"]
    assert len(ends) == ffhqx.STROKES[level] == d.params["strokes"]
    last = 4 * R - 1
    for x0, y0, x1, y1 in ends:
        for c in (x0, y0, x1, y1):
            assert c <= last // 3 or c >= 2 * last // 3
        # Every recorded stroke is drawn: its midpoint is masked out.
        mx, my = (x0 + x1) / 8, (y0 + y1) / 8
        assert d.mask[0, 0, min(int(my), R - 1), min(int(mx), R - 1)] < 0.5
    m = d.mask
    assert m.shape == (1, 1, R, R) and m.min() >= 0 and m.max() <= 1
    assert ((m > 0.02) & (m < 0.98)).any() and (m < 0.02).any() and (m > 0.98).any()
    y = d.apply(face)
    expect = ((unit(face) * m) * 255 + 1e-3).floor() / 255 * 2 - 1  # RSG's round trip truncates
    assert torch.allclose(y, expect, atol=1e-6)
    assert torch.allclose(d.approx(face), unit(face) * m * 2 - 1, atol=1e-6)


def test_more_strokes_mask_more():
    holes = [(1 - ffhqx.task("P", lv, resolution=R, seed=0).mask).mean().item() for lv in ffhqx.LEVELS]
    assert holes == sorted(holes) and holes[0] > 0.01


def test_brush_width_is_eight_percent():
    # Masked area / stroke length = brush width, about 8 % of the side (RSG: int(0.08·R)·4 at 4×).
    for seed in range(3):
        s = Strokes(1, resolution=100, seed=seed)
        x0, y0, x1, y1 = (c / 4 for c in s.params["stroke_endpoints"][0])
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        cap = 3.1416 * 4**2  # the round caps at both ends add a whole disc of radius 4 px
        width = ((1 - s.mask).sum().item() - cap) / length
        assert 7 <= width <= 9, (seed, width)


def test_stroke_mask_has_round_caps_at_both_ends():
    # cv2.line(thickness=brush) caps both ends with a disc of radius brush/2 (the old mask only the start).
    # R = 256: brush 80 canvas px (r = 10 output px); pyrDown's blur spreads over ~2 canvas px only.
    for seed in range(4):
        s = Strokes(1, resolution=256, seed=seed)
        x0, y0, x1, y1 = s.params["stroke_endpoints"][0]
        d = np.array([x1 - x0, y1 - y0]) / np.hypot(x1 - x0, y1 - y0)
        r = 40
        for end, out in (((x0, y0), -d), ((x1, y1), d)):
            for t, masked in ((0.5 * r, True), (1.5 * r, False)):
                cx, cy = np.array(end) + t * out
                if not (0 <= cx <= 1023 and 0 <= cy <= 1023):
                    continue  # beyond the image border
                m = s.mask[0, 0, round(cy / 4), round(cx / 4)].item()  # output pixel j sits at canvas 4j
                assert (m < 0.05) if masked else (m > 0.95), (seed, end, t, m)


def test_single_horizontal_stroke_covers_the_capsule_area():
    r, length = 40, 600  # R = 256: brush 80 on the 1024² canvas
    m = stroke_mask([(200, 500, 200 + length, 500)], 256)
    area = (1 - m).sum().item() * 16  # in canvas pixels
    capsule = 2 * r * length + np.pi * r**2  # without the end cap: −4.7 %
    # the lattice count exceeds the area by about the two boundary rows' half pixels (+1.1 %)
    assert abs(area / capsule - 1) < 0.02, (area, capsule)


_RANDOM_STROKES = [tuple(int(c) for c in s) for s in np.random.default_rng(0).integers(-10, 130, (20, 4))]


@pytest.mark.parametrize("stroke", [(20, 30, 100, 30), (30, 20, 30, 100), (10, 90, 110, 15), (60, 60, 60, 60),
                                    (0, 0, 119, 110), (118, 5, 3, 64), (50, 50, 51, 50)] + _RANDOM_STROKES)
def test_stroke_canvas_is_every_pixel_within_half_a_brush_of_the_segment(stroke):
    side, brush = 120, 24
    x0, y0, x1, y1 = stroke
    yy, xx = np.mgrid[:side, :side].astype(np.float64)
    d = np.array([x1 - x0, y1 - y0], dtype=np.float64)
    t = np.clip(((xx - x0) * d[0] + (yy - y0) * d[1]) / max(d @ d, 1e-12), 0, 1)
    dist = np.hypot(xx - x0 - t * d[0], yy - y0 - t * d[1])
    got = stroke_canvas([stroke], side, brush).numpy() > 0
    assert got.sum() > 0 or dist.min() > brush / 2
    assert ((got == (dist <= brush / 2)) | (abs(dist - brush / 2) < 1e-9)).all()
    two = stroke_canvas([stroke, (5, 115, 115, 100)], side, brush).numpy() > 0  # union of strokes
    assert (two >= got).all() and two.sum() > got.sum()


def _pyr_down_numpy(m: np.ndarray) -> np.ndarray:
    """cv2.pyrDown written out: [1,4,6,4,1]/16 outer product, reflect-101 border, even pixels."""
    k = np.array([1, 4, 6, 4, 1]) / 16
    p = np.pad(m, 2, mode="reflect")  # numpy "reflect" = OpenCV BORDER_REFLECT_101
    return np.array([[(np.outer(k, k) * p[i:i + 5, j:j + 5]).sum() for j in range(0, m.shape[1], 2)]
                     for i in range(0, m.shape[0], 2)])


def test_pyr_down_matches_reference():
    # The strided version equals the old full-size conv2d (kept in the benchmark as its reference):
    # bit for bit on 0/1 canvases and their first pyramid level (dyadic values), to a few ulps elsewhere.
    spec = importlib.util.spec_from_file_location("pyr_down_cost", ROOT / "benchmarks" / "pyr_down_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 1, 16, 16), (2, 3, 17, 23), (1, 1, 5, 6), (1, 2, 64, 33)]:
        x = torch.rand(shape, generator=g)
        binary = (x < 0.5).float()
        assert pyr_down(x).shape == (*shape[:2], (shape[2] + 1) // 2, (shape[3] + 1) // 2)
        assert torch.equal(pyr_down(binary), bench.pyr_down_reference(binary))
        assert torch.equal(pyr_down(pyr_down(binary)), bench.pyr_down_reference(bench.pyr_down_reference(binary)))
        torch.testing.assert_close(pyr_down(x), bench.pyr_down_reference(x), atol=3e-7, rtol=0)
        want = _pyr_down_numpy(x[0, 0].double().numpy())
        torch.testing.assert_close(pyr_down(x)[0, 0].double(), torch.from_numpy(want), atol=3e-7, rtol=0)
