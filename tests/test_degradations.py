"""FFHQ-X degradations (ground truth vs. table, determinism, approximations) and the WQI mix."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from redegrade.pixels import jpeg as pixels_jpeg
from PIL import Image
from scipy import stats as scipy_stats

from redegrade.degradations import ffhqx, jpeg, wqi
from redegrade.degradations.base import Composed
from redegrade.degradations.inpaint import Strokes, pyr_down, stroke_canvas, stroke_mask
from redegrade.degradations.resize import FILTERS
from redegrade.errors import ConfigError, ShapeError
from redegrade.image import pil_to_tensor, png_roundtrip

R = 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """A natural 64² test image in [-1,1] (skimage's astronaut, public domain)."""
    skdata = pytest.importorskip("skimage.data")
    im = Image.fromarray(skdata.astronaut()).resize((R, R), Image.Resampling.LANCZOS)
    return pil_to_tensor(im)


def grey(value: float, size: int = R) -> torch.Tensor:
    """A constant image whose [0,1] intensity is ``value``."""
    return torch.full((1, 3, size, size), value * 2 - 1)


def unit(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


# -- tables and names -----------------------------------------------------------------------------
def test_level_tables_match_ffhqx():
    assert ffhqx.LEVELS == ("XS", "S", "M", "L", "XL")
    assert [ffhqx.FACTORS[lv] for lv in ffhqx.LEVELS] == [2, 4, 8, 16, 32]
    assert [ffhqx.NOISE[lv] for lv in ffhqx.LEVELS] == [(96, .04), (48, .08), (24, .16), (12, .32), (6, .64)]
    assert [ffhqx.QUALITIES[lv] for lv in ffhqx.LEVELS] == [18, 15, 12, 9, 6]
    assert [ffhqx.STROKES[lv] for lv in ffhqx.LEVELS] == [1, 5, 9, 13, 17]


def test_task_names_and_parsing():
    assert ffhqx.TASKS_SINGLE == ("U", "N", "A", "P")
    assert ffhqx.TASKS_COMPOSED == ("UN", "UA", "UP", "NA", "NP", "AP", "UNA", "UNP", "UAP", "NAP", "UNAP")
    assert ffhqx.parse_tasks("single") == ["U", "N", "A", "P"]
    assert len(ffhqx.parse_tasks("composed")) == 11 and len(ffhqx.parse_tasks("all")) == 15
    assert ffhqx.parse_tasks("U, n,UNAP,U") == ["U", "N", "UNAP"]
    assert len(ffhqx.benchmark_tasks()) == 31
    with pytest.raises(ConfigError, match="UNAP"):
        ffhqx.parse_tasks("U,PANU")
    with pytest.raises(ConfigError, match="XS"):
        ffhqx.task("U", "XXL", resolution=R)


def test_required_api_shape():
    d = ffhqx.task("UNAP", "M", resolution=R, seed=0)
    assert (d.name, d.level) == ("UNAP", "M")
    assert {k: d.params[k] for k in ("factor", "photons", "drop", "quality", "strokes")} == \
        {"factor": 8, "photons": 24, "drop": .16, "quality": 12, "strokes": 9}
    assert d.params["filter"] in FILTERS
    assert d.output_size == (R // 8, R // 8) and d.mask.shape == (1, 1, R // 8, R // 8)
    with pytest.raises(ShapeError, match="resolution=32"):
        d.apply(grey(.5, 32))


# -- U ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_upsampling_size_and_filter(level, face):
    d = ffhqx.task("U", level, resolution=R, seed=3)
    f = ffhqx.FACTORS[level]
    y = d.apply(face)
    assert y.shape == (1, 3, R // f, R // f) and d.output_size == (R // f, R // f) and d.mask is None
    assert d.approx(face).shape == y.shape
    # The recorded filter is the one applied: exactly PIL's 8-bit resize with it.
    pil = Image.fromarray(((unit(face[0]).permute(1, 2, 0).numpy()) * 255).round().astype(np.uint8))
    ref = pil_to_tensor(pil.resize((R // f, R // f), FILTERS[d.params["filter"]]))
    assert torch.equal(y, ref)


def test_upsampling_filter_is_drawn_from_the_seed():
    filters = {ffhqx.task("U", "M", resolution=R, seed=s).params["filter"] for s in range(30)}
    assert filters == set(FILTERS)


def test_upsampling_approx_close_to_pil(face):
    for level in ffhqx.LEVELS:
        d = ffhqx.task("U", level, resolution=R, seed=0)
        mae = (d.apply(face) - d.approx(face)).abs().mean().item() / 2 * 255
        assert mae < 12, (level, mae)  # measured 6.4–10.8 / 255 on this detailed 64² image


# -- N ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_noise_drop_rate_and_poisson_mean(level):
    photons, p = ffhqx.NOISE[level]
    d = ffhqx.task("N", level, resolution=R, seed=1)
    y = unit(d.apply(grey(.5)))[0]
    zero = y == 0
    all_zero = zero.all(0)
    # Drops remove whole pixels; at λx = 3 (XL) a channel is also zero by chance with p = e^-3.
    assert abs(all_zero.float().mean().item() - p) < 0.03
    partial = (zero.any(0) & ~all_zero).float().mean().item()
    assert partial < 3 * np.exp(-photons * .5) + 0.01
    kept = y[:, ~all_zero]
    assert abs(kept.mean().item() - .5) < 0.02  # E[Poisson(λx)/λ] = x (clamp at 1 costs < 0.01)
    assert abs(kept.var().item() - .5 / photons) < 0.25 * .5 / photons
    # The ground truth is quantised to 8 bits.
    assert ((y * 255) - (y * 255).round()).abs().max() < 1e-4


@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_noise_approx_matches_truth_statistics(level):
    d = ffhqx.task("N", level, resolution=R, seed=2)
    x = grey(.5)
    truth, approx = unit(d.apply(x)), unit(d.approx(x))
    # RSG's surrogate mean λx − ½ would sit 0.5/λ = 0.083 low at XL: this catches it.
    assert abs(truth.mean() - approx.mean()) < 0.02
    assert abs(truth.std() / approx.std() - 1) < 0.1
    drop_truth, drop_approx = (truth == 0).all(1).float().mean(), (approx == 0).all(1).float().mean()
    assert abs(drop_truth - drop_approx) < 0.04


def test_noise_approx_redraws_and_is_seeded():
    x = grey(.4)
    a, b = ffhqx.task("N", "M", resolution=R, seed=5), ffhqx.task("N", "M", resolution=R, seed=5)
    first = a.approx(x)
    assert torch.equal(first, b.approx(x))   # seeded
    assert not torch.equal(first, a.approx(x))  # fresh noise every call


def test_noise_surrogate_clamp_passes_gradient_outside_range():
    from redegrade.degradations.noise import surrogate_clamp

    x = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    y = surrogate_clamp(x)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 1.0]))
    assert (x.grad > 0).all() and x.grad[1] == pytest.approx(0.5)


# -- the 8-bit round trip -------------------------------------------------------------------------
def test_png_roundtrip_rounds_or_truncates():
    def q(v: float, truncate: bool) -> float:  # [0,1] in, 8-bit level out
        return round(unit(png_roundtrip(torch.tensor(v) * 2 - 1, truncate=truncate)).item() * 255, 4)

    assert [q(v / 255, False) for v in (0, 0.51, 254.49, 254.9, 255, 300)] == [0, 1, 254, 255, 255, 255]
    # RSG's to_pil_image floors (mul(255).byte()): ½ level + ε is still 0, and 1.0 stays 255
    assert [q(v / 255, True) for v in (0, 0.51, 1.2, 254.49, 254.9, 255, 300)] == [0, 0, 1, 254, 254, 255, 255]
    assert q(-0.1, True) == 0
    # every 8-bit level passes unchanged, however it reached [-1,1] (a bare floor drops 63 of them)
    levels = torch.arange(256.0)
    for x in (levels / 127.5 - 1, levels / 255 * 2 - 1, (levels / 255 * 2 - 1) * 0.5 * 2):
        assert torch.equal(png_roundtrip(x, truncate=True), levels / 127.5 - 1)
        assert torch.equal(png_roundtrip(x), levels / 127.5 - 1)


@pytest.mark.parametrize("level", ["XS", "S", "M"])
def test_noise_ground_truth_truncates_like_rsg(level):
    # Kept values are floor(255·min(n/λ, 1)) levels for a Poisson count n, as RSG's to_pil_image leaves
    # them; a rounding round trip puts them on another lattice and ½ level higher on average.
    photons, _ = ffhqx.NOISE[level]
    size, k = 512, 128
    y = unit(ffhqx.task("N", level, resolution=size, seed=1).apply(grey(k / 255, size)))[0]
    kept = (y[:, ~(y == 0).all(0)] * 255).double()
    n = np.arange(4 * photons + 100)
    lattice = np.floor(np.minimum(n / photons, 1) * 255 + 1e-6)
    w = scipy_stats.poisson.pmf(n, photons * k / 255)
    mean = (w * lattice).sum()
    std = np.sqrt((w * lattice**2).sum() - mean**2)
    # measured at seed 1: truncating +0.006/+0.041/+0.014 levels, rounding +0.53/+0.57/+0.51
    assert abs(kept.mean().item() - mean) < 0.2, (kept.mean().item(), mean)
    assert abs(kept.std().item() / std - 1) < 0.004, (kept.std().item(), std)  # rounding: −0.6 % at XS
    assert np.isin(kept.round().numpy(), lattice).all()


# -- A ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_jpeg_quality_and_subsampling_read_back(level, face):
    d = ffhqx.task("A", level, resolution=R, seed=0)
    (data,) = d.encode(face)
    assert jpeg.jpeg_quality_of(data) == ffhqx.QUALITIES[level]
    assert jpeg.jpeg_subsampling_of(data) == "4:2:0"
    assert torch.equal(d.apply(face), jpeg.decode([data]) * 2 - 1)


def test_jpeg_quality_of_file_and_tables_orientation(tmp_path):
    path = tmp_path / "q50.jpg"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(path, quality=50)
    assert jpeg.jpeg_quality_of(path) == 50
    Image.new("RGB", (32, 32)).save(tmp_path / "custom.jpg", qtables=[[7] * 64, [9] * 64])
    assert jpeg.jpeg_quality_of(tmp_path / "custom.jpg") is None
    luma, _ = jpeg.quantization_tables(50)
    # libjpeg's standard luminance table at q 50: first row / first column.
    assert luma[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]
    assert luma[:, 0].tolist() == [16, 12, 14, 14, 18, 24, 49, 72]


def test_diff_jpeg_tracks_pil(face):
    u = unit(face)
    for level in ffhqx.LEVELS:
        q = ffhqx.QUALITIES[level]
        truth = jpeg.decode(jpeg.encode(u, q))
        luma, chroma = jpeg.quantization_tables(q)
        mae = (jpeg.diff_jpeg(u, luma, chroma) - truth).abs().mean().item() * 255
        mae_t = (jpeg.diff_jpeg(u, luma.T, chroma.T) - truth).abs().mean().item() * 255
        assert mae < 2.0, (q, mae)  # measured 0.6–1.4 / 255
        assert mae_t > 2 * mae      # RSG's transposed tables are far worse
        assert mae < 0.2 * (u - truth).abs().mean().item() * 255


def test_diff_jpeg_clamps_and_odd_sizes():
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    y = jpeg.diff_jpeg(x.clamp(0, 1), *jpeg.quantization_tables(6))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_round_ste_gradient():
    x = torch.tensor([0.0, 0.25, 1.5, 2.4], requires_grad=True)
    y = pixels_jpeg.round_ste(x)
    y.sum().backward()
    r = torch.round(x.detach())
    assert torch.equal(y.detach(), r)
    assert torch.allclose(x.grad, 0.2 + 0.8 * 3 * (x.detach() - r) ** 2)


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


# -- composition and determinism ----------------------------------------------------------------
def test_composed_order_is_U_N_A_P(face):
    d = ffhqx.task("UNAP", "M", resolution=R, seed=7)
    assert isinstance(d, Composed) and [p.name for p in d.parts] == ["U", "N", "A", "P"]
    r = R // 8
    u = ffhqx.task("U", "M", resolution=R, seed=7)
    n = ffhqx.task("N", "M", resolution=r, seed=7)
    a = ffhqx.task("A", "M", resolution=r, seed=7)
    chain = a.apply(n.apply(u.apply(face)))
    assert torch.equal(ffhqx.task("UNA", "M", resolution=R, seed=7).apply(face), chain)
    assert not torch.equal(chain, n.apply(a.apply(u.apply(face))))  # order matters
    y = d.apply(face)
    assert y.shape == (1, 3, r, r)
    # P is last: masked-out pixels are black in the output.
    assert (unit(y)[0, :, d.mask[0, 0] < 0.02] < 0.03).all()


@pytest.mark.parametrize("name", ["U", "N", "P", "UN", "NP", "UNAP"])
def test_ground_truth_is_deterministic_per_seed(name, face):
    a = [ffhqx.task(name, "M", resolution=R, seed=s).apply(face) for s in (11, 11)]
    assert torch.equal(a[0], a[1])
    d = ffhqx.task(name, "M", resolution=R, seed=11)
    assert torch.equal(d.apply(face), d.apply(face))  # re-applying reproduces the target
    others = [ffhqx.task(name, "M", resolution=R, seed=s).apply(face) for s in range(12, 18)]
    assert any(not torch.equal(a[0], o) for o in others)


def test_ground_truth_does_not_touch_global_rng(face):
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    ffhqx.task("UNAP", "M", resolution=R, seed=0).apply(face)
    np_state = np.random.get_state()[1].copy()
    assert torch.equal(torch.rand(3), before)
    assert np.array_equal(np.random.get_state()[1], np_state)


@pytest.mark.parametrize("name,level", ffhqx.benchmark_tasks())
def test_gradients_flow_through_every_approx(name, level, face):
    d = ffhqx.task(name, level, resolution=R, seed=0)
    x = face.clone().requires_grad_(True)
    y = d.approx(x)
    assert y.shape[-2:] == d.output_size == tuple(d.apply(face).shape[-2:])
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# -- WQI ----------------------------------------------------------------------------------------
def test_wqi_deterministic_and_seed_dependent(face):
    y1, p1 = wqi.degrade(face, torch.Generator().manual_seed(3))
    y2, p2 = wqi.degrade(face, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2) and p1 == p2
    assert any(not torch.equal(y1, wqi.degrade(face, torch.Generator().manual_seed(s))[0]) for s in range(4, 8))


def test_wqi_params_in_range_and_probabilities():
    mix, g = wqi.WQIMix(), torch.Generator().manual_seed(0)
    n = 3000
    counts = dict.fromkeys(["gaussian_blur", "motion_blur", "exposure", "flicker_noise", "gaussian_noise"], 0)
    stds, qualities = [], set()
    for _ in range(n):
        p = mix.sample(g)
        assert 30 <= p["jpeg"]["quality"] <= 96
        qualities.add(p["jpeg"]["quality"])
        for k in counts:
            counts[k] += k in p
        if "gaussian_blur" in p:
            assert p["gaussian_blur"]["kernel"] in (21, 31, 41) and 0 <= p["gaussian_blur"]["sigma"] <= 30
        if "motion_blur" in p:
            mb = p["motion_blur"]
            assert mb["kernel"] % 2 == 1 and 3 <= mb["kernel"] <= 39
            assert 0 <= mb["angle"] <= 359 and -1 <= mb["direction"] <= 1
        if "exposure" in p:
            a, b = p["exposure"]["alpha"], p["exposure"]["beta"]
            m = (1 - a) / 2
            assert 0.8 <= a <= 1.2 and min(0, 2 * m) - 1e-9 <= b <= max(0, 2 * m) + 1e-9
        if "flicker_noise" in p:
            assert 0 <= p["flicker_noise"]["strength"] <= 1
        if "gaussian_noise" in p:
            stds.append(p["gaussian_noise"]["std"])
    assert qualities == set(range(30, 97))
    expected = {"gaussian_blur": .7, "motion_blur": .5, "exposure": .2, "flicker_noise": .3, "gaussian_noise": .4}
    for k, prob in expected.items():
        assert abs(counts[k] / n - prob) < 0.03, (k, counts[k] / n)
    assert min(stds) >= 0 and abs(np.mean(stds) - 0.03) < 0.003  # Exponential, mean 0.03


def test_wqi_applies_every_step():
    x = grey(.5, 32)
    on = wqi.WQIConfig(blur_prob=1, motion_prob=1, exposure_prob=1, flicker_prob=1, noise_prob=1)
    y, p = wqi.degrade(x, torch.Generator().manual_seed(0), on)
    assert list(p) == ["gaussian_blur", "motion_blur", "exposure", "flicker_noise", "gaussian_noise", "jpeg"]
    assert y.shape == x.shape and -1 <= y.min() and y.max() <= 1 and y.std() > 0.01  # noise made it through
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
    blurred = wqi.WQIMix().apply(ramp, {"gaussian_blur": {"kernel": 21, "sigma": 5.0}, "jpeg": {"quality": 96}},
                                 torch.Generator())
    assert (blurred[..., 0] > ramp[..., 0] + 0.1).all()  # blur pulls the dark edge up


def test_wqi_jpeg_always_applied(face):
    off = wqi.WQIConfig(blur_prob=0, motion_prob=0, exposure_prob=0, flicker_prob=0, noise_prob=0)
    y, p = wqi.degrade(face, torch.Generator().manual_seed(1), off)
    assert list(p) == ["jpeg"]
    assert torch.equal(y, jpeg.decode(jpeg.encode(unit(face), p["jpeg"]["quality"])) * 2 - 1)
    assert not torch.equal(y, face)


def test_wqi_rejects_batches():
    with pytest.raises(ShapeError):
        wqi.degrade(grey(.5, 16).repeat(2, 1, 1, 1), torch.Generator())
    y, ps = wqi.degrade_batch(grey(.5, 16).repeat(2, 1, 1, 1), torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, 16, 16) and len(ps) == 2


def test_wqi_jpeg_prob_skips_jpeg_but_keeps_8_bit_and_cdds_stream(face):
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert wqi.WQIMix().sample(g()) == wqi.WQIMix(wqi.WQIConfig(jpeg_prob=1.0)).sample(g())
    never = wqi.WQIMix(wqi.WQIConfig(jpeg_prob=0.0))
    p = never.sample(g())
    assert "jpeg" not in p
    y = never.apply(face, p, g())
    levels = (y + 1) / 2 * 255
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)
    some = wqi.WQIMix(wqi.WQIConfig(jpeg_prob=0.5))
    gen = g()
    share = sum("jpeg" in some.sample(gen) for _ in range(400)) / 400
    assert 0.4 < share < 0.6


def test_round_to_step_rounds_and_its_gradients_say_what_a_larger_step_does():
    c = torch.tensor([0.2, -0.3, 0.6, -0.7, 5.2], requires_grad=True)
    step = torch.tensor(1.0, requires_grad=True)
    out = pixels_jpeg.round_to_step(c, step)
    torch.testing.assert_close(out.detach(), torch.tensor([0.0, -0.0, 1.0, -1.0, 5.0]))
    grads_c = torch.autograd.grad(out.sum(), c, retain_graph=True)[0]
    # zeroed coefficients: a small change keeps them at 0; the others pass straight through
    assert grads_c.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    per_coefficient = [float(torch.autograd.grad(out[i], step, retain_graph=True)[0]) for i in range(5)]
    assert per_coefficient[:2] == [0.0, 0.0]             # inside the zero bin: stays 0
    assert per_coefficient[2] < 0 < per_coefficient[3]   # just outside: pulled toward 0 (the jump)


def test_dither_to_step_has_roundings_error_size_and_pulls_coefficients_to_the_bin_centre():
    """An inversion's JPEG: rounding's error spread (uniform, one step wide), reproducible from its
    generator, and, unlike rounding, a loss whose gradient points from c to the centre of y's bin."""
    step = torch.tensor(4.0)
    c = torch.full((20000,), 9.0, requires_grad=True)  # y = round(9 / 4)·4 = 8: c sits 1 above the centre
    out = pixels_jpeg.dither_to_step(c, step, generator=torch.Generator().manual_seed(0))
    err = (out - c).detach()
    assert float(err.abs().max()) <= 2.0 and abs(float(err.mean())) < 0.05
    assert abs(float(err.std()) - 4 / 12 ** 0.5) < 0.02
    again = pixels_jpeg.dither_to_step(c, step, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    y = torch.full_like(c, 8.0)
    pull = torch.autograd.grad((out - y).abs().sum(), c)[0].mean()
    assert 0.45 < float(pull) < 0.55  # E|1 + 4u|′ = P(1 + 4u > 0) − P(< 0) = 0.5: descent lowers c to 8
    hard = pixels_jpeg.round_to_step(c, step)
    assert float(torch.autograd.grad((hard - y).abs().mean(), c)[0].abs().max()) == 0.0  # flat in the bin
