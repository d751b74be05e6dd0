"""Reading CDD's trainer checkpoints (``model_<epoch>.pt`` / ``latest.pt``) into :class:`~redegrade.model.cdd.model.CDDModel`.

The file is ``torch.save({'model': {'netE', 'netE_loc', 'netG', 'netCprs', 'netCprs_loc', 'netP'},
'epoch', 'global_step'})`` (CDD ``trainer.py: save_model``), each part a state dict; it is read with
``torch.load(weights_only=True, map_location='cpu')``, so nothing in it is executed.

**What the shapes determine** (inferred, then checked against every other tensor):
e_g encoder ``dim``, kernel and output length (``netE``: ``LPE_p.0.conv.weight``, ``LPE_p.3.conv.weight``,
``last_mlp.2.weight``); e_l encoder ``dim``, kernel and c_l (``netE_loc``: ``LPE_p.0.conv.weight``,
``LPE_p.4.weight``, ``last_mlp.2.weight``); the fused-map channels (``net.map_head``), U-Net widths and
number of levels (``net.conv_first``, ``net.conv_down<l>``), blocks per level (``net.blocks<l>[_].<i>``);
each compressor's type (``model.quantiles`` → EntropyBottleneck, ``model.Encoder.*`` → ImageCompressor),
channels, density filters, head/tail MLP depth and width.

**What they cannot determine** (read from a sidecar or flags, see :class:`~redegrade.model.cdd.options.CDDOptions`):

- ``compress_g`` / ``compress_l`` — CDD's ``network.netCprs[_loc].enabled``: whether the synthesis was
  trained on the entropy-coded codes. Both compressors are saved whether enabled or not. Unstated, they
  are assumed ``True`` (logged): ``netCprs.enabled: true`` in CDD's released WQI configs, and every config
  sets a ``lambda_bpp_l`` that only exists with ``netCprs_loc`` enabled. They change only what
  :meth:`CDDModel.quantize` (hence the Redegrader's forward) does, never :meth:`encode`/:meth:`synthesize`.
- ``local_encoder`` — ``LPEL`` or ``LPELOri`` (``netE_loc.type``): the same keys and shapes, different
  padding, except for kernel 3 where they are the same network. For another kernel an unstated type is
  refused.

Which blocks use ReLU instead of LeakyReLU (the last of ``blocks1_``) is fixed in CDD's code, not read.

The sidecar is CDD's own training YAML/JSON (``network.netCprs.enabled``, ``network.netCprs_loc.enabled``,
``network.netE_loc.type``, also checked: ``network.netE.moco_enc``, ``network.netG.type``) or a flat
JSON/YAML/dict with the keys of :class:`~redegrade.model.cdd.options.CDDOptions`.

Key names: :mod:`redegrade.model.cdd.keys`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from redegrade.errors import CheckpointError, ConfigError
from redegrade.model.cdd.config import CDDConfig
from redegrade.model.cdd.infer import infer_config
from redegrade.model.cdd.keys import PARTS, map_state
from redegrade.model.cdd.model import CDDModel
from redegrade.model.cdd.options import CDDOptions, OptionsLike

log = logging.getLogger(__name__)

IGNORED_PARTS = ("netP",)
"""Saved by CDD, not needed at inference (the WGAN critic)."""


def is_cdd_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a loaded file) has the layout of CDD's trainer checkpoints."""
    return (isinstance(obj, dict) and isinstance(obj.get("model"), dict)
            and all(isinstance(obj["model"].get(p), dict) for p in ("netE", "netG")))


def read_trainer_file(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a CDD trainer checkpoint safely (CPU tensors, no code) and check its layout."""
    from redegrade.weights.safe import torch_load

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no CDD checkpoint at {path}")
    obj = torch_load(path, what=f"CDD checkpoint {path}")
    if not is_cdd_checkpoint(obj):
        raise CheckpointError(f"{path} is not a CDD trainer checkpoint: expected {{'model': {{'netE', 'netE_loc', "
                              f"'netG', 'netCprs', 'netCprs_loc', 'netP'}}, 'epoch', 'global_step'}}, got "
                              f"{_describe(obj)}")
    return obj


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return type(obj).__name__
    inner = obj.get("model")
    if isinstance(inner, dict):
        return f"'model' with {sorted(map(str, inner))[:8]}"
    return f"keys {sorted(map(str, obj))[:8]}"


def _parts(obj: dict[str, Any], source: str) -> dict[str, dict[str, torch.Tensor]]:
    model = obj["model"]
    missing = [p for p in PARTS if p not in model]
    if missing:
        raise CheckpointError(f"{source}: CDD checkpoint lacks part(s) {', '.join(missing)} "
                              f"(has {', '.join(sorted(map(str, model)))})")
    extra = sorted(set(map(str, model)) - set(PARTS) - set(IGNORED_PARTS))
    if extra:
        raise CheckpointError(f"{source}: unexpected part(s) {', '.join(extra)} in the CDD checkpoint's 'model'")
    parts = {}
    for p in PARTS:
        sd = model[p]
        if not isinstance(sd, dict):
            raise CheckpointError(f"{source}: {p} must be a state dict, got {type(sd).__name__}")
        bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{source}: {p} holds non-tensor entries: {', '.join(bad[:5])}")
        if sd and all(k.startswith("module.") for k in sd):  # saved from a DataParallel-wrapped part
            sd = {k[len("module."):]: v for k, v in sd.items()}
        parts[p] = sd
    return parts


def from_trainer_checkpoint(obj: dict[str, Any], options: OptionsLike = None, source: str = "checkpoint"
                            ) -> tuple[CDDConfig, dict[str, torch.Tensor]]:
    """(config, our state dict) from a loaded CDD trainer checkpoint."""
    try:
        opts = CDDOptions.read(options)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    parts = _parts(obj, source)
    config = infer_config(parts, opts, source)
    with torch.device("cpu"):
        model = CDDModel(config)
    state = map_state(parts, model, source)
    assumed = [k for k in ("compress_g", "compress_l") if getattr(opts, k) is None]
    if assumed:
        log.warning("%s: %s not stated (CDD's netCprs[_loc].enabled is not saved in checkpoints); assumed true. "
                    "Give CDD's training config as a sidecar, or --compress-g/--no-compress-g etc., to change it.",
                    source, " and ".join(assumed))
    return config, state


def load_cdd(path: str | os.PathLike, options: OptionsLike = None) -> CDDModel:
    """A :class:`CDDModel` (eval mode) from a CDD trainer checkpoint file."""
    config, state = from_trainer_checkpoint(read_trainer_file(path), options, str(path))
    from redegrade.model.io import load_weights

    model = CDDModel(config)
    load_weights(model, state, source=str(path))
    return model.eval()


def convert(src: str | os.PathLike, dst: str | os.PathLike, options: OptionsLike = None) -> Path:
    """Convert a CDD trainer checkpoint into a redegrader folder (``config.json`` + ``model.safetensors``)."""
    from redegrade.model.io import save_state

    model = load_cdd(src, options)
    out = save_state(model, dst)
    log.info("converted CDD checkpoint %s into %s (%d levels, widths %s, c_l %d)", src, out, model.config.levels,
             list(model.config.widths), model.config.c_l)
    return out
