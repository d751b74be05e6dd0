"""The RSG backend: phases V → W → W+ → W++ through blind, naive and non-blind forward models."""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from redegrade.backend import Restoration, StepInfo
from redegrade.degradations import ffhqx
from redegrade.errors import ConfigError
from redegrade.forward import ForwardModel, Identity, KnownDegradation
from redegrade.model import ModelConfig, UniversalDegradationModel
from redegrade.objective import build
from redegrade.redegrader import Redegrader
from redegrade_rsg import RSG, Phase, RSGConfig
from redegrade_rsg.phases import convert, to_ws
from redegrade_stylegan2 import tiny_generator

RES = 32


# ---------------------------------------------------------------- the real parts, tiny
@functools.cache
def _redegrader_template() -> ForwardModel:
    # Tiny random weights for the frozen network, built once under a fixed seed; tests get copies.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Redegrader(UniversalDegradationModel(ModelConfig.preset("tiny"))).freeze()


def _redegrader() -> ForwardModel:
    return copy.deepcopy(_redegrader_template())


@pytest.fixture(scope="module")
def G():
    return tiny_generator(resolution=RES, seed=0)


@pytest.fixture(scope="module")
def lpips_objective():
    # LPIPS-VGG with a random backbone (no downloads here): RSG's real loss structure, not the real metric.
    return build("lpips", pretrained_backbone=False)


@pytest.fixture(scope="module")
def objective():
    return build("l1")  # weight-free and fast, for the tests that are not about the loss itself


