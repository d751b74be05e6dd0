"""Training losses: similarity, diversity, residual distribution, colour, MoCo, WGAN-GP, grid,
quality, and the JPEG-step and noise-level supervision of the extras."""
from __future__ import annotations

import pytest
import torch

from redegrade.train import gan, similarity
from redegrade.train import losses as L
from redegrade.train.config import TrainConfig
from redegrade.train.loop import build_model
from redegrade.train.trainer import Trainer

from train_helpers import _losses_before_after, _photo, _sampler


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


def test_residual_distribution_loss_leaves_out_the_images_weighted_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([_photo(32), _photo(32).flip(-1)])
    y = x + 0.2 * torch.randn(x.shape, generator=g)
    y_hat = x.clone().requires_grad_(True)
    full = L.residual_distribution_loss(x, y, y_hat)
    first = L.residual_distribution_loss(x, y, y_hat, torch.tensor([True, False]))
    assert float(first) == pytest.approx(float(L.residual_distribution_loss(x[:1], y[:1], y_hat[:1])) / 2)
    assert float(first) < float(full)
    grad = torch.autograd.grad(first, y_hat)[0]
    assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0


def test_dist_term_trains_when_weighted():
    before, after = _losses_before_after(8, lambda_dist=50.0)
    assert "dist" in before and after["dist"] < before["dist"]


def test_dist_term_sees_only_the_samples_marked_noisy():
    torch.manual_seed(0)
    trainer = Trainer(build_model("tiny"), TrainConfig(preset="tiny", crop=32, batch=4, queue=8, lambda_dist=1.0))
    b = _sampler().sample(0)

    def dist(noisy):
        with torch.no_grad():
            g = torch.Generator().manual_seed(5)
            return float(trainer.losses(b.x, b.y, b.y_pos, g, noisy=noisy)[1]["dist"])

    assert dist(None) > 0 and dist(torch.zeros(4, dtype=torch.bool)) == 0.0
    assert 0 < dist(torch.tensor([True, False, False, False])) < dist(None)


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
