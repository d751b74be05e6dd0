"""Model options outside CDD: the noise head, extras names and legacy configs, grid phase, warm starts."""
import dataclasses

import pytest
import torch

from redegrade.errors import CheckpointError, ConfigError
from redegrade.model import DegradationCode, ModelConfig, extras

from model_helpers import _fit_quality, _gen, _img, _with


def test_noise_head_adds_visible_noise_from_three_extra_maps_and_learns_its_level():
    m = _with("noise_head")
    base = _with()
    assert m.num_noise == base.num_noise + 3
    assert m.noise_shapes(32, 16)[-3:] == [(32, 16)] * 3
    x = _img(1, 32, 32)
    code = m.encode(_img(1, 32, 32, seed=5)).detach()
    noise = m.sample_noise(x, _gen(1))
    other = noise[:-3] + m.sample_noise(x, _gen(2))[-3:]
    with torch.no_grad():
        diff = m.synthesize(x, code, noise) - m.synthesize(x, code, other)
    # σ starts at 0.02 rather than 0, where a statistics loss would give it no gradient
    assert 0.01 < float(diff.std()) / 2 ** 0.5 < 0.04
    m.synthesize(x, code, noise).square().mean().backward()
    head = m.extras.noise_head
    mlp = head.level
    # the level's last layer (zero at init, so the hidden layer waits for it) and the colour kernel learn
    for p in (mlp[2].weight, mlp[2].bias, head.mix.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    m.zero_grad(set_to_none=True)


def test_noise_head_output_std_is_the_std_of_the_noise_it_adds():
    """``output_std`` counts the colour kernel's gain: with a trained kernel (gains ≠ 1) σ alone is not the
    noise the head draws, and the noise loss must see what it draws."""
    from redegrade.model.extras.noise_head import NoiseHead

    torch.manual_seed(0)
    head = NoiseHead(4, 2, dim_g=5)
    with torch.no_grad():
        head.mix.weight.mul_(torch.tensor([0.5, 0.8, 1.3]).view(3, 1, 1, 1))
        head.mix.weight[:, :, 0, 1] += 0.2
        head.level[2].weight.normal_(std=0.3)  # σ varies over the image
    feat, e, e_g = torch.randn(2, 4, 64, 64), torch.randn(2, 2, 32, 32), torch.randn(2, 5)
    with torch.no_grad():
        sigma = head.sigma_map(feat, e, e_g)
        draws = torch.stack([head(feat, e, torch.randn(2, 3, 64, 64), e_g) for _ in range(200)])
        std = head.output_std(feat, e, e_g)
    torch.testing.assert_close(draws.std(dim=0).mean(dim=(0, 2, 3)), std.mean(dim=(0, 2, 3)), rtol=0.03, atol=0)
    assert not torch.allclose(std.mean(dim=(0, 2, 3)), sigma.mean(dim=(0, 2, 3)), rtol=0.1)


def test_positive_noise_head_learns_a_noisy_targets_level_from_the_quality_loss():
    from redegrade.quality import noise_level

    m = _with("noise_head").train()
    head = m.extras.noise_head
    x = torch.nn.functional.interpolate(_img(2, 4, 4), size=(32, 32), mode="bilinear")  # smooth
    target = (x + 2 * 0.08 * torch.randn(x.shape, generator=_gen(3))).clamp(-1, 1)
    code = m.encode(x).detach()
    out = _fit_quality(m, x, code, target, head.parameters(), lr=0.05, steps=40)
    before, after, want = (float(noise_level(t).mean()) for t in (x, out, target))
    assert after - before > 0.5 * (want - before), (before, after, want)


def test_noise_head_reads_the_global_code_and_learns_one_level_per_code():
    """The head's level reads e_g directly: training only that read, two codes learn
    two noise levels (a weak and a strong one) on the same image."""
    from redegrade.quality import noise_level

    m = _with("noise_head").train()
    with torch.no_grad():  # the untrained U-Net adds noise of its own; leave ŷ = x + head's noise
        for p in m.synthesis.conv_last.parameters():
            p.zero_()
    head = m.extras.noise_head
    x = torch.nn.functional.interpolate(_img(1, 4, 4), size=(32, 32), mode="bilinear").expand(2, -1, -1, -1)
    code = m.encode(_img(2, 32, 32, seed=4)).detach()
    code = DegradationCode(torch.randn(code.e_g.shape, generator=_gen(5)), code.e_l)  # two distinct codes
    sigmas = torch.tensor([0.02, 0.1]).view(2, 1, 1, 1)
    target = (x + 2 * sigmas * torch.randn(x.shape, generator=_gen(3))).clamp(-1, 1)
    # lr × CODE_GAIN × Σ|e_g| ≈ 200: ≈1 per step
    out = _fit_quality(m, x, code, target, head.code.parameters(), lr=3e-4, steps=60)
    got, want = noise_level(out), noise_level(target)
    assert torch.allclose(got, want, rtol=0.3), (got, want)


def test_extras_are_known_names_in_one_order_and_a_modifier_needs_its_extra():
    with pytest.raises(ConfigError, match="unknown model extra"):
        ModelConfig(extras=("bogus",))
    with pytest.raises(ConfigError, match="jpeg_420 needs jpeg_head"):
        ModelConfig(extras=("jpeg_420",))
    assert ModelConfig(extras=("jpeg_head", "grid_phase")) == ModelConfig(extras=("grid_phase", "jpeg_head"))


def test_configs_with_the_old_extra_flags_load_and_combinations_never_built_say_why_not():
    from redegrade.model.extras import legacy

    old = {**ModelConfig.preset("tiny").to_dict(), "global_residual": True, "noise_head": True, "noise_code": True,
           "jpeg_head": True, "jpeg_subsampling": True, "jpeg_signature": True, "jpeg_lattice": True,
           "noise_signature": True, "grid_phase": True}
    del old["extras"]
    cfg = ModelConfig.from_dict(old)
    assert cfg == dataclasses.replace(ModelConfig.preset("tiny"), extras=tuple(n for n in extras.NAMES if n not in ("lost_pixels", "resized")))
    with pytest.raises(ConfigError, match="noise_code"):
        ModelConfig.from_dict({**old, "noise_code": False})
    with pytest.raises(ConfigError, match="all on or all off"):
        ModelConfig.from_dict({**old, "jpeg_lattice": False})
    renamed = legacy.rename_keys({"hden.jpeg.weight": 1, "synthesis.noise_head.mix.weight": 2, "hden.head.0.bias": 3})
    assert renamed == {"extras.signatures.jpeg.weight": 1, "extras.noise_head.mix.weight": 2, "hden.head.0.bias": 3}


def test_configs_that_name_the_noise_level_still_load_and_linear_ones_say_why_not():
    cfg = ModelConfig.preset("tiny").to_dict()
    assert ModelConfig.from_dict({**cfg, "noise_sigma": "softplus"}) == ModelConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match="no longer supported"):
        ModelConfig.from_dict({**cfg, "noise_sigma": "linear"})


