"""The DPS backend: diffusion posterior sampling with a (blind) forward model in the loop."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from redegrade import settings
from redegrade.backend import Backend, Option, Progress, Restoration, StepInfo
from redegrade.errors import CheckpointError, MissingCheckpointError, ShapeError
from redegrade.forward import ForwardModel
from redegrade.image import check_image
from redegrade_dps.config import DPSConfig
from redegrade_dps.models import EpsModel, _is_adm, as_eps_model, load_eps_model
from redegrade_dps.sampler import DPSStep, EarlyExit, Schedule, respace, sample_dps

log = logging.getLogger(__name__)
PHASE = "dps"


class DPS(Backend):
    """Diffusion posterior sampling (Chung et al., ICLR 2023) on a diffusers or ADM UNet.

    Each step: ε (and v) from the UNet at x_t → x̂₀ (clipped) → ancestral x'_{t−1} → the DPS correction
    ``x_{t−1} = x'_{t−1} − ζ ∇_{x_t}‖y − A(x̂₀)‖``, while the forward model's variables take one Adam step
    on ``variables_loss(y, A(x̂₀))``. One UNet forward and (when ζ > 0) one backward per step; the graph
    is dropped every step, so memory is that of a single UNet evaluation.

    ``prior`` may be an :class:`~redegrade_dps.models.EpsModel` or a bare ``UNet2DModel`` (DPS's linear
    1000-step schedule is then assumed); otherwise ``config.diffusion_model`` is loaded on first use.
    """

    Config = DPSConfig
    options = (
        Option("--diffusion-model", "diffusion_model", metavar="NAME|PATH", checkpoint=True,
               help="Diffusion model: a diffusers UNet2DModel folder or hub id, or an ADM .pt "
                    "(default: google/ddpm-ema-celebahq-256)."),
        Option("--zeta", "zeta", type=float, help="Guidance step size ζ (default 0.3)."),
        Option("--early-exit", "early_exit", type=bool,
               help="Stop once the objective has stopped improving over a window (reports the NFE used)."),
    )

    def __init__(self, config: DPSConfig | None = None, *, prior: torch.nn.Module | None = None,
                 objective: Callable[..., torch.Tensor] | None = None):
        super().__init__(config, prior=prior, objective=objective)
        self.config.validate()
        self._model: EpsModel | None = as_eps_model(prior) if prior is not None else None

    @property
    def model(self) -> EpsModel:
        """The ε-model, loaded from ``config.diffusion_model`` on first use."""
        if self._model is None:
            self._model = load_eps_model(self.config.diffusion_model)
        return self._model

    @property
    def resolution(self) -> int:
        return self.model.sample_size

    def check(self, device: torch.device) -> None:
        """Cheap viability check: the diffusion model must be loadable here without surprises."""
        if self._model is not None:
            return
        from pathlib import Path

        from redegrade.weights import REGISTRY, cache_path

        name = str(self.config.diffusion_model)
        local = Path(name).expanduser()
        if _is_adm(name):
            if name in REGISTRY:
                if settings.offline() and not cache_path(name).is_file():
                    raise MissingCheckpointError(f"{name} is not cached and REDEGRADE_OFFLINE is set; "
                                                 f"run `python -m redegrade.weights fetch {name}` with internet")
            elif not local.is_file():
                raise MissingCheckpointError(f"diffusion model {name}: no such ADM checkpoint file")
            return
        if local.is_dir():
            if not any((local / sub / "config.json").is_file() for sub in ("", "unet")):
                raise CheckpointError(f"diffusion model {name} is a folder without a diffusers UNet2DModel "
                                      "(no config.json at its root or in unet/)")
            return
        if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise CheckpointError(f"diffusion model {name} is neither a folder with a diffusers UNet2DModel, an ADM "
                                  ".pt/.pth file, nor a Hugging Face hub id (owner/name)")
        if settings.offline():
            from huggingface_hub import try_to_load_from_cache

            try:
                cached = [try_to_load_from_cache(name, f) for f in ("config.json", "unet/config.json")]
            except ValueError as exc:  # huggingface_hub's HFValidationError: not a valid repo id
                raise CheckpointError(f"diffusion model {name!r} is not a valid Hugging Face hub id "
                                      f"({str(exc).splitlines()[0]})") from None
            if not any(isinstance(c, str) for c in cached):
                raise MissingCheckpointError(f"diffusion model {name!r} is not in the Hugging Face cache and "
                                             "the network is off; pass --diffusion-model LOCAL_FOLDER")

    def _variables_objective(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
        kind = self.config.variables_loss
        if kind == "norm":
            return lambda y, y_hat, mask=None: torch.linalg.norm(y - y_hat)
        if kind == "l1":
            return lambda y, y_hat, mask=None: (y - y_hat).abs().mean()
        return self.objective()

    def restore(self, y: torch.Tensor, forward_model: ForwardModel, *,
                progress: Progress | None = None) -> Restoration:
        """Sample x ~ p(x | y) under ``forward_model``; ``y`` is [1,3,R,R] at the model resolution R.

        ``forward_model`` must already be ``reset`` on ``y``; its variables are optimised in place.
        """
        cfg = self.config
        check_image(y, "observation")
        device = settings.resolve_device(cfg.device)
        model = self.model.to(device)
        sched_train = model.schedule
        schedule = Schedule.spaced(sched_train.betas, respace(sched_train.num_train_timesteps, cfg.steps, cfg.spacing))
        n_steps, res = len(schedule), model.sample_size
        # ζ is per training step: a respaced step stands for num_train_timesteps / n_steps of them
        zeta = cfg.zeta * sched_train.num_train_timesteps / n_steps if cfg.scale_zeta else cfg.zeta

        # 1. observation and forward model (already reset on y by the caller, as for every backend)
        y = y.to(device=device, dtype=torch.float32)
        forward_model.to(device)  # its variables too (reset on another device)
        with torch.no_grad():
            probe = forward_model(torch.zeros(1, 3, res, res, device=device))
        if probe.shape != y.shape:
            raise ShapeError(f"the observation is {'×'.join(map(str, y.shape[-2:]))} but the forward model maps the "
                             f"diffusion model's {res}×{res} output to {'×'.join(map(str, probe.shape[-2:]))}; "
                             f"bring the input to {res}×{res} first")
        variables = forward_model.variables()
        fit_vars = bool(variables) and cfg.variables_lr > 0
        optimiser = torch.optim.Adam(variables, lr=cfg.variables_lr) if fit_vars else None
        var_loss = self._variables_objective() if fit_vars else None
        if isinstance(var_loss, torch.nn.Module):
            var_loss.to(device)
        start = int(round(cfg.variables_start * n_steps))
        mask = forward_model.mask()
        mask = None if mask is None else mask.to(device)

        # 2. initial noise (CPU generator, so a seed gives the same sample on any device)
        gen = settings.generator(cfg.seed)
        x_T = torch.randn(1, 3, res, res, generator=gen)
        # the window is a fraction of the schedule, so a respaced run judges the same stretch of t
        window = max(1, round(cfg.early_exit_window * n_steps))
        exit_rule = EarlyExit(window, cfg.early_exit_tol, min_steps=int(cfg.early_exit_after * n_steps),
                              x0_tol=cfg.early_exit_x0_tol) if cfg.early_exit else None
        keep = {max(1, round(n_steps * (k + 1) / (cfg.snapshots + 1))) for k in range(cfg.snapshots)}
        history: list[StepInfo] = []
        phases: dict[str, torch.Tensor] = {}
        done = {"nfe": 0, "exit_step": None}

        def measure(x0: torch.Tensor, fit: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
            y_hat = forward_model(x0)
            residual = torch.linalg.norm(y - y_hat)        # DPS: ‖y − A(x̂₀)‖₂, not squared
            if not fit:
                return residual, None
            return residual, residual if cfg.variables_loss == "norm" else var_loss(y, y_hat, mask)

        def callback(step: DPSStep) -> bool:
            done["nfe"] = step.k
            lr = None
            if fit_vars and step.k > start:
                lr = cfg.variables_lr * 0.5 * (1 + math.cos(math.pi * (step.k - start - 1) / max(1, n_steps - start)))
                for group in optimiser.param_groups:
                    group["lr"] = lr
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
            info = StepInfo(PHASE, step.k, n_steps, float(step.residual), lr)
            history.append(info)
            if progress is not None:
                progress(info)
            if step.k in keep:
                phases[f"x0_t{step.t}"] = step.x0.cpu()
            if exit_rule is not None and step.i > 0 and exit_rule.update(info.loss, step.x0):
                done["exit_step"] = step.k
                log.info("early exit after %d of %d steps: over the last %d steps ‖y − A(x̂₀)‖ improved by < %.3g%% "
                         "and x̂₀ moved by %.3g%%", step.k, n_steps, window, 100 * cfg.early_exit_tol,
                         100 * (exit_rule.x0_change or 0.0))
                return True
            return False

        # 3. the loop, t = T−1 … 0
        sample = sample_dps(model, x_T.to(device), schedule, measure, zeta=zeta, generator=gen,
                            variables=variables if fit_vars else (), variables_after=start, callback=callback)
        nfe, exit_step = done["nfe"], done["exit_step"]

        # 4. result: the final sample, or x̂₀ where the sampler stopped early
        image = sample.detach().clamp(-1, 1)
        with torch.no_grad():
            redegraded = forward_model(image)
        state = {name: p.detach().cpu() for name, p in forward_model.named_variables().items()}
        state["x_T"] = x_T
        residual_out = float(torch.linalg.norm(y - redegraded))
        return Restoration(image.cpu(), redegraded.detach().cpu(), state, history, phases,
                           {"nfe": nfe, "early_exit_step": exit_step, "steps": n_steps,
                            "timesteps": list(schedule.timesteps), "residual": residual_out, "zeta": zeta,
                            "final_loss": residual_out})
