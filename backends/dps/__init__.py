"""DPS backend: blind diffusion posterior sampling on diffusers (or ADM) UNets.

Registered as ``dps`` under the ``redegrade.backends`` entry points::

    python -m redegrade.restore --backend dps --diffusion-model google/ddpm-ema-celebahq-256 in.png
"""
from redegrade_dps.backend import DPS
from redegrade_dps.config import DPSConfig
from redegrade_dps.models import EpsModel, NoiseSchedule, as_eps_model, load_eps_model
from redegrade_dps.sampler import (EarlyExit, Schedule, ancestral_step, guidance_step, log_variance, predict_x0,
                                   respace)

__all__ = ["DPS", "DPSConfig", "EpsModel", "NoiseSchedule", "as_eps_model", "load_eps_model", "EarlyExit",
           "Schedule", "ancestral_step", "guidance_step", "log_variance", "predict_x0", "respace"]
