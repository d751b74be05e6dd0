"""Configs and state dicts written when each extra was a boolean field of the model config: their
flags become :data:`~redegrade.model.extras.NAMES`, their parameter names the :class:`~redegrade.model.extras.Extras` ones."""
from __future__ import annotations

from typing import Any

import torch

from redegrade.errors import ConfigError

#: Old config flag → extra.
FLAGS = {"global_residual": "global_residual", "grid_phase": "grid_phase", "noise_head": "noise_head",
         "jpeg_head": "jpeg_head", "jpeg_subsampling": "jpeg_420"}
#: Old flags that only ever came together, as the ``signatures`` extra.
SIGNATURE_FLAGS = ("jpeg_signature", "jpeg_lattice", "noise_signature")
#: Old parameter-name prefix → new one.
RENAMES = (("hden.jpeg.", "extras.signatures.jpeg."), ("hden.noise.", "extras.signatures.noise."),
           ("hden.lattice.", "extras.signatures.lattice."), ("synthesis.noise_head.", "extras.noise_head."),
           ("synthesis.jpeg_head.", "extras.jpeg_head."))


def read_flags(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (a model config dict) with any old flags replaced by its ``extras`` list. Combinations that no
    model was ever shipped with (a noise head without its e_g read, some signatures but not all, a
    linear noise level) raise :class:`ConfigError`."""
    d = dict(d)
    if d.pop("noise_sigma", "softplus") != "softplus":
        raise ConfigError("model config: noise_sigma='linear' noise heads are no longer supported; "
                          "retrain or warm-start (--init) a softplus one")
    if not any(k in d for k in (*FLAGS, *SIGNATURE_FLAGS, "noise_code")):
        return d
    extras = list(d.pop("extras", ()))
    extras += [name for flag, name in FLAGS.items() if d.pop(flag, False)]
    if d.pop("noise_code", False) != ("noise_head" in extras):
        raise ConfigError("model config: noise_code must be on exactly when noise_head is (a noise head "
                          "always reads e_g now)")
    signatures = {bool(d.pop(k, False)) for k in SIGNATURE_FLAGS}
    if len(signatures) > 1:
        raise ConfigError(f"model config: {', '.join(SIGNATURE_FLAGS)} must be all on or all off (the "
                          "'signatures' extra)")
    if signatures == {True}:
        extras.append("signatures")
    d["extras"] = extras
    return d


def rename_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with old parameter names (:data:`RENAMES`) replaced by new ones; others unchanged."""
    def rename(key: str) -> str:
        for old, new in RENAMES:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    return {rename(k): v for k, v in state.items()}
