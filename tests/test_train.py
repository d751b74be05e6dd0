"""Training the universal degradation model: losses, data, MoCo, loop, resume, CLI, photo helper."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from redegrade.image import save_image
from redegrade.train import gan, similarity
from redegrade.train import losses as L
from redegrade.train.__main__ import main as train_cli
from redegrade.train.config import TrainConfig
from redegrade.train.data import PairSampler, synthetic_images
from redegrade.train.loop import CHECKPOINT, LOG_FILE, build_model, load_checkpoint, train
from redegrade.train.trainer import Trainer


def _photo(size: int = 64) -> torch.Tensor:
    import skimage.data

    im = torch.tensor(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return torch.nn.functional.interpolate(im, size=(size, size), mode="area")


def _sampler(crop: int = 32, batch: int = 4, seed: int = 0) -> PairSampler:
    return PairSampler(synthetic_images(4, 64, seed=seed), crop=crop, batch=batch, seed=seed)


# ------------------------------------------------------------------------------------------ losses
def test_stats_loss_compares_distributions_not_pixels():
    """A different noise random state costs far less than no noise or blur; pixel L1 gets this backwards."""
    x = _photo(64)
    g = torch.Generator().manual_seed(0)
    n1, n2 = (torch.randn(x.shape, generator=g) * 0.1 for _ in range(2))
    blurred = L.gaussian_blur(x, 7, 2.0)
    stats, l1 = similarity.StatsLoss(), similarity.L1Loss()
    same_dist = stats(x + n1, x + n2)
    assert same_dist < 0.5 * stats(x + n1, x)
    assert same_dist < 0.1 * stats(x, blurred)
    assert float(stats(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert l1(x + n1, x + n2) > l1(x + n1, x)  # why pixel losses cannot train noise transfer
    gram = similarity.GramLoss()
    assert gram(x + n1, x + n2) < 0.5 * gram(x + n1, x)


def test_stats_loss_is_fixed_by_its_seed():
    x = _photo(32)
    y = x + 0.05
    assert float(similarity.StatsLoss(seed=3)(x, y)) == float(similarity.StatsLoss(seed=3)(x, y))
    assert float(similarity.StatsLoss(seed=3)(x, y)) != float(similarity.StatsLoss(seed=4)(x, y))


def test_diversity_loss_rewards_different_random_states():
    x = _photo(32)
    g = torch.Generator().manual_seed(1)
    n1, n2 = (torch.randn(x.shape, generator=g) * 0.2 for _ in range(2))
    same = L.diversity_loss(x + n1, x + n1)
    different = L.diversity_loss(x + n1, x + n2)
    assert float(same) == pytest.approx(1.0, abs=1e-5)
    assert different < same - 0.05
    # |σ12|: flipping the sign of one sample's noise does not count as diversity
    assert L.diversity_loss(n1, -n1) == pytest.approx(1.0, abs=1e-5)


def test_diversity_of_the_model_depends_on_its_noise_draws():
    torch.manual_seed(0)  # module initialisation
    m = build_model("tiny")
    x = _photo(32)
    code, _ = m.quantize(m.encode(x), "none")
    n1 = m.sample_noise(x, generator=torch.Generator().manual_seed(1))
    n2 = m.sample_noise(x, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, a2, b = m.synthesize(x, code, n1), m.synthesize(x, code, n1), m.synthesize(x, code, n2)
    assert float(L.diversity_loss(a, a2)) == pytest.approx(1.0, abs=1e-6)
    # C2 = 0.12 is large next to an untrained tiny model's noise variance, so the gap starts small
    assert L.diversity_loss(a, b) < 1.0 - 5e-5


def test_residual_distribution_loss_wants_the_noises_strength_not_its_positions():
    g = torch.Generator().manual_seed(0)
    x = _photo(32)
    noise = 0.2 * torch.randn(1, 3, 32, 32, generator=g)
    drop = (torch.rand(1, 1, 32, 32, generator=g) < 0.15).float()
    y = (x + noise) * (1 - drop) - drop  # noise and dropped (black) pixels
    moved = (x + noise.roll(5, dims=-1)) * (1 - drop.roll(3, dims=-2)) - drop.roll(3, dims=-2)
    weak = (x + 0.5 * noise) * (1 - drop) - drop
    few_drops = x + noise
    assert float(L.residual_distribution_loss(x, y, y)) == 0.0
    # another random state of the same noise costs little; half the noise or no drops cost more
    assert L.residual_distribution_loss(x, y, moved) < 0.2 * L.residual_distribution_loss(x, y, weak)
    assert L.residual_distribution_loss(x, y, moved) < 0.2 * L.residual_distribution_loss(x, y, few_drops)
    amplitude = torch.tensor(0.5, requires_grad=True)
    loss = L.residual_distribution_loss(x, y, (x + amplitude * noise) * (1 - drop) - drop)
    assert float(torch.autograd.grad(loss, amplitude)[0]) < 0  # more noise is the way down


def test_dist_term_trains_when_weighted():
    before, after = _losses_before_after(8, lambda_dist=50.0)
    assert "dist" in before and after["dist"] < before["dist"]


def test_color_loss_sees_colour_casts_not_detail():
    x = _photo(128)
    blurred = L.gaussian_blur(x, 5, 1.0)
    warm = torch.stack([x[:, 0] + 0.3, x[:, 1], x[:, 2] - 0.3], dim=1).clamp(-1, 1)
    assert L.color_loss(x, warm) > 3 * L.color_loss(x, blurred)
    assert float(L.color_loss(x, x)) == 0.0


def test_contrastive_loss_prefers_matching_keys():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 16, generator=g)
    queue = torch.randn(120, 16, generator=g)
    assert L.contrastive_loss(q, q, queue) < L.contrastive_loss(q, -q, queue)


def test_wgan_gp_critic_loss_is_finite_and_differentiable():
    c = gan.Critic(ndf=4)
    x = _photo(32)
    loss = gan.critic_loss(c, x, x, x + 0.1, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in c.parameters())


def test_unknown_perceptual_loss_is_a_config_error():
    from redegrade.errors import ConfigError

    with pytest.raises(ConfigError, match="stats"):
        similarity.perceptual("dists")


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


# ------------------------------------------------------------------------------------------ loop
class _FixedBatch:
    """A sampler that always returns the same batch (training on it must lower its losses)."""

    def __init__(self, batch):
        self.batch = batch

    def sample(self, step: int):
        return self.batch


def _losses_before_after(steps: int, **weights) -> tuple[dict[str, float], dict[str, float]]:
    torch.manual_seed(0)  # module initialisation only; training draws use explicit generators
    cfg = TrainConfig(preset="tiny", crop=32, batch=4, lr=2e-3, lr_aux=5e-2, queue=8, **weights)
    trainer = Trainer(build_model("tiny"), cfg)
    fixed = _sampler().sample(0)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            _, terms, _, _ = trainer.losses(fixed.x, fixed.y, fixed.y_pos, torch.Generator().manual_seed(123))
        return {k: float(v) for k, v in terms.items()}

    before = evaluate()
    for _ in range(steps):
        trainer.step(_FixedBatch(fixed))
    return before, evaluate()


def test_training_steps_lower_the_losses():
    """A few steps with the default weights lower similarity, both rates, the aux loss and diversity-SSIM."""
    before, after = _losses_before_after(12)
    for k in ("sim", "rate_g", "rate_l", "aux", "diver"):
        assert after[k] < before[k], (k, before[k], after[k])
    assert after["sim"] < 0.95 * before["sim"]


def test_colour_loss_falls_when_it_is_the_objective():
    # with the default weights the similarity term dominates a tiny model's first steps
    before, after = _losses_before_after(8, lambda_sim=0.0, lambda_diver=0.0, lambda_contra=0.0)
    assert after["color"] < 0.95 * before["color"]


def test_contrastive_loss_trains_the_global_encoder():
    """MoCo: e_g of a crop moves towards the key of another crop with the same degradation."""
    from redegrade.train.moco import MoCo

    torch.manual_seed(0)
    m = build_model("tiny")
    moco = MoCo(m.hden, queue_size=8)
    s = _sampler()
    b, o = s.sample(1), s.sample(2)
    negatives = moco.keys(torch.cat([o.y_pos, o.y]))
    opt = torch.optim.Adam(m.hden.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = L.contrastive_loss(m.hden(b.y), moco.keys(b.y_pos), negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_quant_warmup_keeps_codes_unquantised_for_its_steps():
    model = build_model("tiny")
    modes = []
    quantize = model.quantize
    model.quantize = lambda code, mode, **kw: (modes.append(mode), quantize(code, mode, **kw))[1]
    trainer = Trainer(model, TrainConfig(preset="tiny", crop=32, batch=2, queue=4, quant_warmup=2))
    s = _sampler(batch=2)
    for _ in range(3):
        trainer.step(s)
    assert modes == ["none", "none", "noise"]


def test_moco_queue_is_a_ring_and_momentum_moves_keys():
    from redegrade.train.moco import MoCo

    m = build_model("tiny")
    moco = MoCo(m.hden, queue_size=5)
    k = torch.nn.functional.normalize(torch.randn(3, 256, generator=torch.Generator().manual_seed(0)), dim=1)
    moco.enqueue(k)
    moco.enqueue(k)
    assert int(moco.ptr) == 1 and torch.equal(moco.queue[0], k[2]) and torch.equal(moco.queue[3], k[0])
    with torch.no_grad():
        for p in m.hden.parameters():
            p.add_(1.0)
    before = [p.clone() for p in moco.key_encoder.parameters()]
    moco.update(m.hden)
    moved = [(a - b).abs().max() for a, b in zip(moco.key_encoder.parameters(), before)]
    assert all(abs(float(d) - 0.001) < 1e-5 for d in moved)  # (1 − m)·Δ with m = 0.999 and Δ = 1


def test_resume_continues_with_identical_state(tmp_path):
    cfg = TrainConfig(preset="tiny", crop=32, batch=2, steps=4, checkpoint_every=2, queue=4)
    torch.manual_seed(0)
    straight = train(_sampler(batch=2), cfg, tmp_path / "a", progress=False)
    torch.manual_seed(0)
    half = TrainConfig(**{**cfg.to_dict(), "steps": 2})
    train(_sampler(batch=2), half, tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 2
    torch.manual_seed(99)  # resuming must not depend on fresh initialisation
    resumed = train(_sampler(batch=2), cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.step_count == 4
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(straight.moco.queue, resumed.moco.queue)
    la = [json.loads(x)["total"] for x in (tmp_path / "a" / LOG_FILE).read_text().splitlines()]
    lb = [json.loads(x)["total"] for x in (tmp_path / "b" / LOG_FILE).read_text().splitlines()]
    assert la == lb


def test_resume_with_a_different_preset_is_refused(tmp_path):
    from redegrade.errors import ConfigError

    cfg = TrainConfig(preset="tiny", crop=32, batch=2, steps=1, queue=4)
    train(_sampler(batch=2), cfg, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="preset"):
        train(_sampler(batch=2), TrainConfig(**{**cfg.to_dict(), "preset": "small"}), tmp_path, resume=True,
              progress=False)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_help_explains_a_run():
    res = CliRunner().invoke(train_cli, ["--help"])
    assert res.exit_code == 0
    for word in ("--data", "--preset", "--perceptual", "--resume", "--lambda-diver", "--gan", "checkpoint.pt"):
        assert word in res.output


def test_cli_run_writes_a_checkpoint_the_redegrader_loads(tmp_path):
    from redegrade.redegrader import Redegrader

    data = tmp_path / "photos"
    data.mkdir()
    for i, im in enumerate(synthetic_images(2, 64)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(data / f"{i}.png")
    out = tmp_path / "run"
    res = CliRunner().invoke(train_cli, ["--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2",
                                         "--batch", "2", "--crop", "32", "--no-progress", "--device", "cpu",
                                         "--gan"])
    assert res.exit_code == 0, res.output
    state = torch.load(out / CHECKPOINT, weights_only=True)
    assert state["step"] == 2 and state["critic"] and state["config"]["widths"] == [4, 8, 8]
    assert len((out / LOG_FILE).read_text().splitlines()) == 2
    for path in (out / CHECKPOINT, out / "redegrader"):
        r = Redegrader.from_pretrained(path)
        x = _photo(32)
        r.reset(x, generator=torch.Generator().manual_seed(0))
        assert r(x).shape == x.shape


def test_cli_reports_missing_images_in_one_line(tmp_path):
    res = CliRunner().invoke(train_cli, ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "1"])
    assert res.exit_code == 2
    assert "no .jpg/.jpeg/.png images" in res.output


def test_photos_helper_splits_heldout_deterministically(tmp_path):
    from redegrade.train.photos import fetch_photos

    m1 = fetch_photos(tmp_path / "a", sources=("skimage",), heldout=1, seed=0)
    m2 = fetch_photos(tmp_path / "b", sources=("skimage",), heldout=1, seed=0)
    assert [i["split"] for i in m1["images"]] == [i["split"] for i in m2["images"]]
    held = list((tmp_path / "a" / "heldout").iterdir())
    train_files = list((tmp_path / "a" / "train").iterdir())
    assert len(held) == 1 and len(train_files) >= 2
    assert held[0].name not in {f.name for f in train_files}


# ------------------------------------------------------------------------------ JPEG grid and clean samples
def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from redegrade.pixels.scale import from_unit, to_unit
    from redegrade.degradations.jpeg import decode, encode

    return from_unit(decode(encode(to_unit(x), quality)))


def test_grid_loss_sees_jpeg_blocking_but_not_noise_or_blur():
    x = _photo_crops()
    g = torch.Generator().manual_seed(0)
    grid = L.GridLoss()
    blocky = {q: float(grid(_jpeg(x, q), x)) for q in (20, 50, 90)}
    assert blocky[20] > blocky[50] > blocky[90]
    assert float(grid(x + 0.1 * torch.randn(x.shape, generator=g), x)) < 0.25 * blocky[50]
    assert float(grid(L.gaussian_blur(x, 7, 2.0), x)) < 0.5 * blocky[50]
    # the grid is anchored at (0, 0): the same blocks shifted by 4 pixels no longer match
    y = _jpeg(x, 20)
    assert float(grid(y, y)) == 0.0
    assert float(grid(y.roll(4, dims=-1), y)) > 0.5 * blocky[20]
    with pytest.raises(Exception, match="multiples of 8"):
        grid(x[..., :60], x[..., :60])


def _photo_crops() -> torch.Tensor:
    import skimage.data

    # 64² crops of three photos at their own resolution (a downscaled photo is too busy for 8×8 blocks)
    return torch.cat([torch.tensor(getattr(skimage.data, n)()[100:164, 200:264]).permute(2, 0, 1)[None]
                      for n in ("astronaut", "coffee", "chelsea")]).float() / 127.5 - 1


def test_quality_loss_asks_for_noise_at_zero_amplitude_and_names_each_degradation():
    x = _photo_crops()
    g = torch.Generator().manual_seed(0)
    q = L.QualityLoss()
    assert float(q(x, x)) == 0.0
    noisy = x + 2 * 0.05 * torch.randn(x.shape, generator=g)
    # the output x + a·z of a model that does not synthesise noise yet: the loss must pull a up from 0
    z = torch.randn(x.shape, generator=g)
    a = torch.tensor(1e-3, requires_grad=True)
    q(noisy, x + a * z).backward()
    assert float(a.grad) < 0
    # each degradation shows up mainly in its own term
    terms = {name: q.terms(y, x) for name, y in
             (("noise", noisy), ("blur", L.gaussian_blur(x, 9, 2.0)), ("jpeg", _jpeg(x, 20)))}
    assert float(terms["noise"]["noise"]) > 1 and float(terms["noise"]["blockiness"]) < 0.01
    assert float(terms["blur"]["sharpness"]) > 1 and float(terms["blur"]["blockiness"]) < 0.01
    assert float(terms["jpeg"]["blockiness"]) > 10 * float(terms["noise"]["blockiness"])


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


def test_with_pairs_each_sample_is_synthesised_from_its_partners_code():
    torch.manual_seed(0)
    trainer = Trainer(build_model("tiny"), TrainConfig(preset="tiny", lambda_contra=0.0, lambda_diver=0.0))
    b = _sampler(crop=32, batch=4).sample(0)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    own = trainer.losses(b.x, b.y, b.y_pos, g())[2]
    same = trainer.losses(b.x, b.y, b.y_pos, g(), torch.arange(4))[2]
    swapped = trainer.losses(b.x, b.y, b.y_pos, g(), torch.tensor([1, 0, 3, 2]))[2]
    torch.testing.assert_close(own, same)
    assert (own - swapped).abs().max() > 1e-4


def test_sampler_records_each_samples_jpeg_quality():
    s = PairSampler(synthetic_images(4, 64, seed=0), crop=32, batch=16, seed=0, clean_prob=0.5, pairs=True)
    b = s.sample(0)
    q = b.jpeg_quality
    assert q.shape == (16,) and torch.equal(q, q[b.partner])  # partners are degraded alike
    assert torch.equal(q == 0, b.clean)  # the default WQI mix always ends with JPEG (CDD)
    assert ((q[~b.clean] >= 30) & (q[~b.clean] <= 96)).all()


def test_jpeg_step_loss_tells_the_code_the_known_quality():
    from redegrade.model import ModelConfig, UniversalDegradationModel

    torch.testing.assert_close(L.libjpeg_scale(torch.tensor([20, 50, 90])), torch.tensor([2.5, 1.0, 0.2]))
    steps = torch.tensor([2.5, 0.02]).view(2, 1, 1, 1).expand(2, 2, 3, 3)
    assert float(L.jpeg_step_loss(steps, torch.tensor([20, 0]))) == pytest.approx(0.0, abs=1e-10)
    torch.manual_seed(0)
    cfg = ModelConfig(**{**ModelConfig.preset("tiny").to_dict(), "extras": ("jpeg_head", "signatures")})
    trainer = Trainer(UniversalDegradationModel(cfg), TrainConfig(preset="tiny", lambda_contra=0.0, lambda_diver=0.0))
    b = _sampler(crop=32, batch=4).sample(0)
    quality = torch.tensor([20, 0, 50, 90])
    terms = trainer.losses(b.x, b.y, b.y_pos, torch.Generator().manual_seed(0), None, None, quality)[1]
    terms["jpeg"].backward()
    m = trainer.model
    for p in (m.extras.jpeg_head.scale.weight, m.extras.signatures.jpeg.weight, m.hden.head[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_jpeg_steps_from_label_keeps_the_image_losses_off_the_steps_but_not_the_label():
    from redegrade.model import ModelConfig, UniversalDegradationModel

    cfg = ModelConfig(**{**ModelConfig.preset("tiny").to_dict(), "extras": ("jpeg_head", "signatures")})
    b = _sampler(crop=32, batch=4).sample(0)
    quality = torch.tensor([20, 0, 50, 90])
    grads = {}
    for from_label in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(UniversalDegradationModel(cfg), TrainConfig(
            preset="tiny", lambda_contra=0.0, lambda_diver=0.0, jpeg_steps_from_label=from_label))
        terms = trainer.losses(b.x, b.y, b.y_pos, torch.Generator().manual_seed(0), None, None, quality)[1]
        head = trainer.model.extras.jpeg_head
        (terms["sim"] + terms["grid"]).backward(retain_graph=True)
        image = head.scale.weight.grad
        head.zero_grad(set_to_none=True)
        terms["jpeg"].backward()
        grads[from_label] = (image, head.scale.weight.grad, trainer.model.extras.signatures.lattice.weight.grad)
    assert grads[False][0] is not None and grads[False][0].abs().sum() > 0
    assert grads[True][0] is None or grads[True][0].abs().sum() == 0
    for g in grads[True][1:]:
        assert g is not None and g.abs().sum() > 0


def test_sampler_records_each_samples_noise_std():
    s = PairSampler(synthetic_images(4, 64, seed=0), crop=32, batch=32, seed=0, clean_prob=0.25, pairs=True)
    b = s.sample(0)
    std = b.noise_std
    assert std.shape == (32,) and torch.equal(std, std[b.partner])
    assert (std[b.clean] == 0).all() and (std >= 0).all()
    assert 0 < int((std > 0).sum()) < 32  # the WQI mix adds noise to some samples (CDD: p = 0.4)


def test_noise_level_loss_tells_the_noise_head_the_known_noise_and_leaves_the_output_alone():
    from redegrade.model import ModelConfig, UniversalDegradationModel

    sigma = torch.tensor([0.06, 0.0]).view(2, 1, 1, 1).expand(2, 3, 4, 4)
    assert float(L.noise_level_loss(sigma, torch.tensor([0.03, 0.0]))) == pytest.approx(0.0, abs=1e-10)
    assert float(L.noise_level_loss(sigma, torch.tensor([0.06, 0.0]))) > 0.1
    # without noise the level is pulled towards 0, not held at a floor
    faint = [float(L.noise_level_loss(torch.full((1, 3, 4, 4), s), torch.zeros(1))) for s in (0.0044, 0.001)]
    assert faint[0] > 0.2 and faint[1] < 0.05, faint
    torch.manual_seed(0)
    cfg = ModelConfig(**{**ModelConfig.preset("tiny").to_dict(), "extras": ("noise_head",)})
    model = UniversalDegradationModel(cfg)
    b = _sampler(crop=32, batch=4).sample(0)
    std = torch.tensor([0.03, 0.0, 0.1, 0.0])
    outs = {}
    for lam in (0.0, 1.0):
        trainer = Trainer(model, TrainConfig(preset="tiny", lambda_contra=0.0, lambda_diver=0.0, lambda_noise=lam))
        _, terms, outs[lam], _ = trainer.losses(b.x, b.y, b.y_pos, torch.Generator().manual_seed(0), None, None,
                                                None, std)
    torch.testing.assert_close(outs[0.0], outs[1.0])  # reading σ does not change the synthesis
    model.zero_grad()
    terms["noise"].backward()
    head = model.extras.noise_head
    for p in (head.code.weight, head.level[2].bias, head.level[2].weight, head.mix.weight,
              model.hden.head[2].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_blur_max_sigma_reaches_the_wqi_mix(tmp_path):
    from redegrade.train.loop import sampler_for

    for i, im in enumerate(synthetic_images(2, 64, seed=0)):
        save_image(im.float()[None] / 127.5 - 1, tmp_path / f"{i}.png")
    s = sampler_for(tmp_path, TrainConfig(preset="tiny", crop=32, batch=4, blur_max_sigma=2.5))
    draws = [s.degrade.sample(torch.Generator().manual_seed(k)) for k in range(200)]
    sigmas = [d["gaussian_blur"]["sigma"] for d in draws if "gaussian_blur" in d]
    assert len(sigmas) > 50 and max(sigmas) < 2.5 and max(sigmas) > 2.0


def test_average_cli_writes_the_mean_of_the_checkpoints_weights(tmp_path):
    from redegrade.model import ModelConfig, UniversalDegradationModel, load_state
    from redegrade.model.io import save_state
    from redegrade.train.average import average_models
    from redegrade.train.average import main as average_cli

    torch.manual_seed(0)
    a, b = (UniversalDegradationModel(ModelConfig.preset("tiny")) for _ in range(2))
    save_state(a, tmp_path / "a")
    save_state(b, tmp_path / "b")
    r = CliRunner().invoke(average_cli, [str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "avg")])
    assert r.exit_code == 0, r.output
    avg = load_state(tmp_path / "avg")
    w = "synthesis.conv_first.0.weight"
    torch.testing.assert_close(avg.state_dict()[w], (a.state_dict()[w] + b.state_dict()[w]) / 2)
    with pytest.raises(Exception, match="different configs"):
        average_models([a, UniversalDegradationModel(ModelConfig.preset("small"))])


def test_train_only_updates_just_the_named_parts():
    torch.manual_seed(0)
    model = build_model("tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, TrainConfig(preset="tiny", crop=32, batch=4, train_only="synthesis.conv_last,hden.head"))
    trainer.step(_sampler(crop=32, batch=4))
    # the entropy quantiles too: their medians are the codes' rounding grid
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("synthesis.conv_last", "hden.head")) for n in changed), changed
    with pytest.raises(Exception, match="matches no parameter"):
        Trainer(build_model("tiny"), TrainConfig(preset="tiny", train_only="nothing.here"))


def test_a_graft_with_freeze_bn_keeps_the_inits_batchnorm_statistics(tmp_path):
    """Re-estimating the frozen encoders' statistics changes the codes a graft must keep; a whole-model
    fine-tune with --freeze-bn still re-estimates them."""
    from redegrade.model.io import save_state

    torch.manual_seed(0)
    init = build_model("tiny")
    save_state(init, tmp_path / "init")
    stats = {k: v.clone() for k, v in init.state_dict().items() if "running" in k}
    for train_only, kept in (("synthesis.conv_last", True), ("", False)):
        cfg = TrainConfig(preset="tiny", crop=32, batch=2, steps=1, freeze_bn=True, init=str(tmp_path / "init"),
                          train_only=train_only, lambda_contra=0.0, checkpoint_every=1)
        model = train(_sampler(batch=2), cfg, tmp_path / f"run{kept}", progress=False).model
        same = all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
        assert same == kept, train_only


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
        assert torch.equal(mix.apply(x, params), y)  # the parameters say everything: pairs can re-apply them
    assert {"U", "N", "A", "P"} <= seen and any(len(t) > 1 for t in seen)
