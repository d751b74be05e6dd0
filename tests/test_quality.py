"""The no-reference statistics that judge transfer: they must read the degradations they claim to read."""
import io
import math

import pytest
import torch
from PIL import Image, ImageFilter

from redegrade import quality
from redegrade.image import pil_to_tensor, png_roundtrip, tensor_to_pil
from redegrade.pixels.scale import psnr
from redegrade.settings import generator


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    return pil_to_tensor(Image.fromarray(skimage_data.coffee()).resize((192, 128), Image.LANCZOS))


def add_noise(x, sigma, seed=0):
    return png_roundtrip((x + 2 * sigma * torch.randn(x.shape, generator=generator(seed))).clamp(-1, 1))


def jpeg(x, q):
    buf = io.BytesIO()
    tensor_to_pil(x).save(buf, format="JPEG", quality=q)
    buf.seek(0)
    return pil_to_tensor(Image.open(buf))


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_noise_level_reads_the_added_gaussian_sigma(photo, sigma):
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator(3)) - 0.5,
                                             size=(128, 128), mode="bicubic", align_corners=False)
    assert float(quality.noise_level(add_noise(smooth, sigma))) == pytest.approx(sigma, rel=0.1)
    # on a photo its own fine texture adds to the reading, but the order is kept
    base, est = float(quality.noise_level(photo)), float(quality.noise_level(add_noise(photo, sigma)))
    assert base < 0.015 and 0.85 * sigma < est < sigma + base  # (clipping at 0 and 1 lowers it a little)


def test_sharpness_drops_with_blur_and_rises_with_noise(photo):
    blurred = pil_to_tensor(tensor_to_pil(photo).filter(ImageFilter.GaussianBlur(2)))
    s, sb, sn = (float(quality.sharpness(t)) for t in (photo, blurred, add_noise(photo, 0.08)))
    assert sb < 0.2 * s < s < sn


def test_blockiness_sees_jpeg_even_on_a_shifted_grid(photo):
    clean = float(quality.blockiness(photo))
    blocky = jpeg(photo, 15)
    assert clean < 1.15
    assert float(quality.blockiness(blocky)) > 1.5
    shifted = blocky[..., 3:, 5:]  # a crop: the 8×8 grid no longer starts at pixel 0
    assert float(quality.blockiness(shifted[..., :120, :184])) > 1.5
    assert float(quality.blockiness(shifted[..., :120, :184], any_phase=False)) < 1.2
    assert float(quality.blockiness(jpeg(photo, 90))) < float(quality.blockiness(jpeg(photo, 40)))


def test_filter_bank_stats_compare_distributions_not_realisations(photo):
    a, b, c = add_noise(photo, 0.05, 1), add_noise(photo, 0.05, 2), add_noise(photo, 0.1, 1)
    sa, sb, sc = (quality.filter_bank_stats(t) for t in (a, b, c))
    assert (sa - sb).abs().mean() < 0.1 * (sa - sc).abs().mean()
    # pixels of the two same-σ images differ as much as noise can; their statistics do not
    assert float(psnr(a, b)) < 30
    ga, gb = quality.gram_matrix(a), quality.gram_matrix(b)
    assert ga.shape == (1, 16, 16) and torch.allclose(ga, gb, rtol=0.1, atol=1e-4)


def test_fraction_moved():
    assert quality.fraction_moved(0.05, 0.01, 0.09) == pytest.approx(0.5)
    assert quality.fraction_moved(1e-3, 1e-2, 1e-4, log=True) == pytest.approx(0.5)
    assert math.isnan(quality.fraction_moved(1.0, 2.0, 2.0))
    assert quality.local_variance(torch.zeros(1, 3, 16, 16)).abs().max() == 0
