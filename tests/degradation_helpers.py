"""Helpers shared by the degradation tests (test_degradations_*.py); the ``face`` fixture is in conftest.py."""
from __future__ import annotations

import torch


R = 64


def grey(value: float, size: int = R) -> torch.Tensor:
    """A constant image whose [0,1] intensity is ``value``."""
    return torch.full((1, 3, size, size), value * 2 - 1)


def unit(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2
