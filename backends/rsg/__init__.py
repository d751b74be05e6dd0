"""The RSG backend (``redegrade.backends`` entry point ``rsg``): StyleGAN2 inversion V → W → W+ → W++."""
from redegrade_rsg.backend import RSG
from redegrade_rsg.config import Phase, RSGConfig

__all__ = ["RSG", "RSGConfig", "Phase"]
