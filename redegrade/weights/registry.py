"""The checkpoint registry: one frozen record per file, named ``family.variant``."""
from __future__ import annotations

from dataclasses import dataclass

from redegrade.errors import CheckpointError


@dataclass(frozen=True)
class Checkpoint:
    """Where a checkpoint lives and what it is."""

    name: str
    url: str
    filename: str
    sha256: str | None
    """Hex digest; ``None`` when no trustworthy published value exists (then ``size`` is checked)."""
    size: int | None
    licence: str
    origin: str
    loader: str
    """Dotted path of the function that loads the file (documentation; resolved by callers)."""


_NV = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
_NV_LICENCE = "NVIDIA Source Code License-NC (non-commercial)"

REGISTRY: dict[str, Checkpoint] = {c.name: c for c in (
    Checkpoint("stylegan2.ffhq1024", f"{_NV}/ffhq.pkl", "stylegan2-ffhq1024.pkl", None, None, _NV_LICENCE,
               "NVlabs/stylegan2-ada-pytorch (converted config-f; used by RSG)", "redegrade_stylegan2.load_generator"),
    Checkpoint("stylegan2.ffhq512",
               f"{_NV}/transfer-learning-source-nets/ffhq-res512-mirror-stylegan2-noaug.pkl",
               "stylegan2-ffhq512.pkl", None, None, _NV_LICENCE, "NVlabs/stylegan2-ada-pytorch",
               "redegrade_stylegan2.load_generator"),
    Checkpoint("stylegan2.ffhq256",
               f"{_NV}/transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl",
               "stylegan2-ffhq256.pkl", None, None, _NV_LICENCE, "NVlabs/stylegan2-ada-pytorch",
               "redegrade_stylegan2.load_generator"),
    Checkpoint("stylegan2.celebahq256",
               f"{_NV}/transfer-learning-source-nets/celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl",
               "stylegan2-celebahq256.pkl", None, None, _NV_LICENCE, "NVlabs/stylegan2-ada-pytorch",
               "redegrade_stylegan2.load_generator"),
    Checkpoint("adm.ffhq256", "https://huggingface.co/deepinv/diffunet/resolve/main/diffusion_ffhq_10m.pt",
               "adm-ffhq256-10m.pt", "81d535743156ec6be34d8668e6920da94f0614074d7793a16c8fa9e306237faa",
               374_417_833, "MIT (DPS2022/diffusion-posterior-sampling)",
               "DPS ffhq_10m.pt (guided-diffusion ADM UNet), deepinv mirror", "redegrade_adm.load_adm"),
)}


def get(name: str) -> Checkpoint:
    """The record called ``name``, or an error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise CheckpointError(f"unknown checkpoint {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
