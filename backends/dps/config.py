"""DPS settings (field names are the restore CLI's option names)."""
from __future__ import annotations

from dataclasses import dataclass

from redegrade.errors import ConfigError
from redegrade_dps.sampler import SPACINGS

GUIDANCES = ("norm",)
VARIABLES_LOSSES = ("lpips", "norm", "l1")


@dataclass
class DPSConfig:
    """Blind diffusion posterior sampling.

    The forward model's variables (e_g, e_l, n for the Redegrader) are fitted alongside the sampler
    with Adam on ``variables_loss`` between y and A(x̂₀). They stay frozen for the first
    ``variables_start`` fraction of the steps (x̂₀ is then a blurry mean face; letting the degradation
    explain it would bake content into e and n — the same reason RSG's first phase freezes them), then
    follow a cosine decay from ``variables_lr`` to 0 so they settle before the last, detail-adding steps.
    """

    diffusion_model: str = "google/ddpm-ema-celebahq-256"
    """diffusers hub id or local folder (UNet2DModel + scheduler), an ADM ``.pt`` file or ``adm.ffhq256``."""
    steps: int = 1000
    """Sampling steps; fewer than the model's training steps means a respaced schedule."""
    spacing: str = "even"
    """How a respaced schedule picks timesteps: ``even`` (guided-diffusion) or ``strided`` (0, k, 2k, …)."""
    zeta: float = 0.3
    """DPS step size ζ on the raw gradient of ‖y − A(x̂₀)‖ (DPS: 0.3 at 1000 steps; 0.5 for inpainting)."""
    scale_zeta: bool = True
    """A respaced schedule of n steps applies ζ·T/n per step (T the training steps), so the total guidance
    matches the full schedule's. Without it, 250 steps fit y with a quarter of the guidance: on the tiny
    benchmark (``benchmarks/dps_early_exit.py``) the residual ended 13 % above the 1000-step run and PSNR
    2.6 dB below; scaled, within 3 % and ±0.2 dB (also at 100 steps)."""
    early_exit: bool = False
    """Stop when the sample has settled (``‖y − A(x̂₀)‖`` plateaued and x̂₀ stopped moving, see
    :class:`~redegrade_dps.sampler.EarlyExit`); returns x̂₀ then."""
    early_exit_window: float = 0.05
    """Fraction of the steps over which an improvement must be seen (50 of 1000, 5 of 100)."""
    early_exit_tol: float = 0.005
    """Relative improvement of the window's best residual below which the residual counts as settled."""
    early_exit_x0_tol: float | None = 0.02
    """Relative change of x̂₀ over the window below which x̂₀ counts as settled (``None``: residual only)."""
    early_exit_after: float = 0.5
    """No exit during the first fraction of the steps (x̂₀ is still a coarse estimate there)."""
    guidance: str = "norm"
    """Guidance term: ``norm`` = DPS's plain residual norm ‖y − A(x̂₀)‖₂ (not squared)."""
    variables_loss: str = "lpips"
    """Objective for the forward-model variables: ``lpips`` (the shared objective named by ``loss``),
    ``norm`` (the guidance residual) or ``l1`` (mean absolute error)."""
    variables_lr: float = 0.01
    variables_start: float = 0.2
    """Fraction of the steps before the forward-model variables start moving."""
    loss: str = "lpips"
    """Objective name for :func:`redegrade.objective.build` (used when ``variables_loss='lpips'``)."""
    seed: int = 0
    device: str = "auto"
    snapshots: int = 4
    """Intermediate x̂₀ kept in ``Restoration.phases``."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value."""
        if self.steps < 1:
            raise ConfigError(f"--steps must be ≥ 1, got {self.steps}")
        if self.spacing not in SPACINGS:
            raise ConfigError(f"unknown spacing {self.spacing!r}; choose one of {', '.join(SPACINGS)}")
        if self.zeta < 0:
            raise ConfigError(f"--zeta must be ≥ 0, got {self.zeta}")
        if self.guidance not in GUIDANCES:
            raise ConfigError(f"unknown guidance {self.guidance!r}; choose one of {', '.join(GUIDANCES)}")
        if self.variables_loss not in VARIABLES_LOSSES:
            raise ConfigError(f"unknown variables_loss {self.variables_loss!r}; "
                              f"choose one of {', '.join(VARIABLES_LOSSES)}")
        if self.variables_lr < 0:
            raise ConfigError(f"variables_lr must be ≥ 0, got {self.variables_lr}")
        for name in ("variables_start", "early_exit_after"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")
        if not 0 < self.early_exit_window <= 1 or self.early_exit_tol < 0:
            raise ConfigError("early_exit_window must be a fraction in (0, 1] and early_exit_tol ≥ 0")
        if self.early_exit_x0_tol is not None and self.early_exit_x0_tol < 0:
            raise ConfigError(f"early_exit_x0_tol must be ≥ 0, got {self.early_exit_x0_tol}")
