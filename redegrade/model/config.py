"""Configuration of the universal degradation model: a frozen dataclass of JSON-able values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from redegrade.errors import ConfigError
from redegrade.model import extras
from redegrade.model.extras import legacy


def check_keys(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise :class:`ConfigError` naming the keys of ``d`` that are not fields of dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")


@dataclass(frozen=True)
class ModelConfig:
    """Every constructor argument of :class:`~redegrade.model.UniversalDegradationModel`.

    Saved as ``config.json`` beside the weights; :meth:`from_dict` rejects unknown keys.
    """

    widths: tuple[int, int, int] = (64, 128, 256)
    """Synthesis U-Net channels at H, H/2 and H/4 (CDD ``n_filter`` = 64 → 64/128/256)."""
    blocks: tuple[int, int, int, int, int] = (4, 3, 2, 3, 4)
    """SFT residual blocks in blocks1, blocks2, blocks3, blocks2_, blocks1_ (2 SFT layers = 2 noise maps each)."""
    dim_g: int = 256
    """Length of the global degradation code e_g (HDEN output)."""
    c_l: int = 4
    """Channels of the local degradation map e_l (IDEN output, at H/2)."""
    map_channels: int = 8
    """Channels of the fused degradation map e shared by every SFT layer (CDD ``proj_dim_noise``)."""
    enc_kernel: int = 3
    """First-layer kernel of the encoders' long-range branch (CDD ``moco_enc_kernel``); odd."""
    enc_width: int = 64
    """Encoder base width; branch channels are w, 2w, 4w (CDD: 64 → 64/128/256)."""
    entropy_mlp_layers: int = 2
    """Residual MLP blocks in the e_g entropy model's head (before quantisation) and tail (after)."""
    quant_step_l: float = 1.0
    """Quantisation step of e_l (which lives in [0,1]); 1.0 is compressai's integer grid as in CDD."""
    quant_step_g: float = 1.0
    """Quantisation step of e_g after its entropy head (CDD: 1.0). A briefly trained model's codes are
    far smaller than 1, round to one value for every input and carry nothing; a finer step keeps them."""
    extras: tuple[str, ...] = ()
    """Additions to CDD's network, by name (:data:`~redegrade.model.extras.NAMES`; none is in the paper)."""

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """``paper`` (CDD sizes; for CDD's exact network see :mod:`redegrade.model.cdd`), ``small`` (trainable
        on a few CPU cores), ``small-ffhqx`` (``small`` with a 4:2:0 JPEG head, lost pixels and the
        resize factor read from y, for FFHQ-X) or ``tiny`` (tests)."""
        try:
            return _PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(_PRESETS)}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys or bad values raise :class:`ConfigError`."""
        d = legacy.read_flags(d)
        check_keys(cls, d, "model config")
        try:
            kw = {k: tuple(int(i) for i in v) if k in ("widths", "blocks") else v for k, v in d.items()}
            if "extras" in kw:
                kw["extras"] = tuple(kw["extras"])
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad model config {d}: {exc}") from exc

    def __post_init__(self) -> None:
        if len(self.widths) != 3 or len(self.blocks) != 5:
            raise ConfigError(f"widths needs 3 values and blocks 5, got {self.widths} and {self.blocks}")
        if min(self.widths) < 1 or min(self.blocks) < 0:
            raise ConfigError(f"widths must be positive and blocks non-negative: {self.widths}, {self.blocks}")
        if self.blocks[4] < 1:
            raise ConfigError("blocks1_ (blocks[4]) needs at least one block (its last one uses ReLU)")
        if self.enc_kernel % 2 == 0 or self.enc_kernel < 3:
            raise ConfigError(f"enc_kernel must be odd and ≥ 3, got {self.enc_kernel}")
        for k in ("dim_g", "c_l", "map_channels", "enc_width"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")
        unknown = sorted(set(self.extras) - set(extras.NAMES))
        if unknown:
            raise ConfigError(f"unknown model extra(s) {', '.join(unknown)}; known: {', '.join(extras.NAMES)}")
        for name, needs in extras.NEEDS.items():
            if name in self.extras and needs not in self.extras:
                raise ConfigError(f"model extra {name} needs {needs}")
        # one spelling per set of extras, so that configs compare equal whatever order they were listed in
        object.__setattr__(self, "extras", tuple(n for n in extras.NAMES if n in self.extras))
        if self.entropy_mlp_layers < 0 or not self.quant_step_l > 0 or not self.quant_step_g > 0:
            raise ConfigError("entropy_mlp_layers must be ≥ 0 and the quantisation steps > 0")

    def noise_levels(self) -> list[int]:
        """Resolution level (0 = H, 1 = H/2, 2 = H/4) of each noise map: SFT layers in order, then the
        noise head's three maps."""
        level_of_stage = (0, 1, 2, 1, 0)
        sft = [level_of_stage[s] for s, n in enumerate(self.blocks) for _ in range(2 * n)]
        return sft + [0] * extras.NOISE_HEAD_MAPS * ("noise_head" in self.extras)

    def noise_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of each noise map for an H×W image, without building the network."""
        return [(height >> lv, width >> lv) for lv in self.noise_levels()]


_SMALL_EXTRAS = ("global_residual", "grid_phase", "signatures", "noise_head", "jpeg_head")
_PRESETS = {
    "paper": ModelConfig(),
    "small": ModelConfig(widths=(16, 32, 64), blocks=(1, 1, 1, 1, 1), enc_width=16, extras=_SMALL_EXTRAS,
                         quant_step_g=0.1, quant_step_l=0.1),
    "tiny": ModelConfig(widths=(4, 8, 8), blocks=(1, 1, 1, 1, 1), map_channels=4, enc_width=4, entropy_mlp_layers=1,
                        extras=("global_residual",)),
}
# the FFHQ-X model: the small one with a JPEG head that subsamples chroma as PIL does, and the pixels FFHQ-X
# drops or paints over and U's resize factor read from y
_PRESETS["small-ffhqx"] = dataclasses.replace(_PRESETS["small"],
                                              extras=(*_SMALL_EXTRAS, "jpeg_420", "lost_pixels", "resized"))
