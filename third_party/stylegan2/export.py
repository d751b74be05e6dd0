"""Our safe StyleGAN2 format: one ``.safetensors`` file holding the generator's state dict (NVIDIA's
names) with its constructor arguments as JSON in the metadata (``redegrade.init_kwargs``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from redegrade.errors import CheckpointError, ConfigError
from redegrade.files import atomic_path
from redegrade_stylegan2.networks import Generator
from redegrade_stylegan2.pickle_loader import load_state_strict

FORMAT = "redegrade.stylegan2.generator"
VERSION = "1"


def save_safetensors(G: Generator, dst: str | os.PathLike) -> Path:
    """Write ``G`` to ``dst`` atomically (nothing is left at ``dst`` if writing fails)."""
    dst = Path(dst)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in G.state_dict().items()}
    meta = {"format": FORMAT, "version": VERSION, "init_kwargs": json.dumps(G.init_kwargs, sort_keys=True)}
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return dst


def load_safetensors(path: str | os.PathLike) -> Generator:
    """A :class:`Generator` from a file written by :func:`save_safetensors`."""
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a redegrade StyleGAN2 export "
                              f"(format {meta.get('format')!r}); convert NVIDIA pickles with "
                              f"`python -m redegrade.weights convert IN.pkl OUT.safetensors`")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has export version {meta.get('version')!r}; this redegrade reads {VERSION}")
    try:
        G = Generator(**json.loads(meta["init_kwargs"]))
    except (KeyError, json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: unusable generator arguments in the metadata ({exc})") from exc
    load_state_strict(G, tensors, str(path))
    return G.eval().requires_grad_(False)
