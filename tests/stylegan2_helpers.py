"""Helpers shared by the StyleGAN2 tests (test_stylegan2_*.py); the ``z`` fixture is in conftest.py."""
from __future__ import annotations

import torch


RES = 32


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)
