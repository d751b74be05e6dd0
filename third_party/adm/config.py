"""ADM UNet hyper-parameters: a preset for DPS's FFHQ model, and inference from a state dict."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from redegrade.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class ADMConfig:
    """Constructor arguments of :class:`~redegrade_adm.unet.ADMUNet` (guided-diffusion's names)."""

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128               # width of level 0; time embedding is 4× this
    out_channels: int = 6                   # 6 = ε and the learned-range variance value v (learn_sigma)
    num_res_blocks: int = 1
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)  # 0.5 allowed (512² ADM)
    attention_ds: tuple[int, ...] = (16,)   # downsampling factors with attention (create_model: image_size // res)
    num_head_channels: int = 64             # head width; −1 means "use num_heads"
    num_heads: int = 4                      # only used when num_head_channels == −1
    num_heads_upsample: int = -1            # heads in the output blocks when num_head_channels == −1; −1 = num_heads
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False   # False = legacy per-head qkv layout (DPS)

    @classmethod
    def ffhq256(cls) -> "ADMConfig":
        """DPS's ``configs/model_config.yaml`` (``ffhq_10m.pt``)."""
        return cls()

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    def heads(self, channels: int, *, up: bool = False) -> int:
        """Number of attention heads at ``channels`` (num_head_channels wins over num_heads)."""
        if self.num_head_channels == -1:
            return self.num_heads_upsample if up and self.num_heads_upsample != -1 else self.num_heads
        return channels // self.num_head_channels

    def head_dim(self, channels: int, *, up: bool = False) -> int:
        return channels // self.heads(channels, up=up)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values the network cannot be built with."""
        widths = self.widths()
        if any(w % 32 for w in widths):
            raise ConfigError(f"ADM widths {widths} must be multiples of 32 (GroupNorm(32))")
        ds = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % ds:
            raise ConfigError(f"image_size {self.image_size} is not divisible by the total downsampling {ds}")
        for ch, up in self._attention_widths():
            h = self.heads(ch, up=up)
            if h < 1 or ch % h:
                raise ConfigError(f"{ch} attention channels cannot be split into heads "
                                  f"(num_head_channels={self.num_head_channels}, num_heads={self.num_heads})")

    def _attention_widths(self) -> list[tuple[int, bool]]:
        """(channels, in the output blocks?) of every attention layer kind; the middle block always has one."""
        widths = self.widths()
        levels = [w for lvl, w in enumerate(widths) if 2 ** lvl in self.attention_ds]
        return [(widths[-1], False)] + [(w, False) for w in levels] + [(w, True) for w in levels]
    def widths(self) -> list[int]:
        """Channels of each level, ``int(mult · model_channels)``."""
        return [int(m * self.model_channels) for m in self.channel_mult]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"], d["attention_ds"] = list(self.channel_mult), list(self.attention_ds)
        return d

    @classmethod
    def from_create_model(cls, **kw: Any) -> "ADMConfig":
        """From guided-diffusion / DPS ``create_model`` keyword arguments (e.g. a ``model_config.yaml``)."""
        size = int(kw.get("image_size", 256))
        mult: Any = kw.get("channel_mult", "")
        if not mult:
            table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
            if size not in table:
                raise ConfigError(f"no default channel_mult for image_size {size}; give channel_mult")
            mult = table[size]
        elif isinstance(mult, str):
            mult = tuple(float(m) for m in mult.split(","))
        res = kw.get("attention_resolutions", "16")
        res = [int(r) for r in str(res).split(",")] if isinstance(res, (str, int)) else [int(r) for r in res]
        in_ch = int(kw.get("in_channels", 3))
        # defaults are create_model's own (not the FFHQ preset's)
        return cls(image_size=size, in_channels=in_ch, model_channels=int(kw["num_channels"]),
                   out_channels=2 * in_ch if kw.get("learn_sigma", False) else in_ch,
                   num_res_blocks=int(kw["num_res_blocks"]),
                   channel_mult=tuple(int(m) if float(m).is_integer() else float(m) for m in mult),
                   attention_ds=tuple(size // r for r in res),
                   num_head_channels=int(kw.get("num_head_channels", -1)), num_heads=int(kw.get("num_heads", 1)),
                   num_heads_upsample=int(kw.get("num_heads_upsample", -1)),
                   use_scale_shift_norm=bool(kw.get("use_scale_shift_norm", False)),
                   resblock_updown=bool(kw.get("resblock_updown", False)),
                   use_new_attention_order=bool(kw.get("use_new_attention_order", False)))

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], *, image_size: int | None = None,
                        num_head_channels: int = 64, num_heads: int = 4, num_heads_upsample: int = -1,
                        use_new_attention_order: bool = False) -> "ADMConfig":
        """Read the architecture off an ADM state dict's key names and shapes.

        Widths, levels, res blocks, attention placement, scale-shift norm, resblock up/down and
        learned σ are all visible in the tensors. The head split is not (qkv is [3C, C, 1] for any
        head count), nor the image size: those come from the arguments (DPS: 64-channel heads, 256²).
        """
        try:
            c = sd["time_embed.0.weight"].shape[1]
            in_ch = sd["input_blocks.0.0.weight"].shape[1]
            out_ch = sd["out.2.weight"].shape[0]
        except KeyError as exc:
            raise CheckpointError(f"not a guided-diffusion ADM UNet state dict: no {exc.args[0]!r}") from None
        n_in = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k)))
        n_out = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"output_blocks\.(\d+)\.", k)))
        # The last block of every level but the first (in output order) carries an upsampler as its last child.
        ups = [i for i in range(n_out) if _is_resampler(sd, f"output_blocks.{i}", up=True)]
        levels = len(ups) + 1
        if n_out % levels or n_in != n_out:
            raise CheckpointError(f"unrecognised ADM layout: {n_in} input and {n_out} output blocks, {levels} levels")
        nrb = n_out // levels - 1
        mult, attn = [], []
        for lvl in range(levels):
            first = 1 + lvl * (nrb + 1)
            m = sd[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0] / c
            mult.append(int(m) if m.is_integer() else m)
            if f"input_blocks.{first}.1.qkv.weight" in sd:
                attn.append(2 ** lvl)
        updown = levels > 1 and f"input_blocks.{nrb + 1}.0.in_layers.0.weight" in sd
        ssn = sd["input_blocks.1.0.emb_layers.1.weight"].shape[0] == 2 * sd["input_blocks.1.0.out_layers.3.weight"].shape[0]
        if image_size is None:
            image_size = 256
        return cls(image_size=image_size, in_channels=in_ch, model_channels=c, out_channels=out_ch,
                   num_res_blocks=nrb, channel_mult=tuple(mult), attention_ds=tuple(attn),
                   num_head_channels=num_head_channels, num_heads=num_heads, num_heads_upsample=num_heads_upsample,
                   use_scale_shift_norm=ssn,
                   resblock_updown=updown, use_new_attention_order=use_new_attention_order)

    def replace(self, **changes: Any) -> "ADMConfig":
        return replace(self, **changes)


def _is_resampler(sd: Mapping[str, torch.Tensor], prefix: str, *, up: bool) -> bool:
    """Whether the last child of ``prefix`` is an up/down sampler (a ResBlock after the main one, or a conv)."""
    children = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))}
    last = max(children)
    if last == 0:
        return False
    if f"{prefix}.{last}.in_layers.0.weight" in sd:        # a ResBlock after position 0 is a resampler
        return True
    return f"{prefix}.{last}.conv.weight" in sd if up else f"{prefix}.{last}.op.weight" in sd
