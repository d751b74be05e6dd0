"""The universal degradation model: shapes, noise inventory, quantisation, gradients, loading."""
import json

import pytest
import torch

from redegrade.errors import CheckpointError, ConfigError, InputError, ShapeError
from redegrade.model import DegradationCode, ModelConfig, UniversalDegradationModel, load_state
from redegrade.model.layers import SFTLayer

from model_helpers import _gen, _img


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
