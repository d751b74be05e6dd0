"""DPS update rules as small functions of tensors (the "scheduler" half of the backend).

Notation (Ho et al. 2020; DPS, Chung et al. 2023): ᾱ_t the cumulative product of (1 − β_t),
x̂₀ = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t, the posterior q(x_{t−1} | x_t, x̂₀) = N(μ, σ²) and the DPS step
``x_{t−1} = x'_{t−1} − ζ ∇_{x_t} ‖y − A(x̂₀)‖``. A respaced schedule keeps a subset of the training
timesteps and recomputes β from ᾱ at the kept steps (guided-diffusion's respacing; diffusers'
``DDPMScheduler.set_timesteps`` does the same), so a learned-range variance interpolates between
the *respaced* β and posterior variance.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from redegrade.errors import ConfigError

if TYPE_CHECKING:
    from redegrade_dps.models import EpsModel

SPACINGS = ("even", "strided")
VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def respace(num_train_timesteps: int, steps: int, spacing: str = "even") -> list[int]:
    """The kept training timesteps, ascending.

    ``even``: ``steps`` values rounded from an even grid over [0, T−1] (guided-diffusion's
    ``space_timesteps`` with one section; includes 0 and T−1). ``strided``: 0, k, 2k, … with
    k = T // steps (DDIM / diffusers' "leading" spacing). ``steps == T`` keeps every step.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ConfigError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if steps == num_train_timesteps:
        return list(range(num_train_timesteps))
    if spacing == "strided":
        k = num_train_timesteps // steps
        return [i * k for i in range(steps)]
    if steps == 1:
        return [num_train_timesteps - 1]
    stride = (num_train_timesteps - 1) / (steps - 1)
    return [round(i * stride) for i in range(steps)]


@dataclass(frozen=True)
class Schedule:
    """Per-step coefficients of a (possibly respaced) DDPM, float64, index i ↔ ``timesteps[i]``."""

    timesteps: tuple[int, ...]
    """Training timesteps fed to the network (raw integers), ascending."""
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    betas: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef_x0: torch.Tensor
    posterior_mean_coef_xt: torch.Tensor

    @classmethod
    def spaced(cls, train_betas: torch.Tensor, timesteps: list[int] | tuple[int, ...]) -> "Schedule":
        """The schedule that visits ``timesteps`` of a model trained with ``train_betas``."""
        train_abar = torch.cumprod(1.0 - train_betas.double(), dim=0)
        abar = train_abar[list(timesteps)]
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # log of the posterior variance with the first entry (0) replaced by the second, as guided-diffusion
        clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(post_var) > 1 else torch.log(betas)
        return cls(tuple(int(t) for t in timesteps), abar, abar_prev, betas, post_var, clipped,
                   betas * abar_prev.sqrt() / (1.0 - abar), (1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar))

    def __len__(self) -> int:
        return len(self.timesteps)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_cumprod: float, *, clip: bool = True) -> torch.Tensor:
    """x̂₀ = √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε, clamped to [−1, 1] when ``clip`` (gradient 0 where clamped)."""
    x0 = math.sqrt(1.0 / alpha_cumprod) * x_t - math.sqrt(1.0 / alpha_cumprod - 1.0) * eps
    return x0.clamp(-1.0, 1.0) if clip else x0


def log_variance(schedule: Schedule, i: int, kind: str, v: torch.Tensor | None = None) -> torch.Tensor | float:
    """log σ² of step ``i``: ``fixed_small`` (posterior, clipped), ``fixed_large`` (β) or
    ``learned_range`` (v ∈ [−1, 1] interpolates log β and the clipped posterior log variance)."""
    if kind == "fixed_small":
        return float(schedule.posterior_log_variance_clipped[i])
    if kind == "fixed_large":
        # guided-diffusion uses β with its first entry replaced by the posterior variance
        beta = schedule.posterior_variance[1] if i == 0 and len(schedule) > 1 else schedule.betas[i]
        return math.log(float(beta))
    if kind == "learned_range":
        if v is None:
            raise ValueError("learned_range needs the model's variance output v")
        lo, hi = float(schedule.posterior_log_variance_clipped[i]), math.log(float(schedule.betas[i]))
        frac = (v + 1.0) / 2.0
        return frac * hi + (1.0 - frac) * lo
    raise ConfigError(f"unknown variance type {kind!r}; choose one of {', '.join(VARIANCES)}")