@pytest.fixture(scope="module")
def target(G):
    """A generator image away from w_avg, slightly degraded: a reachable but non-trivial target."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        ws = G.mapping.w_avg + 0.8 * torch.randn(1, G.num_ws, G.mapping.w_avg.numel(), generator=g)
        x = G.synthesis(ws, noise_mode="const")
    return (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


PAPER = "e_g,e_l,n"  # the seed paper's schedule: e and n move after V


def _config(steps=6, **kw):
    return RSGConfig(steps=steps, device="cpu", **kw)


# ---------------------------------------------------------------- schedule as data
def test_default_schedule_is_v_w_wplus_wpp_with_rsg_rates():
    s = RSGConfig().schedule()
    assert [(p.name, p.space, p.steps, p.lr) for p in s] == [
        ("V", "w", 150, 0.08), ("W", "w", 150, 0.08), ("W+", "w+", 150, 0.02), ("W++", "w++", 150, 0.005)]
    assert s[0].variables_lr is None and all(p.variables_lr for p in s[1:])
    assert [p.steps for p in RSGConfig(steps=3).schedule()] == [3, 3, 3, 3]
    assert [p.name for p in RSGConfig(phases="W,W+,W++").schedule()] == ["W", "W+", "W++"]


@pytest.mark.parametrize("phases", ["W,V", "X", "W,W", ""])
def test_bad_phase_list_is_a_config_error(phases):
    with pytest.raises(ConfigError, match="phases"):
        RSGConfig(phases=phases).schedule()


def test_latent_conversions_keep_the_image(G):
    w = G.mapping.w_avg.reshape(1, 1, -1) + 0.1
    wp = convert(w, "w", "w+", G.num_ws)
    wpp = convert(wp, "w+", "w++", G.num_ws)
    d = G.mapping.w_avg.numel()
    assert wp.shape == (1, G.num_ws, d) and wpp.shape == (1, G.num_ws * d, d)
    assert torch.equal(convert(w, "w", "w++", G.num_ws), wpp)
    with torch.no_grad():
        a = G.synthesis(to_ws(w, "w", G.num_ws), noise_mode="const")
        b = G.synthesis(wpp, noise_mode="const")
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        convert(wp, "w+", "w", G.num_ws)


# ---------------------------------------------------------------- blind: the Done criteria
def test_blind_restore_lowers_loss_each_phase_and_moves_variables_only_after_v(G, lpips_objective, target):
    fm = _redegrader()
    fm.reset(target, generator=torch.Generator().manual_seed(0))
    init = {k: v.detach().clone() for k, v in fm.named_variables().items()}
    assert {"e_g", "e_l"} <= set(init) and any(k == "n" or k.startswith("n.") for k in init)

    seen: list[StepInfo] = []
    end_of_v: dict[str, torch.Tensor] = {}

    def progress(info: StepInfo):
        seen.append(info)
        if info.phase == "V" and info.step == info.total:  # after V's last update
            end_of_v.update({k: v.detach().clone() for k, v in fm.named_variables().items()})

    out = RSG(_config(steps=8, optimise=PAPER), prior=G, objective=lpips_objective).restore(target, fm, progress=progress)

    assert isinstance(out, Restoration)
    assert [s.phase for s in seen] == ["V"] * 8 + ["W"] * 8 + ["W+"] * 8 + ["W++"] * 8
    assert [s.lr for s in seen[::8]] == [0.08, 0.08, 0.02, 0.005]
    assert out.history == seen and out.info["nfe"] == 32
    assert list(out.info["phase_losses"]) == ["V", "W", "W+", "W++"]
    for name, (first, last) in out.info["phase_losses"].items():
        assert last < first, f"phase {name} did not lower the objective: {first:.4f} → {last:.4f}"
    assert out.info["final_loss"] < out.info["initial_loss"]
    for k, v in init.items():
        assert torch.equal(end_of_v[k], v), f"{k} moved during V"
        assert not torch.equal(out.state[k], v), f"{k} did not move after V"
    assert set(out.phases) == {"V", "W", "W+", "W++"}
    assert not torch.equal(out.phases["V"], out.phases["W++"])
    assert out.image.shape == (1, 3, RES, RES) and out.image.abs().max() <= 1
    assert out.redegraded.shape == target.shape
    d = G.mapping.w_avg.numel()
    assert out.state["latent"].shape == (1, G.num_ws * d, d)
    assert out.info["latent_space"] == "w++"
    for v in fm.variables():  # the contract: variables stay optimisable leaves afterwards
        assert v.requires_grad and v.grad is None


@pytest.mark.parametrize("optimise, moving", [("", set()), ("e_g", {"e_g"}), ("e_g,n", None)])
def test_optimise_selects_the_variables_that_move(G, objective, target, optimise, moving):
    fm = _redegrader()
    fm.reset(target, generator=torch.Generator().manual_seed(0))
    init = {k: v.detach().clone() for k, v in fm.named_variables().items()}
    moving = moving if moving is not None else {"e_g"} | {k for k in init if k.startswith("n.")}
    out = RSG(_config(steps=3, optimise=optimise), prior=G, objective=objective).restore(target, fm)
    moved = {k for k, v in init.items() if not torch.equal(out.state[k], v)}
    assert moved == moving
    assert ("V" in out.phases) == bool(moving)  # with every variable fixed there is nothing for V to hold


def test_restore_is_deterministic(G, objective, target):
    def run():
        fm = _redegrader()
        fm.reset(target, generator=torch.Generator().manual_seed(0))
        return RSG(_config(steps=2, optimise=PAPER), prior=G, objective=objective).restore(target, fm)

    a, b = run(), run()
    assert torch.equal(a.image, b.image) and torch.equal(a.state["e_l"], b.state["e_l"])


# ---------------------------------------------------------------- the same backend, other forward models
def test_naive_mode_is_the_same_backend_with_identity(G, objective, target):
    out = RSG(_config(steps=5), prior=G, objective=objective).restore(target, Identity())
    assert set(out.state) == {"latent"}
    # V only holds the forward model's variables: without any, naive runs RSG's own W → W+ → W++
    assert list(out.phases) == ["W", "W+", "W++"] and out.info["nfe"] == 15
    assert out.info["final_loss"] < out.info["initial_loss"]
    torch.testing.assert_close(out.redegraded.clamp(-1, 1), out.image, atol=1e-6, rtol=0)


def test_non_blind_known_degradation_runs(G, objective, target):
    task = ffhqx.task("P", "XS", resolution=RES, seed=0)  # inpainting: exercises the masked loss
    assert task.mask is not None
    fm = KnownDegradation(task, resolution=RES)
    y = task.apply(target)
    out = RSG(_config(steps=5), prior=G, objective=objective).restore(y, fm)
    assert out.redegraded.shape == y.shape
    assert out.info["final_loss"] < out.info["initial_loss"]


def test_plain_callable_objective_and_zero_steps(G, target):
    calls = []

    def l1(y, y_hat):
        calls.append(1)
        return (y - y_hat).abs().mean()

    out = RSG(_config(steps=0), prior=G, objective=l1).restore(target, Identity())
    with torch.no_grad():
        w_avg_image = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1), noise_mode="const")
    torch.testing.assert_close(out.image, w_avg_image.clamp(-1, 1))
    assert out.history == [] and calls


def test_rejects_a_batch(G, objective, target):
    from redegrade.errors import ShapeError

    with pytest.raises(ShapeError):
        RSG(_config(), prior=G, objective=objective).restore(target.repeat(2, 1, 1, 1), Identity())


def test_phase_validation():
    with pytest.raises(ConfigError):
        Phase("X", "z", 1, 0.1)
    with pytest.raises(ConfigError):
        Phase("X", "w", 1, -0.1)
