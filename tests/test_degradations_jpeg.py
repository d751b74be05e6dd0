"""JPEG: FFHQ-X's JPEG (A) and its differentiable approximation, rounding and dithering to a step,
and the WQI training mix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from redegrade.pixels import jpeg as pixels_jpeg
from PIL import Image

from redegrade.degradations import ffhqx, jpeg, wqi
from redegrade.errors import ShapeError

from degradation_helpers import R, grey, unit


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


def test_dither_to_step_pulls_coefficients_to_the_bin_centre_with_noise_half_a_step_wide():
    """An inversion's JPEG: zero-mean noise half a step wide, reproducible from its generator, and,
    unlike rounding, a loss whose gradient points from c to the centre of y's bin."""
    step = torch.tensor(4.0)
    c = torch.full((20000,), 8.5, requires_grad=True)  # y = round(8.5 / 4)·4 = 8: c sits ½ above the centre
    out = pixels_jpeg.dither_to_step(c, step, generator=torch.Generator().manual_seed(0))
    err = (out - c).detach()
    assert float(err.abs().max()) <= 1.0 and abs(float(err.mean())) < 0.03
    assert abs(float(err.std()) - 2 / 12 ** 0.5) < 0.01  # a full step's noise would have std 4/√12
    again = pixels_jpeg.dither_to_step(c, step, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    y = torch.full_like(c, 8.0)
    pull = torch.autograd.grad((out - y).abs().sum(), c)[0].mean()
    assert 0.45 < float(pull) < 0.55  # E|½ + 2u|′ = P(½ + 2u > 0) − P(< 0) = ½: descent lowers c to 8
    hard = pixels_jpeg.round_to_step(c, step)
    assert float(torch.autograd.grad((hard - y).abs().mean(), c)[0].abs().max()) == 0.0  # flat in the bin


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