def ancestral_step(schedule: Schedule, i: int, x0: torch.Tensor, x_t: torch.Tensor,
                   log_var: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """x'_{t−1} = μ(x̂₀, x_t) + exp(½ log σ²)·z, with z = 0 at the last step (i = 0)."""
    mean = float(schedule.posterior_mean_coef_x0[i]) * x0 + float(schedule.posterior_mean_coef_xt[i]) * x_t
    if i == 0:
        return mean
    std = torch.exp(0.5 * log_var) if isinstance(log_var, torch.Tensor) else math.exp(0.5 * log_var)
    return mean + std * noise


def guidance_step(x_prev: torch.Tensor, grad: torch.Tensor | None, zeta: float) -> torch.Tensor:
    """DPS's correction ``x_{t−1} = x'_{t−1} − ζ·∇_{x_t}‖y − A(x̂₀)‖`` (the raw, unnormalised gradient)."""
    return x_prev if grad is None or zeta == 0 else x_prev - zeta * grad


@dataclass(frozen=True)
class DPSStep:
    """What :func:`sample_dps` tells its callback after each step."""

    k: int
    """Steps done, 1 … len(schedule)."""
    i: int
    """Schedule index of the step just taken (len(schedule) − 1 … 0; 0 is the last)."""
    t: int
    """Its training timestep."""
    x: torch.Tensor
    """x_{t−1}, the sample after the step (detached)."""
    x0: torch.Tensor
    """x̂₀ predicted at x_t (detached)."""
    residual: torch.Tensor
    """‖y − A(x̂₀)‖ as ``measure`` returned it (0-dim, detached, on the sample's device)."""


#: ``measure(x̂₀, fit)`` → (‖y − A(x̂₀)‖, the loss the forward model's variables descend when ``fit``, else None).
Measure = Callable[[torch.Tensor, bool], tuple[torch.Tensor, "torch.Tensor | None"]]


def sample_dps(model: EpsModel, x: torch.Tensor, schedule: Schedule, measure: Measure, *, zeta: float,
               generator: torch.Generator, variables: Sequence[torch.Tensor] = (), variables_after: int = 0,
               callback: Callable[[DPSStep], bool | None] | None = None) -> torch.Tensor:
    """Diffusion posterior sampling (Chung et al., ICLR 2023, Algorithm 1) from the noise ``x`` = x_T.

    Each step, t = T−1 … 0: ε (and v) from ``model`` at x_t → x̂₀ (:func:`predict_x0`, clipped as the
    model's schedule says) → ``measure(x̂₀)`` → ancestral x'_{t−1} (:func:`ancestral_step`, noise drawn
    from ``generator`` on the CPU) → ``x_{t−1} = x'_{t−1} − ζ ∇_{x_t}‖y − A(x̂₀)‖`` (:func:`guidance_step`).
    From step ``variables_after + 1`` on, the gradients of the variables' loss reach ``variables``' ``.grad``
    (the callback steps their optimiser). The graph is dropped every step.

    ``callback(step)`` runs after every step; a true return stops the sampler, which then returns that
    step's x̂₀. Otherwise the result is x₀.
    """
    need_x_grad = zeta > 0
    clip, variance_type = model.schedule.clip_sample, model.schedule.variance_type
    x0 = x
    for k, i in enumerate(reversed(range(len(schedule))), start=1):
        t = schedule.timesteps[i]
        fit = bool(variables) and k > variables_after
        x_t = x.detach().requires_grad_(need_x_grad)
        with torch.set_grad_enabled(need_x_grad or fit):
            with torch.set_grad_enabled(need_x_grad):
                eps, v = model(x_t, t)
                x0 = predict_x0(x_t, eps, float(schedule.alphas_cumprod[i]), clip=clip)
            residual, variables_loss = measure(x0, fit)
            grad_x = None
            if fit and variables_loss is not None:
                grads = torch.autograd.grad(variables_loss, list(variables), retain_graph=need_x_grad,
                                            allow_unused=True)
                for p, g in zip(variables, grads):
                    p.grad = g
            if need_x_grad:
                (grad_x,) = torch.autograd.grad(residual, x_t)
        with torch.no_grad():
            x0 = x0.detach()
            lv = log_variance(schedule, i, variance_type, None if v is None else v.detach())
            noise = torch.randn(x.shape, generator=generator).to(x.device) if i > 0 else torch.zeros_like(x)
            x = guidance_step(ancestral_step(schedule, i, x0, x_t.detach(), lv, noise), grad_x, zeta)
        if callback is not None and callback(DPSStep(k, i, t, x, x0, residual.detach())):
            return x0
    return x


class EarlyExit:
    """Stop when the sample has settled: the measurement residual has plateaued and, when given, x̂₀ has
    stopped moving (a plateau criterion in the spirit of UP-ZeroIR's self-assessed quality).

    After each step, :meth:`update` returns True when

    - the best residual of the last ``window`` steps improves on the best before them by less than
      ``tol`` (relative), and
    - with ``x0_tol``: x̂₀ moved by less than ``x0_tol`` over those steps, ‖x̂₀ − x̂₀₋window‖ / ‖x̂₀‖.

    The residual alone stops too early where guidance is still pulling detail in at a flat residual;
    x̂₀'s change alone cannot tell a settled sample from one that settled far from y. No decision is
    taken in the first ``min_steps`` steps or before ``2·window`` values exist.
    """

    def __init__(self, window: int, tol: float, *, min_steps: int = 0, x0_tol: float | None = None):
        if window < 1:
            raise ConfigError(f"early_exit_window must be ≥ 1 step, got {window}")
        if tol < 0 or (x0_tol is not None and x0_tol < 0):
            raise ConfigError(f"early exit tolerances must be ≥ 0, got {tol} and {x0_tol}")
        self.window, self.tol, self.min_steps, self.x0_tol = window, tol, min_steps, x0_tol
        self.values: list[float] = []
        self._x0: deque[torch.Tensor] = deque(maxlen=window + 1)
        self.x0_change: float | None = None
        """Relative change of x̂₀ over the last window (after :meth:`update` had ``window + 1`` of them)."""

    def update(self, value: float, x0: torch.Tensor | None = None) -> bool:
        self.values.append(value)
        if x0 is not None:
            self._x0.append(x0.detach())
            if len(self._x0) > self.window:
                old, new = self._x0[0], self._x0[-1]
                self.x0_change = float(torch.linalg.norm(new - old) / torch.linalg.norm(new).clamp_min(1e-12))
        n = len(self.values)
        if n < max(self.min_steps, 2 * self.window):
            return False
        before = min(self.values[: n - self.window])
        recent = min(self.values[n - self.window:])
        if (before - recent) >= self.tol * max(abs(before), 1e-12):
            return False
        return self.x0_tol is None or (self.x0_change is not None and self.x0_change < self.x0_tol)
