"""FFHQ-X degradations: level tables and names, upsampling (U), noise (N), the 8-bit round trip,
composition and determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as scipy_stats

from redegrade.degradations import ffhqx
from redegrade.degradations.base import Composed
from redegrade.degradations.resize import FILTERS
from redegrade.errors import ConfigError, ShapeError
from redegrade.image import pil_to_tensor, png_roundtrip

from degradation_helpers import R, grey, unit


# -- tables and names -----------------------------------------------------------------------------
def test_level_tables_match_ffhqx():
    assert ffhqx.LEVELS == ("XS", "S", "M", "L", "XL")
    assert [ffhqx.FACTORS[lv] for lv in ffhqx.LEVELS] == [2, 4, 8, 16, 32]
    assert [ffhqx.NOISE[lv] for lv in ffhqx.LEVELS] == [(96, .04), (48, .08), (24, .16), (12, .32), (6, .64)]
    assert [ffhqx.QUALITIES[lv] for lv in ffhqx.LEVELS] == [18, 15, 12, 9, 6]
    assert [ffhqx.STROKES[lv] for lv in ffhqx.LEVELS] == [1, 5, 9, 13, 17]


def test_task_names_and_parsing():
    assert ffhqx.TASKS_SINGLE == ("U", "N", "A", "P")
    assert ffhqx.TASKS_COMPOSED == ("UN", "UA", "UP", "NA", "NP", "AP", "UNA", "UNP", "UAP", "NAP", "UNAP")
    assert ffhqx.parse_tasks("single") == ["U", "N", "A", "P"]
    assert len(ffhqx.parse_tasks("composed")) == 11 and len(ffhqx.parse_tasks("all")) == 15
    assert ffhqx.parse_tasks("U, n,UNAP,U") == ["U", "N", "UNAP"]
    assert len(ffhqx.benchmark_tasks()) == 31
    with pytest.raises(ConfigError, match="UNAP"):
        ffhqx.parse_tasks("U,PANU")
    with pytest.raises(ConfigError, match="XS"):
        ffhqx.task("U", "XXL", resolution=R)


def test_required_api_shape():
    d = ffhqx.task("UNAP", "M", resolution=R, seed=0)
    assert (d.name, d.level) == ("UNAP", "M")
    assert {k: d.params[k] for k in ("factor", "photons", "drop", "quality", "strokes")} == \
        {"factor": 8, "photons": 24, "drop": .16, "quality": 12, "strokes": 9}
    assert d.params["filter"] in FILTERS
    assert d.output_size == (R // 8, R // 8) and d.mask.shape == (1, 1, R // 8, R // 8)
    with pytest.raises(ShapeError, match="resolution=32"):
        d.apply(grey(.5, 32))


# -- U ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_upsampling_size_and_filter(level, face):
    d = ffhqx.task("U", level, resolution=R, seed=3)
    f = ffhqx.FACTORS[level]
    y = d.apply(face)
    assert y.shape == (1, 3, R // f, R // f) and d.output_size == (R // f, R // f) and d.mask is None
    assert d.approx(face).shape == y.shape
    # The recorded filter is the one applied: exactly PIL's 8-bit resize with it.
    pil = Image.fromarray(((unit(face[0]).permute(1, 2, 0).numpy()) * 255).round().astype(np.uint8))
    ref = pil_to_tensor(pil.resize((R // f, R // f), FILTERS[d.params["filter"]]))
    assert torch.equal(y, ref)


def test_upsampling_filter_is_drawn_from_the_seed():
    filters = {ffhqx.task("U", "M", resolution=R, seed=s).params["filter"] for s in range(30)}
    assert filters == set(FILTERS)


def test_upsampling_approx_close_to_pil(face):
    for level in ffhqx.LEVELS:
        d = ffhqx.task("U", level, resolution=R, seed=0)
        mae = (d.apply(face) - d.approx(face)).abs().mean().item() / 2 * 255
        assert mae < 12, (level, mae)  # measured 6.4–10.8 / 255 on this detailed 64² image


# -- N ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_noise_drop_rate_and_poisson_mean(level):
    photons, p = ffhqx.NOISE[level]
    d = ffhqx.task("N", level, resolution=R, seed=1)
    y = unit(d.apply(grey(.5)))[0]
    zero = y == 0
    all_zero = zero.all(0)
    # Drops remove whole pixels; at λx = 3 (XL) a channel is also zero by chance with p = e^-3.
    assert abs(all_zero.float().mean().item() - p) < 0.03
    partial = (zero.any(0) & ~all_zero).float().mean().item()
    assert partial < 3 * np.exp(-photons * .5) + 0.01
    kept = y[:, ~all_zero]
    assert abs(kept.mean().item() - .5) < 0.02  # E[Poisson(λx)/λ] = x (clamp at 1 costs < 0.01)
    assert abs(kept.var().item() - .5 / photons) < 0.25 * .5 / photons
    # The ground truth is quantised to 8 bits.
    assert ((y * 255) - (y * 255).round()).abs().max() < 1e-4


@pytest.mark.parametrize("level", ffhqx.LEVELS)
def test_noise_approx_matches_truth_statistics(level):
    d = ffhqx.task("N", level, resolution=R, seed=2)
    x = grey(.5)
    truth, approx = unit(d.apply(x)), unit(d.approx(x))
    # RSG's surrogate mean λx − ½ would sit 0.5/λ = 0.083 low at XL: this catches it.
    assert abs(truth.mean() - approx.mean()) < 0.02
    assert abs(truth.std() / approx.std() - 1) < 0.1
    drop_truth, drop_approx = (truth == 0).all(1).float().mean(), (approx == 0).all(1).float().mean()
    assert abs(drop_truth - drop_approx) < 0.04


def test_noise_approx_redraws_and_is_seeded():
    x = grey(.4)
    a, b = ffhqx.task("N", "M", resolution=R, seed=5), ffhqx.task("N", "M", resolution=R, seed=5)
    first = a.approx(x)
    assert torch.equal(first, b.approx(x))   # seeded
    assert not torch.equal(first, a.approx(x))  # fresh noise every call


def test_noise_surrogate_clamp_passes_gradient_outside_range():
    from redegrade.degradations.noise import surrogate_clamp

    x = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    y = surrogate_clamp(x)
    y.sum().backward()
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 1.0]))
    assert (x.grad > 0).all() and x.grad[1] == pytest.approx(0.5)


# -- the 8-bit round trip -------------------------------------------------------------------------
def test_png_roundtrip_rounds_or_truncates():
    def q(v: float, truncate: bool) -> float:  # [0,1] in, 8-bit level out
        return round(unit(png_roundtrip(torch.tensor(v) * 2 - 1, truncate=truncate)).item() * 255, 4)

    assert [q(v / 255, False) for v in (0, 0.51, 254.49, 254.9, 255, 300)] == [0, 1, 254, 255, 255, 255]
    # RSG's to_pil_image floors (mul(255).byte()): ½ level + ε is still 0, and 1.0 stays 255
    assert [q(v / 255, True) for v in (0, 0.51, 1.2, 254.49, 254.9, 255, 300)] == [0, 0, 1, 254, 254, 255, 255]
    assert q(-0.1, True) == 0
    # every 8-bit level passes unchanged, however it reached [-1,1] (a bare floor drops 63 of them)
    levels = torch.arange(256.0)
    for x in (levels / 127.5 - 1, levels / 255 * 2 - 1, (levels / 255 * 2 - 1) * 0.5 * 2):
        assert torch.equal(png_roundtrip(x, truncate=True), levels / 127.5 - 1)
        assert torch.equal(png_roundtrip(x), levels / 127.5 - 1)


@pytest.mark.parametrize("level", ["XS", "S", "M"])
def test_noise_ground_truth_truncates_like_rsg(level):
    # Kept values are floor(255·min(n/λ, 1)) levels for a Poisson count n, as RSG's to_pil_image leaves
    # them; a rounding round trip puts them on another lattice and ½ level higher on average.
    photons, _ = ffhqx.NOISE[level]
    size, k = 512, 128
    y = unit(ffhqx.task("N", level, resolution=size, seed=1).apply(grey(k / 255, size)))[0]
    kept = (y[:, ~(y == 0).all(0)] * 255).double()
    n = np.arange(4 * photons + 100)
    lattice = np.floor(np.minimum(n / photons, 1) * 255 + 1e-6)
    w = scipy_stats.poisson.pmf(n, photons * k / 255)
    mean = (w * lattice).sum()
    std = np.sqrt((w * lattice**2).sum() - mean**2)
    # measured at seed 1: truncating +0.006/+0.041/+0.014 levels, rounding +0.53/+0.57/+0.51
    assert abs(kept.mean().item() - mean) < 0.2, (kept.mean().item(), mean)
    assert abs(kept.std().item() / std - 1) < 0.004, (kept.std().item(), std)  # rounding: −0.6 % at XS
    assert np.isin(kept.round().numpy(), lattice).all()


# -- composition and determinism ----------------------------------------------------------------
def test_composed_order_is_U_N_A_P(face):
    d = ffhqx.task("UNAP", "M", resolution=R, seed=7)
    assert isinstance(d, Composed) and [p.name for p in d.parts] == ["U", "N", "A", "P"]
    r = R // 8
    u = ffhqx.task("U", "M", resolution=R, seed=7)
    n = ffhqx.task("N", "M", resolution=r, seed=7)
    a = ffhqx.task("A", "M", resolution=r, seed=7)
    chain = a.apply(n.apply(u.apply(face)))
    assert torch.equal(ffhqx.task("UNA", "M", resolution=R, seed=7).apply(face), chain)
    assert not torch.equal(chain, n.apply(a.apply(u.apply(face))))  # order matters
    y = d.apply(face)
    assert y.shape == (1, 3, r, r)
    # P is last: masked-out pixels are black in the output.
    assert (unit(y)[0, :, d.mask[0, 0] < 0.02] < 0.03).all()


@pytest.mark.parametrize("name", ["U", "N", "P", "UN", "NP", "UNAP"])
def test_ground_truth_is_deterministic_per_seed(name, face):
    a = [ffhqx.task(name, "M", resolution=R, seed=s).apply(face) for s in (11, 11)]
    assert torch.equal(a[0], a[1])
    d = ffhqx.task(name, "M", resolution=R, seed=11)
    assert torch.equal(d.apply(face), d.apply(face))  # re-applying reproduces the target
    others = [ffhqx.task(name, "M", resolution=R, seed=s).apply(face) for s in range(12, 18)]
    assert any(not torch.equal(a[0], o) for o in others)


def test_ground_truth_does_not_touch_global_rng(face):
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    ffhqx.task("UNAP", "M", resolution=R, seed=0).apply(face)
    np_state = np.random.get_state()[1].copy()
    assert torch.equal(torch.rand(3), before)
    assert np.array_equal(np.random.get_state()[1], np_state)


@pytest.mark.parametrize("name,level", ffhqx.benchmark_tasks())
def test_gradients_flow_through_every_approx(name, level, face):
    d = ffhqx.task(name, level, resolution=R, seed=0)
    x = face.clone().requires_grad_(True)
    y = d.approx(x)
    assert y.shape[-2:] == d.output_size == tuple(d.apply(face).shape[-2:])
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
