"""Memory options of the Redegrader: activation checkpointing gives the plain path's values and
gradients; autocast's gradients stay close; the switches are taken when (and only when) they should be."""
import dataclasses

import pytest
import torch

from redegrade.errors import InputError
from redegrade.model import ModelConfig, UniversalDegradationModel
from redegrade.model import synthesis as synthesis_mod
from redegrade.model.cdd import CDDConfig, CDDModel, CompressorSpec
from redegrade.redegrader import Redegrader

RES = 32
# Checkpointing replays the same kernels on the same inputs: equal up to float32 round-off (state
# tolerance), in practice bit for bit.
STATE = dict(rtol=1e-5, atol=1e-6)
# Autocast tolerances, relative L2 error against float32 (ŷ, ∇x, ∇ of each variable) and the cosine of
# each variable's gradient with float32's. bf16 keeps 8 significant bits, fp16 11; the variables'
# gradients sum many small per-pixel terms and lose most (measured on these tiny models: bf16 ŷ 1.1%,
# ∇x 2.1%, variables ≤ 15% at cosine ≥ 0.99; fp16 0.6%, 0.2%, ≤ 11%).
AUTOCAST_TOL = {"bf16": (0.02, 0.05, 0.25, 0.98), "fp16": (0.01, 0.01, 0.15, 0.99)}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _img(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, RES, RES, generator=_gen(seed)) * 2 - 1


def _tiny_ours() -> UniversalDegradationModel:
    # the heads of the shipped models too: noise head (3 extra maps) and JPEG head (kept in float32)
    cfg = dataclasses.replace(ModelConfig.preset("tiny"), extras=("global_residual", "noise_head", "jpeg_head",
                                                                  "grid_phase"))
    torch.manual_seed(0)  # parameter init only
    return UniversalDegradationModel(cfg)


def _tiny_cdd() -> CDDModel:
    cfg = CDDConfig(enc_dim_g=16, dim_g=16, enc_dim_l=16, widths=(4, 8, 8), blocks=(1, 1, 1), blocks_up=(1, 1),
                    compressor_g=CompressorSpec("EntropyBottleneck", 16))
    torch.manual_seed(0)
    return CDDModel(cfg)


def _grads(red: Redegrader, y: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ŷ and the gradients of a fixed random projection of ŷ w.r.t. x and every variable."""
    red.reset(y, generator=_gen(0))
    x = x0.clone().requires_grad_(True)
    y_hat = red(x)
    weights = torch.randn(y_hat.shape, generator=_gen(9))
    (y_hat * weights).sum().backward()
    grads = {"x": x.grad, **{k: v.grad for k, v in red.named_variables().items()}}
    return y_hat.detach(), grads


@pytest.mark.parametrize("build", [_tiny_ours, _tiny_cdd], ids=["ours", "cdd"])
def test_checkpointed_path_gives_the_same_output_and_gradients(build, monkeypatch):
    model = build()
    calls = []
    real = synthesis_mod._checkpoint

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(synthesis_mod, "_checkpoint", spy)
    y, x = _img(1), _img(2)
    plain_out, plain = _grads(Redegrader(model, checkpoint="off"), y, x)
    assert not calls
    ck_out, ck = _grads(Redegrader(model, checkpoint="on"), y, x)
    assert calls and all(kw["use_reentrant"] is False for kw in calls)
    torch.testing.assert_close(ck_out, plain_out, **STATE)
    assert set(ck) == set(plain) and {"x", "e_g", "e_l", "n.0"} <= set(plain)
    for name in plain:
        assert plain[name] is not None and plain[name].abs().sum() > 0, name
        torch.testing.assert_close(ck[name], plain[name], **STATE, msg=lambda m, n=name: f"{n}: {m}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("checkpoint", ["off", "on"])
def test_autocast_is_close_to_float32(checkpoint, precision):
    model = _tiny_ours()
    y, x = _img(1), _img(2)
    ref_out, ref = _grads(Redegrader(model, checkpoint="off"), y, x)
    out, got = _grads(Redegrader(model, checkpoint=checkpoint, precision=precision), y, x)
    assert out.dtype == torch.float32 and all(g.dtype == torch.float32 for g in got.values())
    tol_out, tol_x, tol_var, min_cos = AUTOCAST_TOL[precision]
    assert _rel(out, ref_out) < tol_out
    assert _rel(got["x"], ref["x"]) < tol_x
    for name in ref:
        if name != "x":
            cos = float(torch.nn.functional.cosine_similarity(got[name].flatten(), ref[name].flatten(), dim=0))
            assert _rel(got[name], ref[name]) < tol_var and cos > min_cos, (name, _rel(got[name], ref[name]), cos)


def test_auto_checkpoints_only_large_images_that_need_a_gradient(monkeypatch):
    import redegrade.redegrader as mod

    red = Redegrader(_tiny_ours())
    red.reset(_img(1), generator=_gen(0))
    x = _img(2)
    assert not red._checkpointing(x)  # 32² is far below 512²
    monkeypatch.setattr(mod, "AUTO_CHECKPOINT_PIXELS", RES * RES)
    assert red._checkpointing(x)  # at the threshold, and the variables need gradients
    red.checkpoint = "on"
    assert red._checkpointing(x)
    with torch.no_grad():
        assert not red._checkpointing(x)
    for v in red.variables():
        v.requires_grad_(False)
    assert not red._checkpointing(x) and red._checkpointing(x.requires_grad_(True))


def test_bad_options_are_refused():
    with pytest.raises(InputError, match="checkpoint"):
        Redegrader(_tiny_ours(), checkpoint="yes")
    with pytest.raises(InputError, match="precision"):
        Redegrader(_tiny_ours(), precision="half")


def test_no_graph_survives_from_one_rsg_step_to_the_next():
    """Every tensor autograd saved for a step's backward is released before the next step's forward."""
    import weakref

    from redegrade.objective import build
    from redegrade_rsg import Phase
    from redegrade_rsg.phases import run_phase
    from redegrade_stylegan2 import tiny_generator

    class Saved:  # what the pack hook hands autograd; alive exactly as long as the saved tensor
        def __init__(self, t: torch.Tensor):
            self.t = t

    alive: weakref.WeakSet = weakref.WeakSet()
    at_step_start: list[int] = []

    def pack(t):
        s = Saved(t)
        alive.add(s)
        return s

    red = Redegrader(_tiny_ours(), checkpoint="on")
    G = tiny_generator(resolution=RES, seed=0)
    y = _img(1)
    red.reset(y, generator=_gen(0))
    real = G.synthesis.forward

    def counting(*args, **kw):  # a step starts with the generator's forward
        at_step_start.append(len(alive))
        return real(*args, **kw)

    G.synthesis.forward = counting
    latent = G.mapping.w_avg.reshape(1, 1, -1).clone()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.t):
        run_phase(G, red, build("l1"), y, latent, Phase("W", "w", 3, 0.08, 0.01))
    assert at_step_start == [0, 0, 0] and len(alive) == 0
