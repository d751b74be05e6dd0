"""The universal degradation model: shapes, noise inventory, quantisation, gradients, loading."""
import dataclasses
import json
import math

import pytest
import torch

from redegrade.errors import CheckpointError, ConfigError, InputError, ShapeError
from redegrade.model import DegradationCode, ModelConfig, UniversalDegradationModel, extras, load_state
from redegrade.model.layers import SFTLayer


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _img(b=1, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=_gen(seed)) * 2 - 1


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)  # parameter init only; the code under test never touches the global RNG
    return UniversalDegradationModel(ModelConfig.preset("tiny")).eval()


def test_config_presets_roundtrip_and_unknown_keys():
    paper = ModelConfig.preset("paper")
    assert (paper.widths, paper.blocks, paper.dim_g, paper.c_l, paper.map_channels, paper.enc_kernel) == (
        (64, 128, 256), (4, 3, 2, 3, 4), 256, 4, 8, 3)
    for name in ("paper", "small", "tiny"):
        cfg = ModelConfig.preset(name)
        d = json.loads(json.dumps(cfg.to_dict()))
        assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        ModelConfig.from_dict({**paper.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError):
        ModelConfig(blocks=(1, 2, 3))
    with pytest.raises(Exception):
        paper.dim_g = 3  # frozen


def test_code_and_fused_map_shapes_and_ranges(tiny):
    y = _img(2, 32, 48)
    code = tiny.encode(y)
    assert isinstance(code, DegradationCode)
    assert code.e_g.shape == (2, 256)
    assert code.e_l.shape == (2, 4, 16, 24)
    assert code.e_l.min() >= 0 and code.e_l.max() <= 1
    e = tiny.degradation_map(code)
    assert e.shape == (2, tiny.config.map_channels, 16, 24)
    assert torch.isfinite(e).all()
    # the two images give different codes (the encoders look at the image)
    assert not torch.allclose(code.e_g[0], code.e_g[1])


def test_paper_noise_inventory_without_big_images():
    cfg = ModelConfig.preset("paper")
    shapes = cfg.noise_shapes(256, 256)
    assert len(shapes) == 32
    sides = [h for h, _ in shapes]
    assert (sides.count(256), sides.count(128), sides.count(64)) == (16, 12, 4)
    assert sum(h * w for h, w in shapes) == 1_261_568
    assert sum(h * w for h, w in cfg.noise_shapes(1024, 1024)) == 20_185_088
    # the real network consumes the maps in that order, at its SFT layers' resolutions (run at 16²)
    m = UniversalDegradationModel(cfg).eval()
    assert m.num_noise == 32
    seen = []
    hooks = [mod.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[2].shape[-2:])))
             for mod in m.modules() if isinstance(mod, SFTLayer)]
    x = _img(1, 16, 16)
    with torch.no_grad():
        y_hat = m.synthesize(x, m.encode(x), m.sample_noise(x, _gen(0)))
    for h in hooks:
        h.remove()
    assert y_hat.shape == x.shape
    assert seen == cfg.noise_shapes(16, 16)


def test_gradients_reach_x_codes_and_every_noise_map(tiny):
    x = _img(1, 32, 32, seed=1).requires_grad_(True)
    code = tiny.encode(_img(1, 32, 32, seed=2)).detach()
    code = DegradationCode(code.e_g.requires_grad_(True), code.e_l.requires_grad_(True))
    noise = [n.requires_grad_(True) for n in tiny.sample_noise(x, _gen(3))]
    tiny.synthesize(x, code, noise).square().mean().backward()
    for name, t in [("x", x), ("e_g", code.e_g), ("e_l", code.e_l)] + [(f"n{i}", n) for i, n in enumerate(noise)]:
        assert t.grad is not None and t.grad.abs().sum() > 0, name
    tiny.zero_grad(set_to_none=True)


def test_noise_is_seeded_and_matters(tiny):
    x = _img(1, 32, 32)
    code = tiny.encode(_img(1, 32, 32, seed=5))
    with torch.no_grad():
        a = tiny.synthesize(x, code, tiny.sample_noise(x, _gen(7)))
        b = tiny.synthesize(x, code, tiny.sample_noise(x, _gen(7)))
        c = tiny.synthesize(x, code, tiny.sample_noise(x, _gen(8)))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-6
    n = tiny.sample_noise(_img(4, 64, 64), _gen(0))
    flat = torch.cat([t.flatten() for t in n])
    assert abs(flat.mean()) < 0.05 and abs(flat.std() - 1) < 0.05
    # no generator: reproducible (seed 0), never the global RNG
    torch.manual_seed(123)
    first = tiny.sample_noise(x)[0]
    torch.manual_seed(456)
    assert torch.equal(first, tiny.sample_noise(x)[0])


