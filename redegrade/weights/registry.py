"""The checkpoint registry: one frozen record per file, named ``family.variant``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    manual: str | None = None
    """Set when no direct URL is known: what to download by hand from ``url`` (a page). The file is then
    never fetched; its sha256 is recorded beside it on first verified use (see ``store.record_first_use``)."""
    options: tuple[tuple[str, Any], ...] = ()
    """Loader options the file itself does not carry (e.g. ``CDDOptions`` read from the released configs)."""


_NV = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained"
_CDD_PAGE = "https://ivc.uwaterloo.ca/projects/content-degradation-disentanglement/"
_CDD_LICENCE = ("none published (CDD's README lists the licence as TODO; its model/vunet_conv.py is excluded "
                "from any future licence): ask the authors before redistributing")
_CDD_LOADER = "redegrade.model.cdd.checkpoint.load_cdd"


def _cdd_manual(which: str) -> str:
    return (f"the project page links the trained models but publishes no file names or direct URLs; download "
            f"the {which} degradation model's checkpoint (CDD's trainer format, e.g. latest.pt / model_<epoch>.pt)")
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
    # CDD's released degradation models. Options: what notebooks/configs/notebook_{ffhq,wm}.yaml state
    # (moco_enc LPE, netG sft-1-wrapper; WQI: netCprs enabled); the rest is inferred or assumed on load.
    Checkpoint("cdd.ffhq", _CDD_PAGE, "cdd-ffhq.pt", None, None, _CDD_LICENCE,
               "CDD (ICCV 2025) FFHQ-variant universal degradation model, the one used for GAN inversion",
               _CDD_LOADER, manual=_cdd_manual("FFHQ"),
               options=(("moco_enc", "LPE"), ("netg_type", "sft-1-wrapper"))),
    Checkpoint("cdd.wm", _CDD_PAGE, "cdd-wm.pt", None, None, _CDD_LICENCE,
               "CDD (ICCV 2025) universal degradation model trained on Wikimedia quality images (WQI)",
               _CDD_LOADER, manual=_cdd_manual("Wikimedia-quality-images (WQI)"),
               options=(("moco_enc", "LPE"), ("netg_type", "sft-1-wrapper"), ("compress_g", True))),
)}


def get(name: str) -> Checkpoint:
    """The record called ``name``, or an error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise CheckpointError(f"unknown checkpoint {name!r}; known: {', '.join(sorted(REGISTRY))}") from None
