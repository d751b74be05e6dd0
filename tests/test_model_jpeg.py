"""The model's JPEG extras: the JPEG head (libjpeg tables, subsampling, dithering, learning a quality)
and the JPEG/noise signatures."""
import math

import pytest
import torch

from model_helpers import _gen, _img, _with


def _set_jpeg_multiplier(head, m: float) -> None:
    with torch.no_grad():
        head.scale.weight.zero_()
        head.code.weight.zero_()
        head.scale.bias.fill_(float(torch.tensor(m).expm1().log()) / head.GAIN)


def test_jpeg_head_at_libjpegs_table_scale_blocks_like_real_jpeg():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from redegrade.degradations import jpeg
    from redegrade.image import pil_to_tensor
    from redegrade.model.extras.jpeg_head import JpegHead
    from redegrade.quality import blockiness

    x = pil_to_tensor(Image.fromarray(skdata.chelsea()).resize((128, 128), Image.Resampling.LANCZOS))
    head = JpegHead(4, 8)
    e, e_g = torch.zeros(1, 4, 64, 64), torch.zeros(1, 8)
    for q in (20, 50):
        # libjpeg scales its quality-50 tables by 50/q below 50: quality 20 is 2.5× the steps
        _set_jpeg_multiplier(head, 50 / q)
        with torch.no_grad():
            ours = blockiness(head(x, e, e_g))
        real = blockiness(jpeg.decode(jpeg.encode((x + 1) / 2, q)) * 2 - 1)
        clean = blockiness(x)
        assert float(real - clean) > 0.2
        assert abs(float(ours - real)) < 0.25 * float(real - clean), (q, float(ours), float(real), float(clean))


def test_jpeg_head_with_subsampling_reproduces_pils_low_quality_jpeg():
    """PIL writes 4:2:0: at quality 12 rounding the DCT alone leaves most of the file's error."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from redegrade.degradations import jpeg
    from redegrade.image import pil_to_tensor
    from redegrade.pixels.scale import psnr
    from redegrade.model.extras.jpeg_head import JpegHead

    x = pil_to_tensor(Image.fromarray(skdata.astronaut()).resize((64, 64), Image.Resampling.LANCZOS))
    real = jpeg.decode(jpeg.encode((x + 1) / 2, 12)) * 2 - 1
    luma50, _ = jpeg.quantization_tables(50)
    luma12, _ = jpeg.quantization_tables(12)
    e, e_g = torch.zeros(1, 4, 32, 32), torch.zeros(1, 8)
    scores = {}
    for subsample in (False, True):
        head = JpegHead(4, 8, subsample=subsample)
        ratio = float(luma12[0, 0] / luma50[0, 0])  # the head's smooth cap: m = 10·tanh(raw / 10)
        _set_jpeg_multiplier(head, head.max_scale * math.atanh(ratio / head.max_scale))
        with torch.no_grad():
            scores[subsample] = float(psnr(head(x, e, e_g).clamp(-1, 1), real))
    assert scores[True] > 33 and scores[True] > scores[False] + 4, scores


def test_dithered_jpeg_head_pulls_an_inversion_to_the_observed_bins_where_rounding_is_flat():
    """An inversion through the JPEG head: starting from x = y + a small change that every step rounds
    away, rounding explains y exactly (no gradient at all, so the inversion stops there), while the
    dithered head's gradient, averaged over draws, points back towards y."""
    from redegrade.model.extras.jpeg_head import JpegHead

    head = JpegHead(4, 8).eval()
    _set_jpeg_multiplier(head, 2.5)  # quality ≈ 20
    e, e_g = torch.zeros(1, 4, 8, 8), torch.zeros(1, 8)
    with torch.no_grad():
        y = head(torch.rand(1, 3, 16, 16, generator=_gen(0)) * 2 - 1, e, e_g)  # a JPEG: its own bin centres
    change = 0.05 * torch.randn(1, 3, 16, 16, generator=_gen(1))
    x = (y + change).requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(head(x, e, e_g), y, atol=1e-4, rtol=0)  # the same bins as y
    rounded = torch.autograd.grad((head(x, e, e_g) - y).abs().mean(), x)[0]
    assert float(rounded.abs().max()) == 0.0
    dither = torch.Generator().manual_seed(2)
    pulls = [torch.autograd.grad((head(x, e, e_g, dither=dither) - y).abs().mean(), x)[0] for _ in range(64)]
    pull = torch.stack(pulls).mean(0)
    cosine = float((pull * change).sum() / (pull.norm() * change.norm()))
    assert cosine > 0.5  # towards y: 0.67 here (0.29 after 8 draws, 0.85 after 256); noise a full step wide: 0.41


