"""The guided-diffusion ("ADM") UNet, re-implemented from its architecture facts.

Parameter names follow the original state-dict layout (``time_embed``, ``input_blocks``,
``middle_block``, ``output_blocks``, ``out``), so DPS's ``ffhq_10m.pt`` loads one-to-one. This module
is the *reference*: the diffusers conversion in :mod:`redegrade_adm.convert` is tested against it.

Data flow::

    t ──sinusoid(cos|sin)──► time_embed ──► emb ──────────────┐ (every ResBlock: scale-shift or add)
    x ─► input_blocks (conv, [ResBlock(+Attn)]×n, down)×levels ─► middle (Res, Attn, Res)
      ─► output_blocks ([cat skip, ResBlock(+Attn)]×(n+1), up)×levels ─► out (GN, SiLU, conv) ─► ε (+ v)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from redegrade_adm.config import ADMConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of raw integer timesteps: ``[cos(t·f) | sin(t·f)]``, f = max_period^(−i/half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]                                     # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the input dtype (as ADM does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class Upsample(nn.Module):
    """Nearest ×2, then an optional 3×3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3×3 conv (key ``op``) or 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding; optionally resamples (resblock_updown)."""

    def __init__(self,
                 channels: int,                 # input channels
                 emb_channels: int,             # time-embedding width (4·model_channels)
                 out_channels: int,             # output channels; a 1×1 skip conv when they differ
                 use_scale_shift_norm: bool,    # emb → (scale, shift) applied after out_layers' norm
                 up: bool = False,              # nearest ×2 before the first conv (and on the skip)
                 down: bool = False,            # avg-pool /2 before the first conv (and on the skip)
                 ):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm
                                                            else out_channels))
        self.out_layers = nn.Sequential(normalization(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)                                          # norm, SiLU at the input size
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]           # [B, C or 2C, 1, 1]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)                              # scale first, then shift
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual: ``x + proj_out(attn(qkv(norm(x))))``.

    ``qkv`` rows use the legacy per-head order ``(heads, 3, head_dim)`` unless ``new_order`` (then
    three contiguous C-row chunks q | k | v, each split into heads).
    """

    def __init__(self, channels: int, num_heads: int, new_order: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)                                                  # [B, C, T]
        qkv = self.qkv(self.norm(x))                                             # [B, 3C, T]
        heads, length = self.num_heads, x.shape[-1]
        ch = c // heads
        if self.new_order:
            q, k, v = (t.reshape(b * heads, ch, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * heads, 3 * ch, length).split(ch, dim=1)   # [B·heads, ch, T] each
        scale = 1 / math.sqrt(math.sqrt(ch))                                     # applied to q and k: 1/√ch overall
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The guided-diffusion UNet (no class conditioning, float32). ``forward(x, t) -> [B, out_channels, H, W]``."""

    def __init__(self, config: ADMConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config.model_channels
        emb_ch = 4 * c
        ssn, updown = config.use_scale_shift_norm, config.resblock_updown

        def attn(ch: int, up: bool = False) -> AttentionBlock:
            return AttentionBlock(ch, config.heads(ch, up=up), config.use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(c, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        ch = int(config.channel_mult[0] * c)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, int(mult * c), ssn)]
                ch = int(mult * c)
                if ds in config.attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(config.channel_mult) - 1:
                down = ResBlock(ch, emb_ch, ch, ssn, down=True) if updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, emb_ch, ch, ssn), attn(ch), ResBlock(ch, emb_ch, ch, ssn))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), emb_ch, int(mult * c), ssn)]
                ch = int(mult * c)
                if ds in config.attention_ds:
                    layers.append(attn(ch, up=True))
                if level and i == config.num_res_blocks:
                    layers.append(ResBlock(ch, emb_ch, ch, ssn, up=True) if updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        """``x`` [B, in, H, W]; ``timesteps`` raw integers 0…T−1 (no rescaling), a scalar or [B]."""
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
