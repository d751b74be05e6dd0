"""The exact architecture of CDD's released degradation models (content-degradation-disentanglement,
ICCV 2025), so that their trainer checkpoints load and give CDD's outputs.

Our own presets (``paper``/``small``/``tiny`` in :mod:`redegrade.model.config`) are *our* reading of
CDD and differ from it on purpose; this module is CDD as its code computes, read from
``model/combined_model.py``, ``model/blindsr.py`` (LPE), ``model/blindsrlocal.py`` (LPEL, LPELOri,
IDADepthwiseConv), ``model/vunet_conv.py`` (SFTLayer, SFTResBlock, VUNet, VUNetPro, BasicWrapper),
``model/modules.py`` (pre-activation convs), ``model/compressors.py`` and ``model/iclr_compression``
at commit 47cd584. Where it differs from our ``paper`` preset:

- **input convention**: ``VUNet.forward`` maps the clean image through ``2x−1`` although it is already in
  [-1, 1] (the network sees [-3, 1]); :class:`CDDSynthesis` does the same, so callers pass x in [-1, 1]
  exactly as to every other redegrade model;
- the SFT layer's γ and β branches are bias-free and use the *block's* activation (``LeakyReLU(0.01)``,
  or ``ReLU`` in the last block of the last level, including inside its two SFT layers);
- e_g's MLP head keeps CDD's hidden width (LPE ``dim``) apart from its output width (MoCo ``out_dim``);
- the entropy models are used only when CDD's config had them ``enabled`` (the synthesis was trained on
  whichever code it saw), see :class:`CompressorSpec`;
- any number of U-Net levels (``VUNet``: 3, ``VUNetPro``: 5), block counts as in the checkpoint.

Noise: CDD's ``SFTLayer`` draws ``torch.randn([B,1,h,w])`` inside every call. Here the maps are an
argument, in CDD's draw order (SFT layers in forward order: the encoder levels top-down, then the
decoder levels bottom-up; ``sft1`` before ``sft2`` in a block). Their shapes form a palindrome
(H, H/2, H/4, H/2, H), so a reversed list has the right shapes and gives a wrong result.
:meth:`CDDModel.sample_noise` with ``torch.Generator().manual_seed(s)`` draws exactly the numbers
that ``torch.manual_seed(s)`` followed by CDD's ``netG(x, e_g, e_l)`` draws on CPU (nothing else in
CDD's eval-mode forward uses the random generator).

Entropy models: ``EntropyBottleneck`` is compressai's own class (CDD imports it), so eval-mode coding is
exact: values are rounded (``torch.round``, half to even) around the medians read from ``quantiles``.
The rate differs only in layout: CDD sums bits over channels per position, we per item.
``ImageCompressor`` (CDD's copy of liujiaheng/iclr_17_compression) is rebuilt with compressai's
``GDN``, whose reparametrisation (β, γ stored as √(· + 2⁻³⁶), lower bounds √(1e-6 + 2⁻³⁶) and 2⁻¹⁸) is
the upstream one; CDD's own ``model/iclr_compression/GDN.py`` and ``bitEstimator.py`` could not be read,
so that path is exact only if CDD kept them unchanged (and compressai divides by √ as ``x·rsqrt``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.errors import ConfigError, ShapeError
from redegrade.image import check_image
from redegrade.model.config import check_keys
from redegrade.model.encoders import ConvBNAct
from redegrade.model.entropy import MODES, CodeEntropyModel, quantize
from redegrade.model.layers import IDA, PreActConv, PreActConvT, ResidualMLP
from redegrade.model.network import CodedModel, DegradationCode, MapFusion
from redegrade.model.synthesis import run_block

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
    a checkpoint; see :mod:`redegrade.model.cdd_checkpoint`."""

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


# ---------------------------------------------------------------------------------------- encoders
def _lpe_short(dim: int) -> nn.Sequential:
    """CDD ``LPE_l`` (shared by LPE, LPEL, LPELOri): [B,3,H,W] → [B,dim,H/2,W/2]."""
    q, h = dim // 4, dim // 2
    return nn.Sequential(ConvBNAct(3, q, 3), ConvBNAct(q, q, 1), ConvBNAct(q, h, 3, 2), ConvBNAct(h, h, 1),
                         ConvBNAct(h, dim, 3), ConvBNAct(dim, dim, 1))


