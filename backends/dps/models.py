"""ε-prediction networks behind one interface, and loading them by hub id, folder or ADM file.

:class:`EpsModel` wraps a diffusers ``UNet2DModel`` (3 channels: ε; 6: ε and the learned-range
variance value v) or the reference ADM UNet, together with its training noise schedule, so the
sampler never asks which network it got.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from redegrade import settings
from redegrade.errors import CheckpointError, ConfigError, MissingCheckpointError

log = logging.getLogger(__name__)

# DPS's configs/diffusion_config.yaml: 1000 linear steps, β from 1e-4 to 0.02.
DEFAULT_TRAIN_STEPS, DEFAULT_BETA_START, DEFAULT_BETA_END = 1000, 1e-4, 0.02
_VARIANCE_NAMES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
                   "fixed_large_log": "fixed_large", "learned_range": "learned_range"}


@dataclass(frozen=True)
class NoiseSchedule:
    """The training schedule of a diffusion model: β_t for t = 0…T−1 and the sampler's variance rule."""

    betas: torch.Tensor
    variance_type: str = "fixed_small"
    clip_sample: bool = True

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    @classmethod
    def linear(cls, *, variance_type: str = "fixed_small", steps: int = DEFAULT_TRAIN_STEPS,
               beta_start: float = DEFAULT_BETA_START, beta_end: float = DEFAULT_BETA_END) -> "NoiseSchedule":
        return cls(torch.linspace(beta_start, beta_end, steps, dtype=torch.float64), variance_type)

    @classmethod
    def from_scheduler(cls, scheduler: Any, *, learned_sigma: bool) -> "NoiseSchedule":
        """From a diffusers scheduler object or its config dict (DDPM-style, ε-prediction)."""
        from redegrade import _compat  # noqa: F401
        from diffusers import DDPMScheduler

        if isinstance(scheduler, dict):
            scheduler = DDPMScheduler.from_config(scheduler)
        cfg = scheduler.config
        if cfg.get("prediction_type", "epsilon") != "epsilon":
            raise ConfigError(f"DPS here needs an ε-prediction model; the scheduler says "
                              f"prediction_type={cfg.get('prediction_type')!r}")
        vt = cfg.get("variance_type", "fixed_small")
        if learned_sigma:
            if vt != "learned_range":
                log.info("the UNet predicts a variance (6 channels): using learned_range, not %s", vt)
            vt = "learned_range"
        elif vt not in _VARIANCE_NAMES or vt == "learned_range":
            raise ConfigError(f"variance_type {vt!r} is not supported for a 3-channel model; "
                              "use fixed_small or fixed_large")
        return cls(scheduler.betas.double().clone(), _VARIANCE_NAMES[vt], bool(cfg.get("clip_sample", True)))