def test_jpeg_head_starts_near_identity():
    m = _with("jpeg_head")
    x = torch.nn.functional.interpolate(_img(2, 8, 8), size=(64, 64), mode="bicubic").clamp(-1, 1)
    code = m.encode(x)
    noise = m.sample_noise(x, _gen(1))
    with torch.no_grad():
        plain = _with().synthesize(x, code, noise)  # the same weights (same seed) without the head
        start = m.synthesize(x, code, noise)
    # the fresh head (quality ≈ 95) changes little
    assert float((start - plain).abs().mean()) < 0.02


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_jpeg_head_learns_a_real_jpegs_quality_from_the_quality_loss(name):
    """The step's gradient (``round_to_step``) must find libjpeg's scale: plain straight-through drove it to 0."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from redegrade.degradations import jpeg
    from redegrade.image import pil_to_tensor
    from redegrade.model.extras.jpeg_head import JpegHead
    from redegrade.train.losses import QualityLoss

    x = pil_to_tensor(Image.fromarray(getattr(skdata, name)()).resize((128, 128), Image.Resampling.LANCZOS))
    e, e_g = torch.zeros(1, 4, 64, 64), torch.zeros(1, 8)
    for q in (20, 50):
        target = jpeg.decode(jpeg.encode((x + 1) / 2, q)) * 2 - 1
        head = JpegHead(4, 8)
        _set_jpeg_multiplier(head, 0.1)
        opt = torch.optim.Adam(head.parameters(), lr=0.02)
        for _ in range(60):
            loss = QualityLoss()(target, head(x, e, e_g))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            luma = float(head.multipliers(e, e_g, (128, 128))[0, 0].mean())
        # measured 2.38–2.43 for q=20 (libjpeg: 2.5) and 0.82–0.91 for q=50 (1.0)
        assert 0.65 * 50 / q < luma < 1.35 * 50 / q, (q, luma)


def test_jpeg_signature_sees_jpeg_on_its_grid_but_not_blur_noise_or_a_shifted_grid():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from redegrade.degradations import jpeg
    from redegrade.image import pil_to_tensor
    from redegrade.model.extras.signatures import jpeg_signature

    x = pil_to_tensor(Image.fromarray(skdata.chelsea()).resize((136, 136), Image.Resampling.LANCZOS))
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    noisy = (x + 0.06 * torch.randn(x.shape, generator=_gen(0))).clamp(-1, 1)
    q50, q20 = (jpeg.decode(jpeg.encode((x + 1) / 2, q)) * 2 - 1 for q in (50, 20))
    s = {k: float(jpeg_signature(v).sum()) for k, v in
         {"clean": x, "blur": blurred, "noise": noisy, "q50": q50, "q20": q20, "shifted": q20[..., 3:, 3:]}.items()}
    for k in ("clean", "blur", "noise", "shifted"):
        assert abs(s[k]) < 3, s
    assert s["q50"] > 5 and s["q20"] > 5, s


def test_jpeg_lattice_reads_the_quality_through_noise_and_nothing_without_jpeg():
    """The lattice feature names the libjpeg quality a crop was saved at (±2) whether or not noise came
    before the JPEG, and stays ≈0 for clean, noisy, blurred or off-grid images."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from redegrade.degradations import jpeg
    from redegrade.image import pil_to_tensor
    from redegrade.model.extras.signatures import LATTICE_QUALITIES, jpeg_lattice

    x = pil_to_tensor(Image.fromarray(skdata.chelsea()).resize((72, 72), Image.Resampling.LANCZOS))
    noisy = (x + 2 * 0.05 * torch.randn(x.shape, generator=_gen(0))).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    for q in (20, 50, 75, 90):
        for src in (x, noisy):
            f = jpeg_lattice(jpeg.decode(jpeg.encode((src + 1) / 2, q)) * 2 - 1)[0]
            assert f.sum() > 0.5 and abs(LATTICE_QUALITIES[int(f.argmax())] - q) <= 2, (q, f.sum(), f.argmax())
    shifted = (jpeg.decode(jpeg.encode((x + 1) / 2, 50)) * 2 - 1)[..., 3:, 3:]
    for name, t in {"clean": x, "noise": noisy, "blur": blurred, "shifted": shifted}.items():
        assert float(jpeg_lattice(t).sum()) < 0.1, name


def test_noise_signature_grows_with_noise_and_still_sees_it_after_jpeg():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from redegrade.degradations import jpeg
    from redegrade.image import pil_to_tensor
    from redegrade.model.extras.signatures import NOISE_SIGNATURE_DIM, noise_signature

    x = pil_to_tensor(Image.fromarray(skdata.chelsea()).resize((128, 128), Image.Resampling.LANCZOS))
    levels = [float(noise_signature((x + 2 * sd * torch.randn(x.shape, generator=_gen(0))).clamp(-1, 1)).mean())
              for sd in (0.0, 0.01, 0.03, 0.08)]
    assert all(a + 0.1 < b for a, b in zip(levels, levels[1:])), levels  # measured steps 0.19, 0.35, 0.55
    noisy = (x + 2 * 0.05 * torch.randn(x.shape, generator=_gen(1))).clamp(-1, 1)
    sig = {k: noise_signature(v).view(3, 2, 3) for k, v in            # scale, statistic, channel
           {"clean": jpeg.decode(jpeg.encode((x + 1) / 2, 75)) * 2 - 1,
            "noisy": jpeg.decode(jpeg.encode((noisy + 1) / 2, 75)) * 2 - 1}.items()}
    assert sig["clean"].numel() == NOISE_SIGNATURE_DIM
    # JPEG removes much of the finest band's noise; half scale still tells noisy from clean (+0.5 measured)
    assert (sig["noisy"][1] > sig["clean"][1] + 0.3).all(), sig


def test_a_warm_start_adds_the_signature_reads_fresh_and_they_move_jpeg_codes_most(tmp_path):
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from redegrade.degradations import jpeg
    from redegrade.image import pil_to_tensor
    from redegrade.model.io import save_state, warm_start

    src = _with()
    save_state(src, tmp_path / "src")
    dst = _with("signatures")
    assert sorted(warm_start(dst, tmp_path / "src")) == [f"extras.signatures.{k}.weight" for k in ("jpeg", "lattice", "noise")]
    x = pil_to_tensor(Image.fromarray(skdata.chelsea()).resize((64, 64), Image.Resampling.LANCZOS))
    q20 = jpeg.decode(jpeg.encode((x + 1) / 2, 20)) * 2 - 1
    with torch.no_grad():
        shift = {k: float((dst.encode(v).e_g - src.encode(v).e_g).norm() / src.encode(v).e_g.norm())
                 for k, v in (("clean", x), ("q20", q20))}
    assert shift["q20"] > 5 * shift["clean"], shift  # measured 5.7 vs 0.5
