"""Training data: the pair sampler, folder loading, the WQI and FFHQ-X mixes, the photos helper."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from redegrade.image import save_image
from redegrade.train.config import TrainConfig
from redegrade.train.data import PairSampler, synthetic_images
from redegrade.train.loop import build_model

from train_helpers import _sampler


# ------------------------------------------------------------------------------------------ data
def test_sampler_is_a_pure_function_of_seed_and_step():
    s = _sampler()
    a, b, c = s.sample(3), s.sample(3), s.sample(4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.y_pos, b.y_pos)
    assert not torch.equal(a.x, c.x)
    assert a.x.shape == a.y.shape == a.y_pos.shape == (4, 3, 32, 32)
    assert a.x.min() >= -1 and a.x.max() <= 1 and a.y.min() >= -1 and a.y.max() <= 1
    assert not torch.equal(a.x, a.y)  # the WQI mix always applies JPEG at least


def test_folder_loading_downscales_and_skips_small_images(tmp_path):
    Image.new("RGB", (200, 100), (10, 200, 30)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (80, 90), (200, 10, 30)).save(tmp_path / "sub" / "b.jpg")
    Image.new("RGB", (20, 20)).save(tmp_path / "tiny.png")
    s = PairSampler.from_folder(tmp_path, crop=32, batch=2, max_side=48)
    assert sorted(tuple(im.shape) for im in s.images) == [(3, 48, 96), (3, 54, 48)]
    assert all(im.dtype == torch.uint8 for im in s.images)


def test_sampler_for_builds_the_wqi_mix_the_config_records(tmp_path):
    from redegrade.train.loop import sampler_for

    Image.new("RGB", (96, 96), (10, 200, 30)).save(tmp_path / "a.png")
    cfg = TrainConfig(crop=32, batch=4, jpeg_min=10, jpeg_prob=0.5, noise_prob=0.9, noise_std=0.05, clean_prob=0.2)
    s = sampler_for(tmp_path, cfg)
    wqi = s.degrade.config
    assert (wqi.jpeg_min, wqi.jpeg_prob, wqi.noise_prob, wqi.noise_mean_std) == (10, 0.5, 0.9, 0.05)
    assert (s.crop, s.batch, s.clean_prob, s.pairs) == (32, 4, 0.2, True)


def test_recalibrated_frozen_batch_norm_gives_training_the_codes_inference_gets():
    from redegrade.train.batchnorm import freeze_bn, recalibrate_bn

    s = PairSampler(synthetic_images(4, 64, seed=0), crop=32, batch=4, seed=0)
    m = build_model("tiny")
    norms = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    first = norms[0]
    first.running_mean.fill_(5.0)
    first.momentum = 0.3
    seen = []
    hook = first.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].mean(dim=(0, 2, 3))))
    assert recalibrate_bn(m, s, batches=3) == len(norms)
    hook.remove()
    # a plain average over the batches (HDEN's first BN runs once per batch), not the momentum-weighted tail
    torch.testing.assert_close(first.running_mean, torch.stack(seen).mean(dim=0))
    assert first.momentum == 0.3  # each layer's own momentum comes back
    m.train()
    freeze_bn(m)
    before = first.running_mean.clone()
    y = s.sample(5).y
    with torch.no_grad():
        code_train = m.encode(y)
        m.eval()
        code_eval = m.encode(y)
    assert torch.equal(first.running_mean, before)
    torch.testing.assert_close(code_train.e_g, code_eval.e_g)
    torch.testing.assert_close(code_train.e_l, code_eval.e_l)


def test_sampler_crops_on_the_jpeg_grid_and_can_leave_samples_clean():
    def phase_marker(region, g):
        # a degradation that writes each pixel's position mod 8 into the red channel
        h, w = region.shape[-2:]
        rows = torch.arange(h).view(h, 1) % 8
        cols = torch.arange(w).view(1, w) % 8
        y = region.clone()
        y[:, 0] = (rows * 8 + cols).float() / 64
        return y, {}

    s = PairSampler(synthetic_images(4, 64, seed=0), crop=16, batch=8, seed=0, degrade=phase_marker)
    b = s.sample(0)
    expected = ((torch.arange(16).view(16, 1) % 8) * 8 + torch.arange(16).view(1, 16) % 8).float() / 64
    for y in (b.y, b.y_pos):
        assert torch.equal(y[:, 0], expected.expand(8, 16, 16))
    clean = PairSampler(synthetic_images(4, 64, seed=0), crop=16, batch=8, seed=0, clean_prob=1.0).sample(0)
    assert torch.equal(clean.x, clean.y)
    some = PairSampler(synthetic_images(4, 64, seed=0), crop=16, batch=32, seed=0, clean_prob=0.5).sample(0)
    same = [(some.x[i] == some.y[i]).all().item() for i in range(32)]
    assert 4 < sum(same) < 28


def _shift(region, g):
    d = float(torch.rand((), generator=g)) - 0.5
    return region + d, {"d": d}


def test_pairs_are_two_photos_degraded_alike_and_each_others_positive():
    imgs = synthetic_images(4, 64, seed=0)
    s = PairSampler(imgs, crop=16, batch=6, seed=0, degrade=_shift, apply=lambda r, p, g: r + p["d"], pairs=True)
    b = s.sample(0)
    assert b.partner.tolist() == [1, 0, 3, 2, 5, 4]
    assert torch.equal(b.y_pos, b.y[b.partner])
    shifts = (b.y - b.x).flatten(1).median(dim=1).values  # the median ignores pixels clipped at ±1
    for k in range(0, 6, 2):
        assert shifts[k] == pytest.approx(float(shifts[k + 1]), abs=1e-6)
        assert not torch.equal(b.x[k], b.x[k + 1])
    assert len({round(float(v), 5) for v in shifts}) == 3
    with pytest.raises(Exception, match="even batch"):
        PairSampler(imgs, crop=16, batch=5, seed=0, pairs=True)
    with pytest.raises(Exception, match="apply"):
        PairSampler(imgs, crop=16, batch=4, seed=0, degrade=_shift, pairs=True)


def test_sampler_records_each_samples_jpeg_quality():
    s = PairSampler(synthetic_images(4, 64, seed=0), crop=32, batch=16, seed=0, clean_prob=0.5, pairs=True)
    b = s.sample(0)
    q = b.jpeg_quality
    assert q.shape == (16,) and torch.equal(q, q[b.partner])  # partners are degraded alike
    assert torch.equal(q == 0, b.clean)  # the default WQI mix always ends with JPEG (CDD)
    assert ((q[~b.clean] >= 30) & (q[~b.clean] <= 96)).all()


def test_sampler_records_each_samples_noise_std():
    s = PairSampler(synthetic_images(4, 64, seed=0), crop=32, batch=32, seed=0, clean_prob=0.25, pairs=True)
    b = s.sample(0)
    std = b.noise_std
    assert std.shape == (32,) and torch.equal(std, std[b.partner])
    assert (std[b.clean] == 0).all() and (std >= 0).all()
    assert 0 < int((std > 0).sum()) < 32  # the WQI mix adds noise to some samples (CDD: p = 0.4)


def test_sampler_marks_wqi_samples_noisy_when_a_noise_step_ran():
    from redegrade.degradations.wqi import WQIConfig

    def noisy(**probs):
        cfg = WQIConfig(blur_prob=0, motion_prob=0, exposure_prob=0, **probs)
        return PairSampler(synthetic_images(2, 64, seed=0), crop=32, batch=4, seed=0, wqi=cfg).sample(0).noisy

    assert noisy(flicker_prob=1, noise_prob=0).all() and noisy(flicker_prob=0, noise_prob=1).all()
    assert not noisy(flicker_prob=0, noise_prob=0).any()


def test_blur_max_sigma_reaches_the_wqi_mix(tmp_path):
    from redegrade.train.loop import sampler_for

    for i, im in enumerate(synthetic_images(2, 64, seed=0)):
        save_image(im.float()[None] / 127.5 - 1, tmp_path / f"{i}.png")
    s = sampler_for(tmp_path, TrainConfig(preset="tiny", crop=32, batch=4, blur_max_sigma=2.5))
    draws = [s.degrade.sample(torch.Generator().manual_seed(k)) for k in range(200)]
    sigmas = [d["gaussian_blur"]["sigma"] for d in draws if "gaussian_blur" in d]
    assert len(sigmas) > 50 and max(sigmas) < 2.5 and max(sigmas) > 2.0


def test_ffhqx_mix_draws_rsg_tasks_keeps_the_size_and_labels_jpeg():
    from redegrade.degradations.ffhqx import FFHQXMix, benchmark_tasks

    mix = FFHQXMix()
    assert len(mix.units) == 31 == len(benchmark_tasks())
    x = torch.rand(1, 3, 48, 48) * 2 - 1
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        y, params = mix(x, g)
        seen.add(params["task"])
        assert y.shape == x.shape and y.abs().max() <= 1
        assert ("jpeg" in params) == ("A" in params["task"])
        assert params.get("noisy", False) == ("N" in params["task"] and "U" not in params["task"])
        assert torch.equal(mix.apply(x, params), y)  # the parameters say everything: pairs can re-apply them
    assert {"U", "N", "A", "P"} <= seen and any(len(t) > 1 for t in seen)


def test_sampler_marks_the_samples_whose_task_adds_noise():
    from redegrade.degradations.ffhqx import FFHQXMix

    s = PairSampler(synthetic_images(2, 64, seed=0), crop=32, batch=8, seed=0, degrade=FFHQXMix(), clean_prob=0.2)
    batches = [s.sample(k) for k in range(6)]
    noisy = torch.cat([b.noisy for b in batches])
    clean = torch.cat([b.clean for b in batches])
    assert noisy.dtype == torch.bool and noisy.any() and (~noisy & ~clean).any()
    assert not (noisy & clean).any()


def test_photos_helper_splits_heldout_deterministically(tmp_path):
    from redegrade.train.photos import fetch_photos

    m1 = fetch_photos(tmp_path / "a", sources=("skimage",), heldout=1, seed=0)
    m2 = fetch_photos(tmp_path / "b", sources=("skimage",), heldout=1, seed=0)
    assert [i["split"] for i in m1["images"]] == [i["split"] for i in m2["images"]]
    held = list((tmp_path / "a" / "heldout").iterdir())
    train_files = list((tmp_path / "a" / "train").iterdir())
    assert len(held) == 1 and len(train_files) >= 2
    assert held[0].name not in {f.name for f in train_files}