class CDDGlobalEncoder(nn.Module):
    """CDD ``LPE`` (the MoCo query encoder ``netE.encoder_q``): y → e_g [B, out_dim].

    Long branch (k×k stride (k−1)/2, no padding, then three 3×3) and short branch, each global-average
    pooled, concatenated → Linear(2·dim, dim) → LeakyReLU(0.1) → Linear(dim, out_dim).
    """

    def __init__(self, dim: int, out_dim: int, kernel: int):
        super().__init__()
        q, h = dim // 4, dim // 2
        self.long = nn.Sequential(ConvBNAct(3, q, kernel, (kernel - 1) // 2, 0), ConvBNAct(q, q, 3),
                                  ConvBNAct(q, h, 3), ConvBNAct(h, dim, 3))
        self.short = _lpe_short(dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.LeakyReLU(0.1), nn.Linear(dim, out_dim))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        a = F.adaptive_avg_pool2d(self.long(y), 1).flatten(1)
        b = F.adaptive_avg_pool2d(self.short(y), 1).flatten(1)
        return self.head(torch.cat([a, b], dim=1))


class CDDLocalEncoder(nn.Module):
    """CDD ``LPEL`` / ``LPELOri`` (``netE_loc``): y → e_l [B, c_l, H/2, W/2] in [0, 1].

    Long branch: k×k conv with stride s = (k−1)/2 (padding s//2 for LPEL, 0 for LPELOri), three 3×3
    convs, a k×k transposed conv (stride s, bias) back to ≈H and a 2×2 average pool; LPEL crops it to
    the short branch's size when it comes out up to s−1 larger. Fusion: 1×1 2·dim→dim, LeakyReLU(0.1),
    1×1 dim→c_l, sigmoid. For k = 3 both types are the same network.
    """

    def __init__(self, dim: int, c_l: int, kernel: int, kind: str = "LPEL"):
        super().__init__()
        q, h = dim // 4, dim // 2
        s = (kernel - 1) // 2
        self.kind, self.stride = kind, s
        pad = s // 2 if kind == "LPEL" else 0
        self.long = nn.Sequential(ConvBNAct(3, q, kernel, s, pad), ConvBNAct(q, q, 3), ConvBNAct(q, h, 3),
                                  ConvBNAct(h, h, 3), nn.ConvTranspose2d(h, dim, kernel, s, 0), nn.AvgPool2d(2))
        self.short = _lpe_short(dim)
        self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 1), nn.LeakyReLU(0.1), nn.Conv2d(dim, c_l, 1),
                                  nn.Sigmoid())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        a, b = self.long(y), self.short(y)
        if self.kind == "LPEL" and a.shape[-1] != b.shape[-1]:
            if not 0 < a.shape[-1] - b.shape[-1] < self.stride:
                raise ShapeError(f"CDD's LPEL cannot encode a {tuple(y.shape[-2:])} image with kernel "
                                 f"{2 * self.stride + 1} (long branch {tuple(a.shape[-2:])}, short {tuple(b.shape[-2:])})")
            a = a[..., :b.shape[-2], :b.shape[-1]]
        if a.shape[-2:] != b.shape[-2:]:
            raise ShapeError(f"CDD's {self.kind} cannot encode a {tuple(y.shape[-2:])} image: its branches give "
                             f"{tuple(a.shape[-2:])} and {tuple(b.shape[-2:])}")
        return self.fuse(torch.cat([a, b], dim=1))


# ---------------------------------------------------------------------------------------- synthesis
def _act(kind: str) -> nn.Module:
    return nn.ReLU() if kind == "relu" else nn.LeakyReLU()  # CDD's act_relu / act_lrelu (slope 0.01)


