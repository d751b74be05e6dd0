"""Reading and writing the universal degradation model.

Three on-disk forms, all read by :func:`load_state`:

- a folder with ``config.json`` (:meth:`ModelConfig.to_dict`, or :meth:`CDDConfig.to_dict
  <redegrade.model.cdd.CDDConfig.to_dict>` with ``"architecture": "cdd"`` for a converted CDD model) and
  ``model.safetensors`` (the state dict), written by :func:`save_state` / ``Redegrader.save_pretrained``;
- a training checkpoint file: ``torch.save({"config": cfg.to_dict(), "model": model.state_dict(), ...})``
  (other keys such as optimiser state or step are ignored), read with ``weights_only=True``;
- a CDD trainer checkpoint (``{'model': {'netE', …}, 'epoch', 'global_step'}``), converted on the fly by
  :mod:`redegrade.model.cdd.checkpoint` into a :class:`~redegrade.model.cdd.CDDModel`.

Loading is strict: missing, unexpected or mis-shaped keys raise :class:`CheckpointError` naming them.
compressai's entropy-coder tables (``_offset``, ``_quantized_cdf``, ``_cdf_length``) are never saved or
compared: they are derived by ``EntropyBottleneck.update()`` and only needed for real bitstreams.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from redegrade.errors import CheckpointError, ConfigError, MissingCheckpointError
from redegrade.files import atomic_path
from redegrade.model.cdd import ARCHITECTURE, CDDConfig, CDDModel
from redegrade.model.cdd import checkpoint as cdd_checkpoint
from redegrade.model.config import ModelConfig
from redegrade.model.extras import legacy
from redegrade.model.network import UniversalDegradationModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_CODER_TABLES = ("_offset", "_quantized_cdf", "_cdf_length")


def _is_coder_table(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _CODER_TABLES


def weights_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict we save: everything but compressai's derived coder tables, contiguous, detached."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if not _is_coder_table(k)}


def load_weights(model: torch.nn.Module, state: dict[str, Any], *, source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` strictly; raise :class:`CheckpointError` naming any bad key."""
    own = weights_state(model)
    state = {k: v for k, v in state.items() if not _is_coder_table(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:10])}{' …' if len(unexpected) > 10 else ''}")
    bad = [k for k in set(own) & set(state)
           if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        problems.append("shape mismatch: " + ", ".join(
            f"{k} {tuple(getattr(state[k], 'shape', ()))} vs model {tuple(own[k].shape)}" for k in sorted(bad)[:10]))
    if problems:
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)


def _read_config(d: Any, source: str) -> ModelConfig | CDDConfig:
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: the config must be a dict, got {type(d).__name__}")
    try:
        if d.get("architecture") == ARCHITECTURE:
            return CDDConfig.from_dict(d)
        return ModelConfig.from_dict(d)
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad model config: {exc}") from exc


def read_checkpoint(path: str | os.PathLike, *, cdd_options: Any = None
                    ) -> tuple[ModelConfig | CDDConfig, dict[str, torch.Tensor]]:
    """(config, state dict) from a pretrained folder, a training checkpoint file or a CDD trainer
    checkpoint (``cdd_options``: what such a file cannot say, see :class:`~redegrade.model.cdd.options.CDDOptions`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, weights):
            if not f.is_file():
                raise MissingCheckpointError(f"{path} is not a redegrader folder: {f.name} is missing "
                                             f"(expected {CONFIG_NAME} + {WEIGHTS_NAME})")
        try:
            cfg = _read_config(json.loads(cfg_file.read_text(encoding="utf-8")), str(cfg_file))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
        return cfg, _current_names(cfg, _read_safetensors(weights))
    if not path.is_file():
        raise MissingCheckpointError(f"no redegrader checkpoint at {path} (give a folder with {CONFIG_NAME} + "
                                     f"{WEIGHTS_NAME} or a training checkpoint .pt file)")
    from redegrade.weights.safe import torch_load

    obj = torch_load(path, what=f"redegrader checkpoint {path}")
    if isinstance(obj, dict) and "config" not in obj and cdd_checkpoint.is_cdd_checkpoint(obj):
        return cdd_checkpoint.from_trainer_checkpoint(obj, cdd_options, str(path))
    if not isinstance(obj, dict) or "config" not in obj or "model" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is neither a redegrade training checkpoint (a dict with 'config' and "
                              f"'model') nor a CDD trainer checkpoint ({{'model': {{'netE', 'netG', …}}}}): got {keys}")
    cfg = _read_config(obj["config"], str(path))
    return cfg, _current_names(cfg, obj["model"])


def _current_names(cfg: ModelConfig | CDDConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the parameter names extras had when they were config flags replaced by today's."""
    return legacy.rename_keys(state) if isinstance(cfg, ModelConfig) and isinstance(state, dict) else state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{path} is a git-lfs pointer, not the weights; run `git lfs pull` or download "
                              "the file again")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from exc


def build_model(config: ModelConfig | CDDConfig) -> UniversalDegradationModel | CDDModel:
    """The network a config describes: ours, or CDD's exact architecture for a :class:`CDDConfig`."""
    return CDDModel(config) if isinstance(config, CDDConfig) else UniversalDegradationModel(config)


def load_state(path: str | os.PathLike, *, device: str | torch.device = "cpu", cdd_options: Any = None
               ) -> UniversalDegradationModel | CDDModel:
    """Build the model from a pretrained folder, a training checkpoint or a CDD trainer checkpoint."""
    cfg, state = read_checkpoint(path, cdd_options=cdd_options)
    model = build_model(cfg)
    load_weights(model, state, source=str(path))
    return model.to(device)


def warm_start(model: torch.nn.Module, path: str | os.PathLike, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy the weights of the checkpoint at ``path`` into ``model`` where names match: a training start
    from an earlier model whose config differs (e.g. one without the ``noise_head`` or ``grid_phase`` extra).
    Names starting with a prefix in ``skip`` keep their fresh initialisation (to re-train a part that
    has died, e.g. a noise head whose level saturated at zero).

    A tensor whose shape differs only by more input channels (dim 1 larger) gets the old weights in its
    first channels and zeros in the new ones, so the new inputs start out ignored. Returns the names
    left at their fresh initialisation; raises :class:`CheckpointError` for any other shape clash.
    """
    _, state = read_checkpoint(path)
    own = weights_state(model)
    fresh, clashes = [], []
    with torch.no_grad():
        params = dict(model.state_dict())
        for k, dst in own.items():
            src = None if k.startswith(tuple(skip)) else state.get(k)
            if src is None:
                fresh.append(k)
            elif src.shape == dst.shape:
                params[k].copy_(src)
            elif (src.dim() == dst.dim() >= 2 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]
                  and src.shape[1] < dst.shape[1]):
                params[k].zero_()
                params[k][:, :src.shape[1]].copy_(src)
            else:
                clashes.append(f"{k} {tuple(src.shape)} vs model {tuple(dst.shape)}")
    if clashes:
        raise CheckpointError(f"cannot warm-start from {path}: " + ", ".join(clashes[:10]))
    return fresh


def save_state(model: UniversalDegradationModel, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (each atomically). Returns it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in weights_state(model).items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "library": "redegrade"})
    with atomic_path(directory / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    return directory
