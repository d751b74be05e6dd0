"""The guided-diffusion ("ADM") UNet behind DPS's ``ffhq_10m.pt``: a reference re-implementation
(:class:`ADMUNet`, original parameter names) and its conversion into a diffusers ``UNet2DModel``.

    python -m redegrade.weights convert ffhq_10m.pt models/adm-ffhq256 --format adm
"""
from redegrade_adm.config import ADMConfig
from redegrade_adm.convert import (SCHEDULER_CONFIG, config_for, convert_checkpoint, diffusers_config, load_adm,
                                   read_state_dict, to_diffusers, to_diffusers_state_dict)
from redegrade_adm.unet import ADMUNet, timestep_embedding

__all__ = ["ADMConfig", "ADMUNet", "SCHEDULER_CONFIG", "config_for", "convert_checkpoint", "diffusers_config", "load_adm",
           "read_state_dict", "timestep_embedding", "to_diffusers", "to_diffusers_state_dict"]