def _resize(e: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """CDD resizes the map only when its size differs (bilinear, align_corners=True)."""
    if tuple(e.shape[-2:]) == tuple(size):
        return e
    return F.interpolate(e, size=size, mode="bilinear", align_corners=True)


class CDDSFTLayer(nn.Module):
    """CDD ``SFTLayer``: out = F·(1 + γ(e)) + β(e, n) + IDA(F, e).

    γ = conv1×1(act(conv1×1(e))), β = conv1×1(act(conv1×1([e, n]))), bias-free, with the block's
    activation; e resized to the feature size (and to half of it for IDA) when it differs.
    """

    def __init__(self, channels: int, map_channels: int, act: str):
        super().__init__()
        reduce = (map_channels + channels) // 4
        self.gamma = nn.Sequential(nn.Conv2d(map_channels, reduce, 1, bias=False), _act(act),
                                   nn.Conv2d(reduce, channels, 1, bias=False))
        self.beta = nn.Sequential(nn.Conv2d(map_channels + 1, reduce, 1, bias=False), _act(act),
                                  nn.Conv2d(reduce, channels, 1, bias=False))
        self.ida = IDA(channels, map_channels)

    def forward(self, feat: torch.Tensor, e: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[-2:]
        e_sm = _resize(e, (h // 2, w // 2))
        e_full = _resize(e, (h, w))
        gamma = self.gamma(e_full)
        beta = self.beta(torch.cat([e_full, noise.to(e_full.dtype)], dim=1))
        return feat * (1 + gamma) + beta + self.ida(feat, e_sm)


class CDDBlock(nn.Module):
    """CDD ``SFTResBlock``: y = conv2(SFT₂(conv1(SFT₁(x)))) with pre-activation 3×3 convs; out = y + x."""

    def __init__(self, channels: int, map_channels: int, act: str):
        super().__init__()
        self.sft1 = CDDSFTLayer(channels, map_channels, act)
        self.conv1 = PreActConv(channels, channels, 3, act=_act(act))
        self.sft2 = CDDSFTLayer(channels, map_channels, act)
        self.conv2 = PreActConv(channels, channels, 3, act=_act(act))

    def forward(self, x: torch.Tensor, e: torch.Tensor, n1: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.sft1(x, e, n1))
        y = self.conv2(self.sft2(y, e, n2))
        return y + x


class CDDSynthesis(nn.Module):
    """CDD ``VUNet`` (3 levels) / ``VUNetPro`` (5 levels) given the fused map e (``map_head`` applied).

    ``conv_first`` (3×3, no activation) on ``2x−1``; per level its blocks, then a 4×4 stride-2 conv
    down; on the way up a 4×4 stride-2 transposed conv, ``LeakyReLU → 3×3`` on [up, skip], the level's
    blocks; ``conv_last`` = LeakyReLU → 1×1. No output squashing.
    """

    def __init__(self, config: CDDConfig):
        super().__init__()
        w, m, L = config.widths, config.map_channels, config.levels
        self.conv_first = PreActConv(3, w[0], 3)
        self.down_blocks = nn.ModuleList(nn.ModuleList(CDDBlock(w[lv], m, "lrelu") for _ in range(config.blocks[lv]))
                                         for lv in range(L))
        self.downsample = nn.ModuleList(PreActConv(w[lv], w[lv + 1], 4, stride=2) for lv in range(L - 1))
        self.upsample = nn.ModuleList(PreActConvT(w[lv + 1], w[lv]) for lv in range(L - 1))
        self.skip = nn.ModuleList(PreActConv(2 * w[lv], w[lv], 3, act=_act("lrelu")) for lv in range(L - 1))
        self.up_blocks = nn.ModuleList(
            nn.ModuleList(CDDBlock(w[lv], m, "relu" if (lv == 0 and i == config.blocks_up[lv] - 1) else "lrelu")
                          for i in range(config.blocks_up[lv]))
            for lv in range(L - 1))
        self.conv_last = PreActConv(w[0], 3, 1, act=_act("lrelu"))
        self.levels = L

    def forward(self, x: torch.Tensor, e: torch.Tensor, noise: list[torch.Tensor], *,
                checkpoint: bool = False) -> torch.Tensor:
        it = iter(noise)
        h = self.conv_first(x * 2 - 1)  # CDD's VUNet: "inp = clean * 2 - 1" on an input already in [-1, 1]
        skips = []
        for lv in range(self.levels):
            for b in self.down_blocks[lv]:
                h = run_block(b, h, e, next(it), next(it), checkpoint=checkpoint)
            if lv < self.levels - 1:
                skips.append(h)
                h = self.downsample[lv](h)
        for lv in reversed(range(self.levels - 1)):
            h = self.skip[lv](torch.cat([self.upsample[lv](h), skips[lv]], dim=1))
            for b in self.up_blocks[lv]:
                h = run_block(b, h, e, next(it), next(it), checkpoint=checkpoint)
        return self.conv_last(h)


# ---------------------------------------------------------------------------------------- entropy
class CDDEntropy(CodeEntropyModel):
    """CDD ``CompressorWraper`` around compressai's ``EntropyBottleneck``: head MLP → quantise → tail MLP.

    Head and tail may differ in depth and width (CDD configures them apart).
    """

    def __init__(self, spec: CompressorSpec):
        super().__init__(spec.channels, mlp_layers=0, step=1.0)
        from compressai.entropy_models import EntropyBottleneck

        self.head = ResidualMLP(spec.channels, spec.head[0], hidden=spec.head[1]) if spec.head[0] else None
        self.tail = ResidualMLP(spec.channels, spec.tail[0], hidden=spec.tail[1]) if spec.tail[0] else None
        self.bottleneck = EntropyBottleneck(spec.channels, filters=tuple(spec.filters))


class BitEstimator(nn.Module):
    """The ImageCompressor's factorised CDF: three ``x·softplus(h) + b`` + ``tanh(·)·tanh(a)`` stages and
    a final ``sigmoid(x·softplus(h) + b)``, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        for i in range(1, 5):
            stage = nn.Module()
            stage.h = nn.Parameter(torch.zeros(1, channels, 1, 1))
            stage.b = nn.Parameter(torch.zeros(1, channels, 1, 1))
            if i < 4:
                stage.a = nn.Parameter(torch.zeros(1, channels, 1, 1))
            setattr(self, f"f{i}", stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 4):
            s = getattr(self, f"f{i}")
            x = x * F.softplus(s.h) + s.b
            x = x + torch.tanh(x) * torch.tanh(s.a)
        return torch.sigmoid(x * F.softplus(self.f4.h) + self.f4.b)


class CDDImageCompressor(nn.Module):
    """CDD's ``ImageCompressor`` on e_l (in eval mode): analysis (9×9 s4 → GDN → 5×5 s2 → GDN → 5×5 s2),
    rounding, synthesis (mirror, inverse GDN), clamp to [0, 1]; bits from :class:`BitEstimator`.

    e_l's sides must be multiples of 16. See the module docstring for what is verified.
    """

    def __init__(self, spec: CompressorSpec):
        super().__init__()
        from compressai.layers import GDN

        c, n = spec.channels, spec.latent
        self.encoder = nn.Sequential(nn.Conv2d(c, n, 9, 4, 4), GDN(n), nn.Conv2d(n, n, 5, 2, 2), GDN(n),
                                     nn.Conv2d(n, n, 5, 2, 2, bias=False))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(n, n, 5, 2, 2, 1), GDN(n, inverse=True),
                                     nn.ConvTranspose2d(n, n, 5, 2, 2, 1), GDN(n, inverse=True),
                                     nn.ConvTranspose2d(n, c, 9, 4, 4, 3))
        self.bit_estimator = BitEstimator(n)
        self.head = self.tail = None

    def forward(self, z: torch.Tensor, mode: str, *, generator: torch.Generator | None = None, rate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if mode not in MODES:
            raise ConfigError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")
        if z.shape[-2] % 16 or z.shape[-1] % 16:
            raise ShapeError(f"CDD's ImageCompressor needs e_l sides that are multiples of 16 (images of "
                             f"multiples of 32), got e_l {tuple(z.shape[-2:])}")
        v = self.encoder(z)
        vq = quantize(v, mode, torch.zeros((), dtype=v.dtype, device=v.device), generator)
        if not rate:
            return self.decoder(vq).clamp(0.0, 1.0), vq.new_zeros(vq.shape[0])
        prob = self.bit_estimator(vq + 0.5) - self.bit_estimator(vq - 0.5)
        bits = torch.clamp(-torch.log(prob + 1e-10) / math.log(2.0), 0, 50).flatten(1).sum(dim=1)
        return self.decoder(vq).clamp(0.0, 1.0), bits

    def aux_loss(self) -> torch.Tensor:
        return self.encoder[0].weight.new_zeros(())


class CDDFusion(MapFusion):
    """``BasicWrapper.conv`` on ``[e_l, e_g broadcast]`` (3×3, bias) then ``VUNet.map_head`` (ReLU → 3×3).

    Unlike :class:`MapFusion` it materialises the broadcast and runs CDD's own convolution: the
    memory-saving split of ``MapFusion.project`` sums in another order (≈1e-6 off), which the 32 SFT
    layers of a random-weight model amplified to 5e-5; this way the synthesis is bit-identical. At 1024²
    the concatenated input is [B, c_l+256, 512, 512] (272 MB per image in float32).
    """

    def project(self, e_g: torch.Tensor, e_l: torch.Tensor) -> torch.Tensor:
        k_v = e_g[:, :, None, None].expand(-1, -1, *e_l.shape[-2:])
        return self.proj(torch.cat([e_l, k_v], dim=1))


def make_compressor(spec: CompressorSpec) -> nn.Module:
    return CDDEntropy(spec) if spec.type == "EntropyBottleneck" else CDDImageCompressor(spec)


# ---------------------------------------------------------------------------------------- the model
class CDDModel(CodedModel):
    """CDD's ``CombinedModel`` at inference, with the interface of
    :class:`~redegrade.model.UniversalDegradationModel` (so a :class:`~redegrade.redegrader.Redegrader`
    wraps either).

    - :meth:`encode` = CDD's ``model('latent', y, compress=False)`` and ``model('latent_local', y,
      compress=False)`` (the raw codes, as CDD's ``extract_latents`` saves them);
    - :meth:`entropy_coded` = the same with ``compress=True`` (CDD's default for those calls);
    - :meth:`synthesize` = ``netG(x, e_g, e_l)`` with the noise maps CDD would draw (see the module doc);
    - :meth:`quantize` = what CDD's training forward did to the codes before the synthesis: the entropy
      models of those ``enabled`` in its config, identity for the others.
    """

    def __init__(self, config: CDDConfig | None = None):
        super().__init__()
        self.config = config = config or CDDConfig()
        self.hden = CDDGlobalEncoder(config.enc_dim_g, config.dim_g, config.enc_kernel_g)
        self.iden = CDDLocalEncoder(config.enc_dim_l, config.c_l, config.enc_kernel_l, config.local_encoder)
        self.entropy_g = make_compressor(config.compressor_g)
        self.entropy_l = make_compressor(config.compressor_l)
        self.fusion = CDDFusion(config)
        self.synthesis = CDDSynthesis(config)

    @property
    def multiple(self) -> int:
        return self.config.multiple

    # -- encoders ---------------------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> DegradationCode:
        """y [B,3,H,W] in [-1,1] → raw DegradationCode(e_g [B,dim_g], e_l [B,c_l,H/2,W/2])."""
        check_image(y, "observation", multiple_of=self.multiple)
        return DegradationCode(self.hden(y), self.iden(y))

    def entropy_coded(self, code: DegradationCode) -> DegradationCode:
        """Both codes through their entropy models, rounded, whatever ``enabled`` says (CDD's
        ``model('latent', y)`` / ``model('latent_local', y)`` with their default ``compress=True``)."""
        self._check_code(code)
        e_g, _ = self.entropy_g(code.e_g, "round")
        e_l, _ = self.entropy_l(code.e_l, "round")
        return DegradationCode(e_g, e_l)

    def degradation_map(self, code: DegradationCode) -> torch.Tensor:
        self._check_code(code)
        return self.fusion(code)

    # -- noise ------------------------------------------------------------------------------------
    @property
    def num_noise(self) -> int:
        return len(self.config.noise_levels())

    def noise_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        return self.config.noise_shapes(height, width)

    def sample_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """N(0,1) maps [B,1,h,w] in CDD's draw order; ``generator=None`` means one seeded with 0.

        Drawn as CDD draws them (float32, one ``randn`` per SFT layer in forward order), so a generator
        seeded with s reproduces ``torch.manual_seed(s); netG(x, e_g, e_l)`` on the generator's device.
        """
        check_image(x, "image", multiple_of=self.multiple)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        b = x.shape[0]
        return [torch.randn((b, 1, h, w), generator=generator, device=generator.device).to(x.device, x.dtype)
                for h, w in self.noise_shapes(*x.shape[-2:])]

    # -- synthesis --------------------------------------------------------------------------------
    def synthesize(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor], *,
                   checkpoint: bool = False) -> torch.Tensor:
        """ŷ = CDD ``netG(x, e_g, e_l)``: x [B,3,H,W] in [-1,1], the code as given, CDD's noise maps.
        ``checkpoint`` recomputes each block in the backward (same values, less memory)."""
        self._check_synthesis_inputs(x, code, noise, multiple=self.multiple)
        return self.synthesis(x, self.fusion(code), noise, checkpoint=checkpoint)

    def forward(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor]) -> torch.Tensor:
        return self.synthesize(x, code, noise)

    # -- entropy ----------------------------------------------------------------------------------
    def quantize(self, code: DegradationCode, mode: str, *, generator: torch.Generator | None = None,
                 rate: bool = True) -> tuple[DegradationCode, dict[str, torch.Tensor]]:
        """The code the synthesis saw in training: each code through its entropy model (``mode`` as in
        :meth:`UniversalDegradationModel.quantize`) if CDD's config had it enabled, unchanged (0 bits) if not."""
        self._check_code(code)
        if mode not in MODES:
            raise ConfigError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")
        out, rate = [], {}
        for key, z, model, spec in (("g", code.e_g, self.entropy_g, self.config.compressor_g),
                                    ("l", code.e_l, self.entropy_l, self.config.compressor_l)):
            if spec.enabled:
                z, bits = model(z, mode, generator=generator, rate=rate)
            else:
                bits = z.new_zeros(z.shape[0])
            out.append(z)
            rate[key] = bits
        return DegradationCode(*out), rate

