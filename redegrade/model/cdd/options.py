"""What a CDD trainer checkpoint does not say about its model (:class:`CDDOptions`), from flags, a dict or
CDD's own training config."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Union

from redegrade.errors import ConfigError
from redegrade.model.cdd.config import LOCAL_ENCODERS


@dataclass(frozen=True)
class CDDOptions:
    """What a CDD checkpoint does not say about its model. ``None`` = not stated."""

    compress_g: bool | None = None
    """``network.netCprs.enabled``: the synthesis was trained on e_g after its entropy model."""
    compress_l: bool | None = None
    """``network.netCprs_loc.enabled``: the same for e_l."""
    local_encoder: str | None = None
    """``network.netE_loc.type``: ``LPEL`` or ``LPELOri``."""
    moco_enc: str | None = None
    """``network.netE.moco_enc`` (checked: only ``LPE`` is supported)."""
    netg_type: str | None = None
    """``network.netG.type`` (checked against the number of levels: ``…pro…`` means 5)."""

    def __post_init__(self) -> None:
        for k in ("compress_g", "compress_l"):
            if getattr(self, k) is not None and not isinstance(getattr(self, k), bool):
                raise ConfigError(f"CDD option {k} must be true or false, got {getattr(self, k)!r}")
        if self.local_encoder is not None and self.local_encoder not in LOCAL_ENCODERS:
            raise ConfigError(f"CDD option local_encoder must be one of {', '.join(LOCAL_ENCODERS)}, "
                              f"got {self.local_encoder!r}")

    def updated(self, other: "CDDOptions") -> "CDDOptions":
        """These options with every value ``other`` states."""
        return replace(self, **{f.name: v for f in fields(other) if (v := getattr(other, f.name)) is not None})

    @classmethod
    def read(cls, src: "OptionsLike") -> "CDDOptions":
        """From ``None``, a :class:`CDDOptions`, a dict or a JSON/YAML file (flat keys or CDD's config layout)."""
        if src is None:
            return cls()
        if isinstance(src, CDDOptions):
            return src
        where = "CDD options"
        if isinstance(src, (str, os.PathLike)):
            where = str(src)
            src = _read_sidecar(Path(src).expanduser())
        if not isinstance(src, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(src).__name__}")
        if "network" in src:
            net = src["network"]
            if not isinstance(net, dict):
                raise ConfigError(f"{where}: 'network' must be a mapping")

            def get(part: str, key: str) -> Any:
                sub = net.get(part)
                return sub.get(key) if isinstance(sub, dict) else None

            return cls(compress_g=get("netCprs", "enabled"), compress_l=get("netCprs_loc", "enabled"),
                       local_encoder=get("netE_loc", "type"), moco_enc=get("netE", "moco_enc"),
                       netg_type=get("netG", "type"))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(src) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown CDD option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
                              " (or give CDD's training config with its 'network' section)")
        return cls(**src)


OptionsLike = Union[None, CDDOptions, dict, str, os.PathLike]


def _read_sidecar(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"no CDD config at {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml comes with huggingface-hub
            raise ConfigError(f"reading {path} needs PyYAML (pip install pyyaml), or give the options as JSON") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
