"""Scripted degradations (exact ground truth) and their differentiable approximations.

* :mod:`~redegrade.degradations.ffhqx` — RSG's FFHQ-X tasks: ``task("UNAP", "M", resolution=256, seed=0)``.
* :mod:`~redegrade.degradations.wqi` — CDD's WQI training mix: ``degrade(x, generator) -> (y, params)``.
* Building blocks: :class:`Downsample` (U), :class:`PoissonDrop` (N), :class:`JPEG` (A), :class:`Strokes` (P),
  :class:`Composed`, and :func:`diff_jpeg`.
"""
from redegrade.degradations import ffhqx, wqi
from redegrade.degradations.base import Composed, Degradation
from redegrade.degradations.ffhqx import LEVELS, TASKS_COMPOSED, TASKS_SINGLE, parse_tasks, task
from redegrade.degradations.inpaint import Strokes
from redegrade.degradations.jpeg import JPEG, diff_jpeg, jpeg_quality_of, jpeg_subsampling_of, quantization_tables
from redegrade.degradations.noise import PoissonDrop, surrogate_clamp
from redegrade.degradations.resize import Downsample
from redegrade.degradations.wqi import WQIConfig, WQIMix

__all__ = [
    "Composed", "Degradation", "Downsample", "JPEG", "LEVELS", "PoissonDrop", "Strokes", "TASKS_COMPOSED",
    "TASKS_SINGLE", "WQIConfig", "WQIMix", "diff_jpeg", "ffhqx", "jpeg_quality_of", "jpeg_subsampling_of",
    "parse_tasks", "quantization_tables", "surrogate_clamp", "task", "wqi",
]
