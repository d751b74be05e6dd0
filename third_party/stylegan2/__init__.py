"""StyleGAN2 generator with NVIDIA's parameter names, W/W+/W++ synthesis, and safe checkpoint loading.

Entry point: :func:`load_generator` takes an NVIDIA ``.pkl`` (read by a restricted unpickler that never
imports or executes the source embedded in it), our ``.safetensors`` export, or a registry name such as
``stylegan2.ffhq1024``, and returns a :class:`Generator` with NVIDIA's call signatures::

    G = load_generator("ffhq.pkl")
    ws = G.mapping(z, None, truncation_psi=0.7)          # [B, G.num_ws, 512]
    img = G.synthesis(ws, noise_mode="const")            # [B, 3, 1024, 1024] in ≈[-1, 1]
    img = G(z, None, truncation_psi=0.7, noise_mode="const")
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from redegrade_stylegan2.networks import (Generator, MappingNetwork, SynthesisNetwork, modulated_conv2d,
                                          normalize_2nd_moment)

__all__ = ["Generator", "MappingNetwork", "SynthesisNetwork", "load_generator", "convert_pickle", "tiny_generator",
           "modulated_conv2d", "normalize_2nd_moment"]


def tiny_generator(resolution: int = 32, seed: int = 0, *, w_dim: int = 32, channels: int = 16,
                   conv_clamp: float | None = None, num_fp16_res: int = 0) -> Generator:
    """A small random-weight generator for tests: ``channels`` wide everywhere (≤ ``w_dim``, so W++ with
    V = w_dim works), 2 mapping layers, non-zero noise strengths and a non-zero ``w_avg``; eval mode,
    ``requires_grad`` off. Deterministic for a given ``seed`` (never touches the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    G = Generator(z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=resolution, img_channels=3,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=channels * resolution, channel_max=channels,
                                        conv_clamp=conv_clamp, num_fp16_res=num_fp16_res))
    with torch.no_grad():
        for name, t in list(G.named_parameters()) + list(G.named_buffers()):
            if name.endswith("resample_filter"):
                continue
            if name.endswith("noise_strength"):
                t.copy_(0.1 + 0.1 * torch.rand(t.shape, generator=g))
            elif name.endswith("w_avg"):
                t.copy_(0.5 * torch.randn(t.shape, generator=g))
            elif name.endswith("affine.bias"):
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("bias") and "mapping" not in name:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (100.0 if name.startswith("mapping.fc") else 1.0))
    return G.eval().requires_grad_(False)


def load_generator(path_or_name: str | os.PathLike, *, device: str | torch.device = "cpu",
                   which: str = "G_ema") -> Generator:
    """A StyleGAN2 :class:`Generator` (eval mode, ``requires_grad`` off) from an NVIDIA ``.pkl``
    (network ``which``: ``G_ema`` for inference, ``G`` for the training copy), a ``.safetensors`` export
    written by :func:`convert_pickle` (``which`` is then ignored), or a checkpoint name from
    :mod:`redegrade.weights` (fetched into ``$REDEGRADE_HOME`` unless offline). ``device``: ``cpu``,
    ``cuda[:N]`` or ``auto``."""
    from redegrade.settings import resolve_device
    from redegrade.weights import resolve
    from redegrade_stylegan2.export import load_safetensors
    from redegrade_stylegan2.pickle_loader import load_pickle_generator

    path = resolve(path_or_name)
    if _is_safetensors(path):
        G = load_safetensors(path)
    else:
        G = load_pickle_generator(path, which=which)
    return G.to(resolve_device(device)).eval().requires_grad_(False)


def convert_pickle(src: str | os.PathLike, dst: str | os.PathLike, *, which: str = "G_ema") -> Path:
    """Read NVIDIA pickle ``src`` without executing it and write generator ``which`` to ``dst`` in our safe
    format (one ``.safetensors`` file, constructor arguments as JSON metadata). Returns ``dst``."""
    from redegrade_stylegan2.export import save_safetensors
    from redegrade_stylegan2.pickle_loader import load_pickle_generator

    return save_safetensors(load_pickle_generator(src, which=which), dst)


def _is_safetensors(path: Path) -> bool:
    # content, not suffix: a safetensors file starts with an 8-byte little-endian header length then '{'
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 32)
