"""Environment-derived settings, read at call time (never cached in module globals). torch is imported
only by the functions that need it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from redegrade.errors import InputError

if TYPE_CHECKING:
    import torch


def home() -> Path:
    """Root of redegrade's cache: ``$REDEGRADE_HOME`` or ``~/.cache/redegrade``."""
    return Path(os.environ.get("REDEGRADE_HOME") or Path.home() / ".cache" / "redegrade")


def data_dir() -> Path:
    """Data shipped inside the package (``redegrade/data``): the default redegrader, example images."""
    return Path(__file__).resolve().parent / "data"


#: Degradation models shipped inside the package, by name → folder under :func:`data_dir`: ``wqi`` is
#: trained on CDD's Wikimedia-quality mix (photos; transfer's default), ``ffhqx`` on RSG's 31 FFHQ-X
#: tasks (restoration's default). Each folder holds config.json, model.safetensors and MODEL_CARD.md.
BUNDLED_REDEGRADERS = {"wqi": "redegrader", "ffhqx": "redegrader-ffhqx"}


def bundled_redegrader(name: str) -> Path | None:
    """The folder of shipped model ``name``, or None when ``name`` is not one."""
    folder = BUNDLED_REDEGRADERS.get(str(name))
    return None if folder is None else data_dir() / folder


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub`` caches the weights file at ``url`` (torchvision's backbones, pytorch-fid)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def offline() -> bool:
    """True when ``REDEGRADE_OFFLINE`` (or ``HF_HUB_OFFLINE``) asks never to use the network."""
    return any(os.environ.get(k, "").lower() in {"1", "true", "yes"} for k in ("REDEGRADE_OFFLINE", "HF_HUB_OFFLINE"))


def available_devices() -> list[str]:
    """The devices torch reports as usable here, e.g. ``["cpu", "cuda", "cuda:0"]``."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        found.append("mps")
    if getattr(torch, "xpu", None) is not None and torch.xpu.is_available():
        found += ["xpu", *(f"xpu:{i}" for i in range(torch.xpu.device_count()))]
    return found


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else must be a device torch reports as
    available here (``cpu``, ``cuda[:N]``, ``mps``, ``xpu[:N]``), else :class:`InputError`."""
    import torch

    if isinstance(device, torch.device):
        return device
    text = str(device).strip()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usable = available_devices()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {text!r}; use auto or one available here: {', '.join(usable)}") from None
    if str(dev) not in usable and not (dev.type == "cpu" and dev.index in (None, 0)):
        what = "CUDA is not available here" if dev.type == "cuda" and not torch.cuda.is_available() else \
            "it is not available here"
        raise InputError(f"--device {text} requested but {what}; use auto or one of: {', '.join(usable)}")
    return dev


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with ``seed``: the only source of randomness we use."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))