def test_quantize_modes(tiny):
    code = tiny.encode(_img(2, 32, 32)).detach()
    e_l = code.e_l.clone().requires_grad_(True)
    e_g = code.e_g.clone().requires_grad_(True)
    src = DegradationCode(e_g, e_l)
    med_l = tiny.entropy_l.bottleneck.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)

    hat, rate = tiny.quantize(src, "ste")
    assert hat.e_g.shape == e_g.shape and hat.e_l.shape == e_l.shape
    frac = (hat.e_l - med_l) / tiny.config.quant_step_l
    assert torch.allclose(frac, frac.round(), atol=1e-5)  # forward values are rounded …
    (hat.e_l.sum() + hat.e_g.sum()).backward()
    assert torch.allclose(e_l.grad, torch.ones_like(e_l))  # … the gradient is the identity
    assert e_g.grad.abs().sum() > 0

    e_l.grad = e_g.grad = None
    hat_r, rate_r = tiny.quantize(src, "round")
    assert torch.equal(hat_r.e_l, hat.e_l) and torch.equal(hat_r.e_g, hat.e_g)
    hat_r.e_l.sum().backward()
    assert e_l.grad is None or e_l.grad.abs().sum() == 0  # plain rounding blocks the gradient

    hat_n, _ = tiny.quantize(src, "none")
    assert torch.equal(hat_n.e_l, e_l)
    n1, _ = tiny.quantize(src, "noise", generator=_gen(0))
    n2, _ = tiny.quantize(src, "noise", generator=_gen(0))
    assert torch.equal(n1.e_l, n2.e_l)
    assert (n1.e_l - e_l).abs().max() <= 0.5 + 1e-6 and not torch.equal(n1.e_l, hat_r.e_l)
    with pytest.raises(InputError, match="generator"):
        tiny.quantize(src, "noise")
    with pytest.raises(ConfigError, match="mode"):
        tiny.quantize(src, "dequantize")

    for r in (rate, rate_r):
        for k in ("g", "l"):
            assert r[k].shape == (2,) and torch.isfinite(r[k]).all() and (r[k] > 0).all()


def test_mode_is_never_taken_from_training_flag(tiny):
    code = tiny.encode(_img()).detach()
    tiny.train()
    try:
        a, _ = tiny.quantize(code, "round")
    finally:
        tiny.eval()
    b, _ = tiny.quantize(code, "round")
    assert torch.equal(a.e_l, b.e_l) and torch.equal(a.e_g, b.e_g)


def test_aux_loss_trains_the_quantiles(tiny):
    loss = tiny.aux_loss()
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert tiny.entropy_g.bottleneck.quantiles.grad.abs().sum() > 0
    tiny.zero_grad(set_to_none=True)


def test_bad_shapes_raise_shape_error(tiny):
    with pytest.raises(ShapeError, match="multiples of 8"):
        tiny.encode(_img(1, 30, 32))
    with pytest.raises(ShapeError):
        tiny.encode(torch.zeros(1, 4, 32, 32))
    x = _img()
    code = tiny.encode(x)
    noise = tiny.sample_noise(x, _gen(0))
    with pytest.raises(ShapeError, match="multiples of 8"):
        tiny.synthesize(_img(1, 36, 36), code, noise)
    with pytest.raises(ShapeError, match="noise maps"):
        tiny.synthesize(x, code, noise[:-1])
    with pytest.raises(ShapeError, match="noise map 0"):
        tiny.synthesize(x, code, [noise[2]] + noise[1:])  # an H/2 map where an H map belongs
    with pytest.raises(ShapeError, match="e_l"):
        tiny.synthesize(_img(1, 64, 64), code, tiny.sample_noise(_img(1, 64, 64)))


def test_load_state_reads_training_checkpoint_and_is_strict(tiny, tmp_path):
    cfg = tiny.config
    path = tmp_path / "step.pt"
    torch.save({"config": cfg.to_dict(), "model": tiny.state_dict(), "step": 3}, path)
    m = load_state(path)
    assert m.config == cfg
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, m.state_dict()[k]), k
    sd = dict(tiny.state_dict())
    sd["synthesis.conv_first.extra"] = sd.pop("synthesis.conv_first.0.weight")
    torch.save({"config": cfg.to_dict(), "model": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: synthesis\.conv_first\.0\.weight") as err:
        load_state(path)
    assert "synthesis.conv_first.extra" in str(err.value)
    torch.save({"model": tiny.state_dict()}, path)
    with pytest.raises(CheckpointError, match="'config'"):
        load_state(path)
    torch.save({"config": {**cfg.to_dict(), "widths": [8, 8, 8]}, "model": tiny.state_dict()}, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state(path)


def test_fused_map_equals_conv_of_broadcast_concat(tiny):
    """The broadcast-free projection must equal CDD's conv over concat(e_l, e_g broadcast)."""
    g = _gen(9)
    e_g = torch.randn(2, 256, generator=g, dtype=torch.float64)
    e_l = torch.rand(2, 4, 8, 12, generator=g, dtype=torch.float64)
    proj = tiny.fusion.proj.double()
    try:
        want = proj(torch.cat([e_l, e_g[:, :, None, None].expand(-1, -1, 8, 12)], dim=1))
        got = tiny.fusion.project(e_g, e_l)
    finally:
        proj.float()
    assert torch.allclose(got, want, atol=1e-10)


# ----------------------------------------------------------------- options outside CDD (small preset)
def _with(*extras: str, **kw) -> UniversalDegradationModel:
    """The tiny preset with ``extras`` added (and config fields ``kw``), through a JSON round trip."""
    torch.manual_seed(0)
    tiny = ModelConfig.preset("tiny")
    cfg = ModelConfig(**{**tiny.to_dict(), **kw, "extras": (*tiny.extras, *extras)})
    return UniversalDegradationModel(ModelConfig.from_dict(cfg.to_dict())).eval()


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


def _fit_quality(m, x, code, target, params, *, lr: float, steps: int) -> torch.Tensor:
    """Adam on ``params`` against ``QualityLoss(target, f̂(x, code))``, fresh noise each step; the output after."""
    from redegrade.train.losses import QualityLoss

    opt, loss = torch.optim.Adam(params, lr=lr), QualityLoss()
    for step in range(steps):
        out = m.synthesize(x, code, m.sample_noise(x, _gen(10 + step)))
        opt.zero_grad()
        loss(target, out).backward()
        opt.step()
    with torch.no_grad():
        return m.synthesize(x, code, m.sample_noise(x, _gen(99)))


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
    assert cfg == dataclasses.replace(ModelConfig.preset("tiny"), extras=extras.NAMES)
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
    assert cosine > 0.25  # descent moves x back towards y (0.41 here; +0.06 after 8 draws, 0.65 after 256)


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