def test_grid_phase_lets_the_synthesis_tell_block_positions_apart():
    plain, phased = _with(), _with("grid_phase")
    x = torch.zeros(1, 3, 32, 32)  # a flat image: only the position can make rows differ
    with torch.no_grad():
        outs = {}
        for name, m in (("plain", plain), ("phased", phased)):
            code = m.encode(x)
            outs[name] = m.synthesize(x, code, m.sample_noise(x, _gen(0)))
    # away from the borders a flat input gives a flat output unless the position is known
    inner = lambda t: t[..., 8:24, 8:24]  # noqa: E731
    assert float(inner(outs["phased"]).std(dim=(-1, -2)).max()) > 10 * float(inner(outs["plain"]).std(dim=(-1, -2)).max())


def test_warm_start_copies_matching_weights_and_widens_inputs_with_zeros(tmp_path):
    from redegrade.model.io import save_state, warm_start

    src = _with()
    save_state(src, tmp_path / "src")
    dst = _with("grid_phase", "noise_head")
    fresh = warm_start(dst, tmp_path / "src")
    assert fresh and all(k.startswith("extras.noise_head.") for k in fresh)
    # zero phase weights: the widened synthesis computes exactly what the source did, plus the new noise
    x = _img(1, 32, 32)
    code = src.encode(_img(1, 32, 32, seed=5))
    n = src.sample_noise(x, _gen(1))
    with torch.no_grad():
        dst.extras.noise_head.mix.weight.zero_()  # the new head adds nothing
        a = src.synthesize(x, code, n)
        b = dst.synthesize(x, code, n + dst.sample_noise(x, _gen(2))[-3:])
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(CheckpointError, match="warm-start"):
        warm_start(_with(widths=(8, 8, 8)), tmp_path / "src")


def test_warm_start_leaves_skipped_parts_at_their_fresh_init(tmp_path):
    from redegrade.model.io import save_state, warm_start

    src = _with("noise_head")
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)  # so that every copied tensor differs from a fresh one
    save_state(src, tmp_path / "src")
    dst, fresh_model = _with("noise_head"), _with("noise_head")
    fresh = warm_start(dst, tmp_path / "src", skip=("extras.noise_head",))
    assert fresh and all(k.startswith("extras.noise_head.") for k in fresh)
    assert "extras.noise_head.code.weight" in fresh and "extras.noise_head.mix.weight" in fresh
    own, new, old = dst.state_dict(), fresh_model.state_dict(), src.state_dict()
    for k in own:
        want = new[k] if k.startswith("extras.noise_head.") else old[k]
        torch.testing.assert_close(own[k], want, msg=k)