class EpsModel(nn.Module):
    """``forward(x_t, t) -> (ε, v or None)`` for a diffusers ``UNet2DModel`` or an ADM UNet.

    Weights are frozen (no parameter gradients); gradients flow to ``x_t`` only.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule | None = None, *, sample_size: int | None = None):
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        cfg = getattr(net, "config", None)
        if hasattr(cfg, "model_channels"):                           # redegrade_adm.ADMUNet
            self.kind, in_ch, out_ch, size = "adm", cfg.in_channels, cfg.out_channels, cfg.image_size
        elif isinstance(cfg, dict) and "out_channels" in cfg:         # diffusers UNet2DModel
            self.kind, in_ch, out_ch, size = "diffusers", cfg["in_channels"], cfg["out_channels"], cfg["sample_size"]
        else:
            raise ConfigError(f"cannot use {type(net).__name__} as a diffusion prior: expected a diffusers "
                              "UNet2DModel or a redegrade_adm.ADMUNet")
        if out_ch not in (in_ch, 2 * in_ch):
            raise ConfigError(f"UNet has {out_ch} output channels for {in_ch} input channels; expected ε "
                              f"({in_ch}) or ε and a variance ({2 * in_ch})")
        self.in_channels, self.learned_sigma = in_ch, out_ch == 2 * in_ch
        size = sample_size or size
        self.sample_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        if schedule is None:
            schedule = NoiseSchedule.linear(variance_type="learned_range" if self.learned_sigma else "fixed_small")
        if self.learned_sigma != (schedule.variance_type == "learned_range"):
            raise ConfigError(f"schedule variance {schedule.variance_type!r} does not fit a UNet with "
                              f"{out_ch} output channels")
        self.schedule = schedule

    def forward(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        out = self.net(x, tt) if self.kind == "adm" else self.net(x, tt).sample
        if self.learned_sigma:
            return out[:, : self.in_channels], out[:, self.in_channels:]
        return out, None


def as_eps_model(prior: Any, scheduler: Any | None = None) -> EpsModel:
    """Wrap a prior as an :class:`EpsModel`.

    Accepted: an ``EpsModel``; a ``UNet2DModel`` or ``ADMUNet`` (with ``scheduler``, a diffusers
    scheduler or its config dict; without one DPS's linear 1000-step schedule); a ``(unet, scheduler)``
    pair; a ``{"unet": ..., "scheduler": ...}`` dict; or a diffusers pipeline with ``.unet``/``.scheduler``.
    """
    if isinstance(prior, EpsModel):
        return prior
    if isinstance(prior, (tuple, list)) and len(prior) == 2:
        return as_eps_model(prior[0], prior[1])
    if isinstance(prior, dict) and "unet" in prior:
        return as_eps_model(prior["unet"], prior.get("scheduler"))
    if not isinstance(prior, nn.Module) and hasattr(prior, "unet"):  # a diffusers pipeline
        return as_eps_model(prior.unet, getattr(prior, "scheduler", None))
    cfg = getattr(prior, "config", None)
    learned = False
    if hasattr(cfg, "learn_sigma"):                                  # redegrade_adm.ADMConfig
        learned = cfg.learn_sigma
    elif isinstance(cfg, dict) and "out_channels" in cfg:             # diffusers FrozenDict
        learned = cfg["out_channels"] == 2 * cfg["in_channels"]
    schedule = NoiseSchedule.from_scheduler(scheduler, learned_sigma=learned) if scheduler is not None else None
    return EpsModel(prior, schedule)


def _is_adm(name: str) -> bool:
    from redegrade.weights import REGISTRY

    return name.endswith((".pt", ".pth")) or (name in REGISTRY and name.startswith("adm."))


def load_eps_model(name_or_path: str | os.PathLike) -> EpsModel:
    """Load a diffusion prior.

    - ``adm.ffhq256`` or a ``.pt`` file: a guided-diffusion state dict (DPS's ``ffhq_10m.pt``) run
      through :mod:`redegrade_adm` (fetched into the redegrade cache when a registry name);
    - a local folder: a diffusers ``UNet2DModel`` (at the root or in ``unet/``) and, if present, its
      ``scheduler_config.json`` (root or ``scheduler/``), e.g. the output of ``redegrade.weights convert``;
    - otherwise a Hugging Face hub id, through diffusers' own ``from_pretrained`` cache.
    """
    from redegrade import _compat  # noqa: F401  (diffusers imports torchvision)

    name = str(name_or_path)
    if _is_adm(name):
        from redegrade_adm import load_adm
        from redegrade.weights import resolve

        return EpsModel(load_adm(resolve(name)))
    from diffusers import DDPMScheduler, UNet2DModel

    local = Path(name).expanduser()
    if local.is_dir():
        sub = "unet" if (local / "unet" / "config.json").is_file() and not (local / "config.json").is_file() else None
        try:
            unet = UNet2DModel.from_pretrained(local, subfolder=sub, low_cpu_mem_usage=False)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot load a diffusers UNet2DModel from {local}: {first}") from exc
        return as_eps_model(unet, _local_scheduler(local, DDPMScheduler))
    if local.exists() or name.startswith((".", "/", "~")):
        raise CheckpointError(f"diffusion model {name} is not a folder with a diffusers UNet2DModel nor an ADM .pt file")
    offline = settings.offline()
    try:
        unet, scheduler = _from_hub(name, UNet2DModel, DDPMScheduler, local_files_only=offline)
    except (OSError, ValueError) as exc:
        if offline:
            why = "offline (REDEGRADE_OFFLINE/HF_HUB_OFFLINE is set) and not in the Hugging Face cache"
        elif _unreachable(exc):
            why = "the Hugging Face hub cannot be reached and it is not in the local cache"
        else:
            why = f"download failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        raise MissingCheckpointError(
            f"diffusion model {name!r} is not available ({why}); on a machine with internet run "
            f"`huggingface-cli download {name} --local-dir DIR`, copy DIR here and pass --diffusion-model DIR"
        ) from exc
    return as_eps_model(unet, scheduler)


def _local_scheduler(folder: Path, cls: Any) -> Any | None:
    for sub in (None, "scheduler"):
        where = folder / sub if sub else folder
        if (where / "scheduler_config.json").is_file():
            return cls.from_pretrained(folder, subfolder=sub)
    log.info("no scheduler_config.json in %s: using DPS's linear 1000-step schedule (β 1e-4 → 0.02)", folder)
    return None


def _unreachable(exc: BaseException) -> bool:
    """Whether an error (or its causes) says the hub could not be reached, rather than "no such file"."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionError) or type(seen).__name__ in {
                "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "OfflineModeIsEnabled"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _from_hub(repo: str, unet_cls: Any, sched_cls: Any, *, local_files_only: bool) -> tuple[Any, Any]:
    # Hub DDPM repos keep the UNet at the root (google/ddpm-*, older layout) or in unet/ (pipeline layout).
    kw = {"local_files_only": local_files_only, "low_cpu_mem_usage": False}
    try:
        unet = unet_cls.from_pretrained(repo, **kw)
    except (OSError, ValueError) as exc:
        if _unreachable(exc):  # no second round of network retries for the other layout
            raise
        unet = unet_cls.from_pretrained(repo, subfolder="unet", **kw)
    for sub in (None, "scheduler"):
        try:
            return unet, sched_cls.from_pretrained(repo, subfolder=sub, local_files_only=local_files_only)
        except (OSError, ValueError):
            continue
    log.info("no scheduler config in %s: using DPS's linear 1000-step schedule", repo)
    return unet, None
