"""Configuration of CDD's exact network (:class:`CDDConfig`) and of its entropy models (:class:`CompressorSpec`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from redegrade.errors import ConfigError
from redegrade.model.config import check_keys

ARCHITECTURE = "cdd"
LOCAL_ENCODERS = ("LPEL", "LPELOri")
COMPRESSORS = ("EntropyBottleneck", "ImageCompressor")


@dataclass(frozen=True)
class CompressorSpec:
    """One of CDD's ``CompressorWraper``s (``netCprs`` for e_g, ``netCprs_loc`` for e_l)."""

    type: str = "EntropyBottleneck"
    """``EntropyBottleneck`` (compressai, factorised) or ``ImageCompressor`` (Ballé'17 analysis/synthesis)."""
    channels: int = 256
    """Channels of the code it codes (EntropyBottleneck ``channels``; ImageCompressor ``in_channel_N``)."""
    head: tuple[int, int] = (0, 0)
    """(blocks, hidden width) of the residual MLP applied before quantisation (CDD ``head``; 0 = none)."""
    tail: tuple[int, int] = (0, 0)
    """(blocks, hidden width) of the residual MLP applied after (CDD ``tail``)."""
    filters: tuple[int, ...] = (3, 3, 3, 3)
    """EntropyBottleneck's density filters (compressai default)."""
    latent: int = 0
    """ImageCompressor ``out_channel_N`` (its latent channels)."""
    enabled: bool = True
    """CDD's ``network.netCprs[_loc].enabled``: the synthesis was trained on the coded code. Not stored in
    a checkpoint; see :mod:`redegrade.model.cdd.checkpoint`."""

    def __post_init__(self) -> None:
        if self.type not in COMPRESSORS:
            raise ConfigError(f"CDD compressor type must be one of {', '.join(COMPRESSORS)}, got {self.type!r}")
        if self.channels < 1 or min(*self.head, *self.tail) < 0 or not self.filters or min(self.filters) < 1:
            raise ConfigError(f"bad CDD compressor spec {self}")
        if self.type == "ImageCompressor" and self.latent < 1:
            raise ConfigError("an ImageCompressor needs latent (out_channel_N) ≥ 1")
        for name in ("head", "tail"):
            n, hidden = getattr(self, name)
            if n and hidden < 1:
                raise ConfigError(f"the compressor's {name} MLP has {n} blocks but hidden width {hidden}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressorSpec":
        check_keys(cls, d, "CDD compressor")
        try:
            kw = {k: tuple(int(i) for i in v) if k in ("head", "tail", "filters") else v for k, v in d.items()}
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad CDD compressor spec {d}: {exc}") from exc


@dataclass(frozen=True)
class CDDConfig:
    """Every constructor argument of :class:`CDDModel` (defaults: CDD's released configs).

    Saved as ``config.json`` (with ``"architecture": "cdd"``) beside converted weights.
    """

    architecture: str = ARCHITECTURE
    """Marker that tells :func:`redegrade.model.load_state` which model a ``config.json`` describes."""
    enc_dim_g: int = 256
    """HDEN (CDD ``LPE``, MoCo ``encoder_q``) ``dim`` = ``moco_enc_dim``: branches dim/4, dim/2, dim."""
    enc_kernel_g: int = 3
    """HDEN long-range kernel (``moco_enc_kernel``); its stride is (k−1)/2."""
    dim_g: int = 256
    """Length of e_g (MoCo ``out_dim``, 256 in CDD, also ``BasicWrapper.emb_dim``)."""
    local_encoder: str = "LPEL"
    """IDEN type, ``LPEL`` or ``LPELOri`` (the same network for kernel 3)."""
    enc_dim_l: int = 256
    """IDEN ``dim`` (``netE_loc.moco_enc_dim``)."""
    enc_kernel_l: int = 3
    """IDEN long-range kernel (``netE_loc.moco_enc_kernel``)."""
    c_l: int = 4
    """Channels of e_l (``netE_loc.out_dim``)."""
    map_channels: int = 8
    """Channels of the fused degradation map (``netG.proj_dim_noise``)."""
    widths: tuple[int, ...] = (64, 128, 256)
    """U-Net channels per level (``n_filter``·2^l; VUNetPro has 5 levels)."""
    blocks: tuple[int, ...] = (4, 3, 2)
    """SFT residual blocks per level on the way down (CDD ``blocks1``, ``blocks2``, …)."""
    blocks_up: tuple[int, ...] = (4, 3)
    """SFT residual blocks per level on the way up (CDD ``blocks1_``, ``blocks2_``, …; index = level).
    The last block of ``blocks1_`` uses ReLU, every other block LeakyReLU(0.01)."""
    compressor_g: CompressorSpec = field(default_factory=lambda: CompressorSpec("EntropyBottleneck", 256,
                                                                                 (2, 64), (2, 64)))
    """``netCprs`` (e_g)."""
    compressor_l: CompressorSpec = field(default_factory=lambda: CompressorSpec("EntropyBottleneck", 4))
    """``netCprs_loc`` (e_l)."""

    def __post_init__(self) -> None:
        if self.architecture != ARCHITECTURE:
            raise ConfigError(f"CDDConfig.architecture must be {ARCHITECTURE!r}, got {self.architecture!r}")
        levels = len(self.widths)
        if levels < 1 or len(self.blocks) != levels or len(self.blocks_up) != levels - 1:
            raise ConfigError(f"CDD U-Net needs one width and one down-block count per level and one up-block count "
                              f"per level but the last: widths={self.widths}, blocks={self.blocks}, "
                              f"blocks_up={self.blocks_up}")
        if min(self.widths) < 1 or min(self.blocks) < 0 or (self.blocks_up and min(self.blocks_up) < 0):
            raise ConfigError(f"CDD widths must be positive and block counts non-negative: {self}")
        if levels > 1 and self.blocks_up[0] < 1:
            raise ConfigError("CDD's blocks1_ needs at least one block (its last one uses ReLU)")
        if self.local_encoder not in LOCAL_ENCODERS:
            raise ConfigError(f"local_encoder must be one of {', '.join(LOCAL_ENCODERS)}, got {self.local_encoder!r}")
        for k in (self.enc_kernel_g, self.enc_kernel_l):
            if k < 3 or k % 2 == 0:
                raise ConfigError(f"CDD encoder kernels are odd and ≥ 3, got {k}")
        for name in ("enc_dim_g", "dim_g", "enc_dim_l", "c_l", "map_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if min(self.enc_dim_g, self.enc_dim_l) < 4:
            raise ConfigError("CDD encoder dims must be ≥ 4 (their first branch width is dim // 4)")
        if self.compressor_g.channels != self.dim_g or self.compressor_l.channels != self.c_l:
            raise ConfigError(f"netCprs codes {self.compressor_g.channels} channels and netCprs_loc "
                              f"{self.compressor_l.channels}, but e_g has {self.dim_g} and e_l {self.c_l}")

    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this (the IDA term of the deepest level works at half its size)."""
        return 2 ** self.levels

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, CompressorSpec) else list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CDDConfig":
        check_keys(cls, d, "CDD config")
        try:
            kw: dict[str, Any] = {}
            for k, v in d.items():
                if k in ("compressor_g", "compressor_l"):
                    if not isinstance(v, dict):
                        raise ConfigError(f"{k} must be a dict, got {type(v).__name__}")
                    kw[k] = CompressorSpec.from_dict(v)
                elif k in ("widths", "blocks", "blocks_up"):
                    kw[k] = tuple(int(i) for i in v)
                else:
                    kw[k] = v
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad CDD config: {exc}") from exc

    def noise_levels(self) -> list[int]:
        """Resolution level (0 = H, 1 = H/2, …) of each noise map, in CDD's draw order."""
        down = [lv for lv in range(self.levels) for _ in range(2 * self.blocks[lv])]
        up = [lv for lv in reversed(range(self.levels - 1)) for _ in range(2 * self.blocks_up[lv])]
        return down + up

    def noise_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        return [(height >> lv, width >> lv) for lv in self.noise_levels()]
