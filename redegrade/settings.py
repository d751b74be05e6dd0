"""Environment-derived settings, read at call time (never cached in module globals)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from redegrade.errors import InputError


def home() -> Path:
    """Root of redegrade's cache: ``$REDEGRADE_HOME`` or ``~/.cache/redegrade``."""
    return Path(os.environ.get("REDEGRADE_HOME") or Path.home() / ".cache" / "redegrade")


def offline() -> bool:
    """True when ``REDEGRADE_OFFLINE`` (or ``HF_HUB_OFFLINE``) asks never to use the network."""
    return any(os.environ.get(k, "").lower() in {"1", "true", "yes"} for k in ("REDEGRADE_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit ``cuda`` without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device} requested but CUDA is not available here; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from exc


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with ``seed``: the only source of randomness we use."""
    return torch.Generator(device=device).manual_seed(int(seed))
