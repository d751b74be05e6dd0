"""The Redegrader forward model: variables, gradients, determinism, transfer, save/load."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from redegrade.errors import CheckpointError, InputError, MissingCheckpointError, ShapeError
from redegrade.forward import ForwardModel
from redegrade.model import DegradationCode, ModelConfig, UniversalDegradationModel
from redegrade.redegrader import Redegrader


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _img(b=1, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=_gen(seed)) * 2 - 1


@pytest.fixture()
def red():
    torch.manual_seed(0)  # parameter init only
    return Redegrader(UniversalDegradationModel(ModelConfig.preset("tiny")))


def test_variables_and_gradients_reach_them_not_the_weights(red):
    assert isinstance(red, ForwardModel) and not red.training
    assert red.named_variables() == {}
    y = _img(1, 32, 32, seed=1)
    red.reset(y, generator=_gen(0))
    vars_ = red.named_variables()
    k = red.model.num_noise
    assert list(vars_) == ["e_g", "e_l"] + [f"n.{i}" for i in range(k)]
    assert red.variables() == list(vars_.values())
    assert all(v.is_leaf and v.requires_grad for v in vars_.values())
    assert vars_["e_g"].shape == (1, 256) and vars_["e_l"].shape == (1, 4, 16, 16)
    assert [tuple(vars_[f"n.{i}"].shape[-2:]) for i in range(k)] == red.model.noise_shapes(32, 32)

    x = _img(1, 32, 32, seed=2).requires_grad_(True)
    y_hat = red(x)
    assert y_hat.shape == x.shape
    (y_hat - y).abs().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, v in vars_.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, name
    for name, p in red.named_parameters():
        assert p.grad is None and not p.requires_grad, name
    red.train()  # a backend switching modes must not put BatchNorm into batch-statistics mode
    assert not any(mod.training for mod in red.modules())


def test_e_l_is_a_logit_so_optimisation_stays_in_range(red):
    y = _img(seed=3)
    red.reset(y)
    e_l = red.encode(y).e_l
    assert torch.allclose(torch.sigmoid(red.named_variables()["e_l"]), e_l, atol=1e-5)
    with torch.no_grad():
        red.named_variables()["e_l"].add_(100.0)  # an absurd optimiser step
    assert red.code().e_l.max() <= 1 and torch.isfinite(red(_img())).all()


def test_same_seed_same_output_different_noise_different_output(red):
    y, x = _img(seed=4), _img(seed=5)
    red.reset(y, generator=_gen(11))
    a = red(x).detach()
    red.reset(y, generator=_gen(11))
    b = red(x).detach()
    red.reset(y, generator=_gen(12))
    c = red(x).detach()
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-6


def test_optimising_the_variables_fits_a_target(red):
    """What a backend does: fit (e_g, e_l, n) so that A(x) matches y."""
    x = _img(seed=6)
    red.reset(_img(seed=7), generator=_gen(1))
    with torch.no_grad():
        target = red(x)
    red.reset(_img(seed=8), generator=_gen(2))
    opt = torch.optim.Adam(red.variables(), lr=0.05)
    losses = []
    for _ in range(15):
        loss = (red(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_forward_before_reset_and_bad_inputs(red):
    with pytest.raises(InputError, match="reset"):
        red(_img())
    with pytest.raises(ShapeError, match="multiples of 8"):
        red.encode(_img(1, 30, 30))
    with pytest.raises(ShapeError):
        red.reset(torch.zeros(1, 1, 32, 32))
    red.reset(_img())
    with pytest.raises(ShapeError):
        red(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ShapeError, match="multiples of 8"):
        red(_img(1, 36, 36))
    with pytest.raises(InputError, match="quantizer"):
        Redegrader(red.model, quantizer="noise")


def test_other_size_x_resizes_e_l_and_noise(red):
    red.reset(_img(1, 32, 32))
    y_hat = red(_img(1, 64, 48))
    assert y_hat.shape == (1, 3, 64, 48)


def test_set_code_mixes_codes_for_degradation_transfer(red):
    y1, y2, x = _img(seed=1), _img(seed=2), _img(seed=3)
    c1, c2 = red.encode(y1), red.encode(y2)
    mixed = DegradationCode(c1.e_g, c2.e_l)
    noise = red.sample_noise(x, _gen(5))
    red.set_code(mixed, noise)
    got = red(x)
    with torch.no_grad():
        hat, _ = red.model.quantize(DegradationCode(c1.e_g, red.code().e_l), "ste")
        want = red.synthesize(x, hat, noise)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(red.code().e_l, c2.e_l, atol=1e-5)
    red.set_code(c1)  # keeps the noise when it fits
    assert all(torch.equal(a, b) for a, b in zip(red.noise, noise))
    with pytest.raises(ShapeError):
        red.set_code(c1, noise[:-1])


def test_save_and_from_pretrained_roundtrip_exactly(red, tmp_path):
    y, x = _img(seed=1), _img(seed=2)
    out = red.save_pretrained(tmp_path / "r")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = Redegrader.from_pretrained(out)
    assert isinstance(Redegrader.from_model(loaded.model), Redegrader)
    for k, v in red.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    red.reset(y, generator=_gen(3))
    loaded.reset(y, generator=_gen(3))
    assert torch.equal(red(x), loaded(x))
    # a training checkpoint file loads the same way
    torch.save({"config": red.model.config.to_dict(), "model": red.model.state_dict(), "step": 1}, tmp_path / "c.pt")
    from_ckpt = Redegrader.from_pretrained(tmp_path / "c.pt")
    from_ckpt.reset(y, generator=_gen(3))
    assert torch.equal(red(x), from_ckpt(x))


def test_strict_loading_rejects_a_wrong_key(red, tmp_path):
    d = red.save_pretrained(tmp_path / "r")
    sd = load_file(str(d / "model.safetensors"))
    sd["synthesis.renamed"] = sd.pop("synthesis.conv_last.1.weight")
    save_file(sd, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"synthesis\.conv_last\.1\.weight") as err:
        Redegrader.from_pretrained(d)
    assert "synthesis.renamed" in str(err.value)


def test_missing_checkpoints_are_clear(monkeypatch, tmp_path):
    from redegrade import settings

    monkeypatch.setattr(settings, "data_dir", lambda: tmp_path / "none")
    for name in (None, "wqi", "ffhqx"):
        with pytest.raises(MissingCheckpointError, match="is not installed"):
            Redegrader.from_pretrained(name)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(MissingCheckpointError, match="model.safetensors"):
        Redegrader.from_pretrained(tmp_path / "half")
    with pytest.raises(MissingCheckpointError):
        Redegrader.from_pretrained(tmp_path / "nowhere.pt")


@pytest.mark.parametrize("name, expected", [
    ("wqi", (155.17150962352753, 1599.9617317914963, -34.514882334660115, 6.546717587101739, 480.1225919107601)),
    ("ffhqx", (2.2468279600143433, 876.7535086870193, -1.2758438255129487, -2.7271882438799366, 570.7512992447664)),
])
def test_shipped_models_outputs_are_pinned(name, expected):
    """Refactors of the model code must leave what the shipped models compute unchanged."""
    g = _gen(7)
    y = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    red = Redegrader.from_pretrained(name)
    red.reset(y, generator=_gen(0))
    with torch.no_grad():
        out = red(x).double()
        code = red.code()
    weights = torch.arange(out.numel()).view_as(out).double().sin()
    got = (out.sum(), out.abs().sum(), (out * weights).sum(), code.e_g.double().sum(), code.e_l.double().sum())
    assert [float(v) for v in got] == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_to_moves_the_variables_and_keeps_them_the_same_leaves(red):
    """A backend moves the forward model with ``.to``; the optimiser must still hold its variables."""
    red.reset(_img(seed=8), generator=_gen(0))
    before = red.variables()
    red.to(torch.float64)
    after = red.variables()
    assert all(a is b for a, b in zip(before, after))
    assert all(v.dtype == torch.float64 and v.is_leaf and v.requires_grad for v in after)
    assert torch.isfinite(red(_img(seed=9).double())).all()  # weights and variables moved together


def test_forward_dithers_jpeg_where_a_gradient_is_taken_reproducibly_and_rounds_otherwise():
    """The shipped FFHQ-X model has a JPEG head: an inversion's forward (x needs a gradient) replaces
    its rounding by noise seeded at reset; without a gradient (the reported re-degradation) it rounds."""
    g = _gen(3)
    y, x = (torch.rand(1, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    red = Redegrader.from_pretrained("ffhqx")
    red.reset(y, generator=_gen(0))
    with torch.no_grad():
        rounded = red(x)
    first = [red(x.clone().requires_grad_(True)).detach() for _ in range(2)]
    red.reset(y, generator=_gen(0))
    again = red(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        assert torch.equal(red(x), rounded)
    assert torch.equal(first[0], again)              # the same seed, the same draws
    assert not torch.equal(first[0], first[1])        # a fresh draw on every forward
    assert float((first[0] - rounded).abs().max()) > 1e-3
    assert float((first[0] - rounded).abs().mean()) < 0.1  # small noise on the same image, not a new one


def test_models_with_signatures_refuse_observations_under_16_px():
    """Their JPEG signature reads the grid shifted by 4 px, empty at 8 px: the code would be NaN, silently."""
    red = Redegrader.from_pretrained("ffhqx")
    with pytest.raises(ShapeError, match="at least 16"):
        red.reset(_img(1, 8, 8))
    with pytest.raises(ShapeError, match="at least 16"):
        red.encode(_img(1, 8, 8))  # transfer's path
    red.reset(_img(1, 16, 16))
    assert bool(red.code().e_g.isfinite().all())


def test_the_lost_pixels_of_y_are_fixed_in_the_forward_model_and_never_optimised():
    from model_helpers import _with

    red = Redegrader(_with("lost_pixels"))
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y[..., 4:6, 10] = -1.0
    red.reset(y)
    assert "keep" not in red.named_variables() and red.code().keep.sum() == 32 * 32 - 2
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    out = red(x)
    assert (out[..., 4:6, 10] == -1).all() and (out[..., 0:4, 10] != -1).all()
    big = red(torch.zeros(1, 3, 64, 64))                    # another size: the lost pixels follow, nearest
    assert (big[..., 8:12, 20:22] == -1).all()
    red.to(torch.float64)                                   # and they move with the variables
    assert red.keep.dtype == torch.float64 and (red(x.double())[..., 4:6, 10] == -1).all()


def test_the_resize_factor_of_y_is_fixed_in_the_forward_model_and_moves_with_it():
    from model_helpers import _with

    from redegrade.image import resize

    red = Redegrader(_with("resized"))
    y = resize(resize(_img(1, 64, 64, seed=3), 8), 64)                # an 8×8 observation brought to 64²
    red.reset(y)
    assert red.code().factor.tolist() == [8] and "factor" not in red.named_variables()
    x = _img(1, 64, 64, seed=4).requires_grad_(True)
    red(x).sum().backward()
    cells = torch.arange(64) // 4
    checker = ((cells.view(-1, 1) + cells) % 2 * 2 - 1).float()          # averages out over every 8×8 cell
    assert abs(float((x.grad * checker).sum())) < 1e-4 * float(x.grad.abs().sum())  # y cannot show it: no gradient
    with torch.no_grad():
        torch.testing.assert_close(red(x + 0.05 * checker), red(x))
    red.to(torch.float64)
    assert red.factor.dtype == torch.int64 and red.factor.device.type == "cpu"
    assert red(x.detach().double()).dtype == torch.float32