def test_lost_pixels_are_read_from_y_and_stay_black_whatever_x_is():
    from redegrade.model.extras.lost_pixels import BLACK

    m = _with("lost_pixels")
    y = _img(2, seed=1)
    y[0, :, 3, 5] = -1.0                                     # black in every channel: lost
    y[1, :, 7, 7] = -1.0
    y[1, 0, 9, 9] = -1.0                                     # one black channel: kept
    y[1, :, 11, 11] = 2 * (1.5 / 255) - 1                    # dark but stored as 1 of 255: kept
    code = m.encode(y)
    assert code.keep.shape == (2, 1, 32, 32) and code.keep.sum() == 2 * 32 * 32 - 2
    assert code.keep[0, 0, 3, 5] == 0 and code.keep[1, 0, 7, 7] == 0 and BLACK < 1.5 / 255
    x = _img(2, seed=2).requires_grad_(True)
    out = m.synthesize(x, m.quantize(code, "round")[0], m.sample_noise(x, _gen(3)))
    assert torch.equal(out[0, :, 3, 5], torch.full((3,), -1.0)) and torch.equal(out[1, :, 7, 7], torch.full((3,), -1.0))
    assert (out[1, :, 9, 9] != -1).all()
    out[0, :, 3, 5].sum().backward()                         # nothing in x changes a lost pixel
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert _with().encode(y).keep is None                    # models without the extra never read it


def _upsampled(img: torch.Tensor, factor: int) -> torch.Tensor:
    """``img`` taken to 1/factor of its size and back as a restore brings a small observation up."""
    from redegrade.image import resize

    return resize(resize(img, img.shape[-1] // factor), img.shape[-1])


def test_resize_factor_is_read_from_y_and_only_what_y_can_show_of_x_reaches_y_hat():
    from redegrade.model.extras import resized

    m = _with("resized")
    img = _img(4, 64, 64, seed=1)
    y = torch.cat([_upsampled(img[:1], 2), _upsampled(img[1:2], 8), img[2:3], torch.zeros(1, 3, 64, 64)])
    code = m.encode(y)
    assert code.factor.tolist() == [2, 8, 1, 1]              # a flat image is not called upsampled
    assert _with().encode(y).factor is None                  # models without the extra never read it
    code_hat = m.quantize(code, "round")[0]
    x = _img(4, 64, 64, seed=2)
    noise = m.sample_noise(x, _gen(3))
    out = m.synthesize(x, code_hat, noise)
    # ŷ is rendered from x down and up by y's factor, by each sample's own
    torch.testing.assert_close(out, m.synthesize(resized.apply(x, code.factor), dataclasses.replace(code_hat, factor=None), noise))
    # a pattern that averages out over every 8×8 cell is detail the 8× upsampled y cannot show: it changes only
    # the samples that can show it
    cells = torch.arange(64) // 4
    checker = ((cells.view(-1, 1) + cells) % 2 * 2 - 1).float() * 0.05      # 4×4 squares
    moved = (m.synthesize(x + checker, code_hat, noise) - out).abs().amax(dim=(1, 2, 3))
    assert moved[1] < 1e-5 and (moved[[0, 2, 3]] > 1e-3).all(), moved


def test_resize_factor_of_ffhqx_u_observations_is_the_tasks_factor():
    """Measured on generator faces: U's factor at every level whose small image is at least 2 px on
    a side below it, 1 for the tasks without U."""
    from redegrade.degradations import ffhqx
    from redegrade.image import resize
    from redegrade.model.extras import resized

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from inrange import natural_generator, targets

    x = targets(natural_generator(64, seed=0), 3, seed=0, psi=1.0)

    def observed(name, level="M"):
        return torch.cat([resize(ffhqx.task(name, level, resolution=64, seed=i).apply(x[i:i + 1]), 64) for i in range(3)])
    for level in ("XS", "S", "M", "L"):
        assert resized.measure(observed("U", level)).tolist() == [ffhqx.FACTORS[level]] * 3, level
    for name in ("UN", "UNAP"):
        assert resized.measure(observed(name)).tolist() == [8] * 3, name
    for name in ("N", "A", "P", "NA"):
        assert resized.measure(observed(name)).tolist() == [1] * 3, name
    assert resized.measure(x).tolist() == [1] * 3
