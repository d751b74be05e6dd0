"""DPS backend on tiny random UNet2DModels (32², two levels): sampler maths, blind fitting, guidance,
respacing, early exit, loading and errors."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from redegrade import _compat  # noqa: F401  (before diffusers)
from diffusers import DDPMScheduler, UNet2DModel

from redegrade import backend as registry
from redegrade import objective
from redegrade.errors import CheckpointError, ConfigError, MissingCheckpointError, ShapeError
from redegrade.forward import ForwardModel, Identity, KnownDegradation
from redegrade_dps import (DPS, DPSConfig, EarlyExit, EpsModel, NoiseSchedule, Schedule, ancestral_step,
                           log_variance, predict_x0, respace)

RES = 32


def tiny_unet(out_channels: int = 3, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)  # construction only; the sampler itself uses explicit generators
    return UNet2DModel(sample_size=RES, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return tiny_unet()


@pytest.fixture(scope="module")
def y() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ramp = torch.linspace(-0.8, 0.8, RES)
    img = torch.stack([ramp.view(1, RES).expand(RES, RES), ramp.view(RES, 1).expand(RES, RES), -ramp.view(1, RES).expand(RES, RES)])
    return (img[None] + 0.05 * torch.randn(1, 3, RES, RES, generator=g)).clamp(-1, 1)


class ToyBlind(ForwardModel):
    """A differentiable stand-in for the Redegrader with the same variable names:
    A(x) = (1 + e_g₀)·x + e_g₁ + up(e_l) + 0.05·n."""

    def reset(self, y, *, generator=None):
        super().reset(y)
        self.e_g = torch.zeros(1, 2, device=y.device, requires_grad=True)
        self.e_l = torch.zeros(1, 1, RES // 2, RES // 2, device=y.device, requires_grad=True)
        self.n = torch.randn(1, 1, RES, RES, generator=generator, device=y.device).requires_grad_(True)

    def forward(self, x):
        local = F.interpolate(self.e_l, size=x.shape[-2:], mode="nearest")
        return (1 + self.e_g[:, :1, None, None]) * x + self.e_g[:, 1:, None, None] + local + 0.05 * self.n

    def named_variables(self):
        return {"e_g": self.e_g, "e_l": self.e_l, "n": self.n}


class Blur:
    """A known, differentiable degradation (3×3 box blur) for the non-blind forward model."""

    def approx(self, x):
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def run(unet, y, fm=None, **kw):
    kw.setdefault("steps", 20)
    kw.setdefault("device", "cpu")
    fm = fm or Identity()
    fm.reset(y)
    return DPS(DPSConfig(**kw), prior=unet).restore(y, fm)


# ---- sampler maths -------------------------------------------------------------------------------

@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("steps", [1000, 10])
def test_ancestral_step_matches_diffusers_ddpm(variance, steps):
    sched = DDPMScheduler(num_train_timesteps=1000, variance_type=variance, clip_sample=True)
    sched.set_timesteps(steps)  # diffusers' "leading" spacing = our "strided"
    ours = Schedule.spaced(sched.betas, respace(1000, steps, "strided"))
    assert list(reversed(ours.timesteps)) == sched.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    x_t, eps, v = (torch.randn(1, 3, 8, 8, generator=g) for _ in range(3))
    v = v.tanh()
    for i in (len(ours) - 1, len(ours) // 2, 1):
        t = ours.timesteps[i]
        out = torch.cat([eps, v], 1) if variance == "learned_range" else eps
        # diffusers draws its own noise; reproduce it with a generator seeded identically
        ref = sched.step(out, t, x_t, generator=torch.Generator().manual_seed(5)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(5))
        x0 = predict_x0(x_t, eps, float(ours.alphas_cumprod[i]))
        mine = ancestral_step(ours, i, x0, x_t, log_variance(ours, i, variance, v), noise)
        # diffusers keeps its tables in float32, ours are float64: 1e-4 covers the difference near t = 0
        assert torch.allclose(mine, ref, atol=1e-4), (variance, steps, i, (mine - ref).abs().max())


def test_learned_range_interpolates_between_beta_and_posterior_variance():
    s = Schedule.spaced(NoiseSchedule.linear().betas, respace(1000, 50))
    i = 30
    hi = log_variance(s, i, "learned_range", torch.ones(1))
    lo = log_variance(s, i, "learned_range", -torch.ones(1))
    assert hi.item() == pytest.approx(float(torch.log(s.betas[i])))
    assert lo.item() == pytest.approx(float(s.posterior_log_variance_clipped[i]))
    assert hi.item() > lo.item()


def test_respace_spacings():
    even = respace(1000, 25, "even")
    assert len(even) == 25 and even[0] == 0 and even[-1] == 999 and even == sorted(set(even))
    assert respace(1000, 10, "strided") == list(range(0, 1000, 100))
    assert respace(50, 50) == list(range(50))
    with pytest.raises(ConfigError):
        respace(1000, 0)
    with pytest.raises(ConfigError):
        respace(1000, 10, "random")


def test_early_exit_tracker_stops_on_plateau_only():
    falling = EarlyExit(window=5, tol=0.01)
    assert not any(falling.update(100 * 0.9 ** k) for k in range(60))
    flat = EarlyExit(window=5, tol=0.01)
    stops = [flat.update(v) for v in [10, 9, 8, 7, 6] + [5.0] * 20]
    assert stops.index(True) == 10  # the 5 values after the first 5.0 are no better than it
    late = EarlyExit(window=2, tol=0.01, min_steps=8)
    assert [late.update(1.0) for _ in range(8)].index(True) == 7


def test_early_exit_waits_for_x0_to_settle():
    """A flat residual is not enough while x̂₀ still moves by more than x0_tol over the window."""
    base = torch.ones(1, 3, 4, 4)
    rule = EarlyExit(window=2, tol=0.01, x0_tol=0.05)
    moving = [rule.update(1.0, base * (1 + 0.1 * k)) for k in range(6)]   # x̂₀ grows ≈ 15 % per window
    assert not any(moving) and rule.x0_change > 0.05
    settled = [rule.update(1.0, base * 1.5) for _ in range(3)]
    assert settled == [False, True, True]  # two steps after x̂₀ stops, the window sees no change
    assert rule.x0_change == 0.0


# ---- the backend ---------------------------------------------------------------------------------

def test_dps_is_registered_through_entry_points():
    assert registry.load("dps") is DPS
    assert "dps" in [e.name for e in registry.available()]


def test_blind_run_changes_forward_model_variables(unet, y):
    fm = ToyBlind()
    fm.reset(y, generator=torch.Generator().manual_seed(0))
    init = {k: v.detach().clone() for k, v in fm.named_variables().items()}
    obj = objective.build("lpips", pretrained_backbone=False)  # the default variables_loss, offline backbone
    r = DPS(DPSConfig(steps=12, device="cpu", variables_lr=0.05), prior=unet, objective=obj).restore(y, fm)
    for name in ("e_g", "e_l", "n"):
        assert not torch.allclose(r.state[name], init[name]), name
    assert r.image.shape == (1, 3, RES, RES) and r.redegraded.shape == y.shape
    assert r.image.abs().max() <= 1
    assert r.info["nfe"] == 12 and r.info["early_exit_step"] is None
    assert [h.step for h in r.history] == list(range(1, 13))
    assert r.history[0].lr is None and r.history[-1].lr is not None  # variables wait for variables_start
    assert len(r.phases) == 4


def test_guidance_lowers_residual_vs_zeta_zero(unet, y):
    free = run(unet, y, zeta=0.0, seed=3)
    guided = run(unet, y, zeta=1.0, seed=3)
    assert guided.info["residual"] < free.info["residual"] - 1.0
    # the same seed: identical first step (guidance only acts from x_{t−1} on)
    assert guided.history[0].loss == pytest.approx(free.history[0].loss)


def test_non_blind_known_degradation_runs_unchanged(unet, y):
    fm = KnownDegradation(Blur())
    target = Blur().approx(y)
    free = run(unet, target, fm, zeta=0.0, steps=10)
    guided = run(unet, target, fm, zeta=1.0, steps=10)
    assert guided.info["residual"] < free.info["residual"]
    assert free.state.keys() == {"x_T"}


def test_seed_reproduces_sample(unet, y):
    a = run(unet, y, steps=5, seed=7)
    b = run(unet, y, steps=5, seed=7)
    c = run(unet, y, steps=5, seed=8)
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)


def test_early_exit_stops_on_plateau_and_reports_it(unet, y):
    # ζ = 0: the residual of an unguided random prior has no trend, so it plateaus at once
    r = run(unet, y, zeta=0.0, steps=40, early_exit=True, early_exit_window=0.1, early_exit_tol=0.05,
            early_exit_after=0.0, early_exit_x0_tol=None)
    step = r.info["early_exit_step"]
    assert step is not None and step < 40
    assert r.info["nfe"] == step == len(r.history) and r.info["steps"] == 40


@pytest.mark.parametrize("spacing", ["even", "strided"])
def test_respaced_and_full_schedules_run(spacing, y):
    net = tiny_unet()
    short = EpsModel(net, NoiseSchedule.from_scheduler(DDPMScheduler(num_train_timesteps=40), learned_sigma=False))
    full = DPS(DPSConfig(steps=40, device="cpu"), prior=short).restore(y, Identity())
    resp = DPS(DPSConfig(steps=8, spacing=spacing, device="cpu"), prior=short).restore(y, Identity())
    assert full.info["timesteps"] == list(range(40)) and full.info["nfe"] == 40
    assert len(resp.info["timesteps"]) == 8 and resp.info["nfe"] == 8
    assert torch.isfinite(resp.image).all()


def test_prior_may_come_with_its_scheduler(unet):
    sched = DDPMScheduler(num_train_timesteps=200, variance_type="fixed_large")
    for prior in ((unet, sched), {"unet": unet, "scheduler": sched.config}, (unet, dict(sched.config))):
        model = DPS(prior=prior).model
        assert model.schedule.num_train_timesteps == 200 and model.schedule.variance_type == "fixed_large"
    assert DPS(prior=unet).model.schedule.num_train_timesteps == 1000  # DPS's schedule by default


def test_learned_variance_model_runs(y):
    net = tiny_unet(out_channels=6)
    r = DPS(DPSConfig(steps=6, device="cpu"), prior=net).restore(y, Identity())
    assert DPS(prior=net).model.schedule.variance_type == "learned_range"
    assert torch.isfinite(r.image).all()


def test_observation_of_wrong_size_is_a_shape_error(unet):
    with pytest.raises(ShapeError, match="32×32"):
        run(unet, torch.zeros(1, 3, 16, 16))


def test_resolution_is_unet_sample_size(unet):
    assert DPS(prior=unet).resolution == RES


def test_bad_config_values_raise_config_error():
    with pytest.raises(ConfigError, match="variables_loss"):
        DPS(DPSConfig(variables_loss="mse"))
    with pytest.raises(ConfigError, match="zeta"):
        DPS(DPSConfig(zeta=-1))


# ---- loading ---------------------------------------------------------------------------------------

def test_local_folder_loads_unet_and_scheduler(tmp_path, unet, y):
    unet.save_pretrained(tmp_path / "m")
    DDPMScheduler(num_train_timesteps=100, variance_type="fixed_large").save_pretrained(tmp_path / "m")
    dps = DPS(DPSConfig(diffusion_model=str(tmp_path / "m"), steps=4, device="cpu"))
    assert dps.resolution == RES
    assert dps.model.schedule.num_train_timesteps == 100 and dps.model.schedule.variance_type == "fixed_large"
    assert torch.isfinite(dps.restore(y, Identity()).image).all()


def test_offline_hub_id_gives_one_actionable_error():
    dps = DPS(DPSConfig(diffusion_model="google/ddpm-ema-celebahq-256"))
    with pytest.raises(MissingCheckpointError) as err:
        dps.resolution
    msg = str(err.value)
    assert "google/ddpm-ema-celebahq-256" in msg and "--diffusion-model DIR" in msg and "\n" not in msg
    with pytest.raises(MissingCheckpointError):
        dps.check(torch.device("cpu"))


def test_missing_local_path_is_checkpoint_error():
    with pytest.raises(CheckpointError, match="not a folder"):
        DPS(DPSConfig(diffusion_model="./nowhere/model")).resolution


def test_restore_cli_documents_dps():
    pytest.importorskip("redegrade.restore")
    out = subprocess.run([sys.executable, "-m", "redegrade.restore", "--backend", "dps", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for opt in ("--diffusion-model", "--steps", "--zeta", "--early-exit"):
        assert opt in out.stdout


def test_respaced_schedule_scales_zeta_to_keep_the_total_guidance(unet, y):
    scaled = run(unet, y, steps=10, zeta=0.3, early_exit=False)
    plain = run(unet, y, steps=10, zeta=0.3, scale_zeta=False)
    assert scaled.info["zeta"] == pytest.approx(0.3 * 1000 / 10) and plain.info["zeta"] == 0.3
    assert scaled.info["residual"] < plain.info["residual"]
