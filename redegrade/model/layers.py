"""Building blocks of the synthesis network: pre-activation convs, the SFT layer with its IDA term,
and the SFT residual block (tech-facts §1.7).

Noise is always an argument: no layer draws random numbers, so a backend can optimise and replay it.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.pixels.jpeg import quantise_ycc, quantization_tables, round_to_step


def lrelu(slope: float = 0.01) -> nn.Module:
    return nn.LeakyReLU(slope)


class PreActConv(nn.Sequential):
    """(activation →) conv, bias-free by default, "same" padding for stride 1 and halving for 4×4 s2.

    Pre-activation as in CDD's ``modules.Conv2d``: the activation acts on the input of the conv.
    """

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, act: nn.Module | None = None,
                 bias: bool = False):
        pad = kernel // 2 - 1 if (stride == 2 and kernel % 2 == 0) else (kernel - 1) // 2
        layers = [act] if act is not None else []
        layers.append(nn.Conv2d(cin, cout, kernel, stride, pad, bias=bias))
        super().__init__(*layers)


class PreActConvT(nn.Sequential):
    """(activation →) transposed conv that doubles the size (4×4 s2, padding 1, bias-free)."""

    def __init__(self, cin: int, cout: int, kernel: int = 4, *, stride: int = 2, act: nn.Module | None = None):
        pad = (kernel - 1 + 1 - stride) // 2
        layers = [act] if act is not None else []
        layers.append(nn.ConvTranspose2d(cin, cout, kernel, stride, pad, bias=False))
        super().__init__(*layers)


class IDA(nn.Module):
    """Degradation-aware depthwise interaction term: IDA(F, e) = DConv(DS(DConv(e_sm)) ⊙ DS(F)).

    ``e_sm`` is the degradation map at half the feature resolution; the map path lifts it to h with a
    2×2 transposed conv and brings it back to h/2 with a strided 3×3, the feature path halves F, and
    their product is lifted back to h.
    """

    def __init__(self, channels: int, map_channels: int):
        super().__init__()
        mid = (channels + map_channels) // 2
        self.map_up = nn.ConvTranspose2d(map_channels, mid, 2, 2, bias=False)
        self.map_act = nn.LeakyReLU(0.1)
        self.map_down = nn.Conv2d(mid, mid, 3, 2, 1, bias=False)
        self.feat_down = nn.Conv2d(channels, mid, 3, 2, 1, bias=False)
        self.out_up = nn.ConvTranspose2d(mid, channels, 2, 2, bias=True)

    def forward(self, feat: torch.Tensor, e_sm: torch.Tensor) -> torch.Tensor:
        m = self.map_down(self.map_act(self.map_up(e_sm)))       # [B,mid,h/2,w/2]
        return self.out_up(m * self.feat_down(feat))             # [B,C,h,w]


class SFTLayer(nn.Module):
    """Spatial feature transform conditioned on the degradation map e and one noise map n.

    out = F·(1 + γ(e)) + β(e, n) + IDA(F, e), with e resized (bilinear, align_corners=True) to the
    feature resolution (for γ, β) and to half of it (for IDA).
    """

    def __init__(self, channels: int, map_channels: int):
        super().__init__()
        reduce = (map_channels + channels) // 4
        self.gamma = nn.Sequential(nn.Conv2d(map_channels, reduce, 1), nn.LeakyReLU(0.1),
                                   nn.Conv2d(reduce, channels, 1))
        self.beta = nn.Sequential(nn.Conv2d(map_channels + 1, reduce, 1), nn.LeakyReLU(0.1),
                                  nn.Conv2d(reduce, channels, 1))
        self.ida = IDA(channels, map_channels)

    def forward(self, feat: torch.Tensor, e: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h, w = feat.shape[-2:]
        e_full = F.interpolate(e, size=(h, w), mode="bilinear", align_corners=True)
        e_sm = F.interpolate(e, size=(h // 2, w // 2), mode="bilinear", align_corners=True)
        beta = self.beta(torch.cat([e_full, noise.to(feat.dtype)], dim=1))
        return feat * (1 + self.gamma(e_full)) + beta + self.ida(feat, e_sm)


class SFTResBlock(nn.Module):
    """y = conv2(SFT₂(conv1(SFT₁(x, e, n₁)), e, n₂)); out = x + y. Consumes two noise maps."""

    def __init__(self, channels: int, map_channels: int, *, act: str = "relu"):
        super().__init__()
        make = (lambda: nn.ReLU()) if act == "relu" else (lambda: lrelu())
        self.sft1 = SFTLayer(channels, map_channels)
        self.conv1 = PreActConv(channels, channels, 3, act=make())
        self.sft2 = SFTLayer(channels, map_channels)
        self.conv2 = PreActConv(channels, channels, 3, act=make())

    def forward(self, x: torch.Tensor, e: torch.Tensor, n1: torch.Tensor, n2: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.sft1(x, e, n1))
        y = self.conv2(self.sft2(y, e, n2))
        return x + y


def grid_phase(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """[1,8,H,W]: cos and sin of 2π·row/p and 2π·col/p for p = 8 and 4 (JPEG's block grid)."""
    rows = torch.arange(height, device=like.device, dtype=like.dtype)
    cols = torch.arange(width, device=like.device, dtype=like.dtype)
    maps = []
    for period in (8, 4):
        for t, shape in ((rows, (height, 1)), (cols, (1, width))):
            a = (2 * math.pi / period) * t.view(shape)
            maps += [a.cos().expand(height, width), a.sin().expand(height, width)]
    return torch.stack(maps).unsqueeze(0)


class NoiseHead(nn.Module):
    """Pixel noise ``σ(F, e)·(k∗z)``: a per-pixel, per-channel level read by a small MLP from the last
    decoder features F and the degradation map e, times three N(0,1) maps z mixed by a learned 3×3
    kernel k (colour and spatial correlation).

    σ = softplus(s) of the MLP's output s: positive, so every noisy target pushes the level the same way
    (a signed σ settles at ≈0 with a sign that changes from pixel to pixel, where the pixels' gradients
    cancel). σ starts at ``init_sigma`` everywhere.

    ``dim_g`` > 0 adds a direct read of the global code e_g to the level, as the JPEG head has: noise
    strength is global, and through F and the fused map alone the level is a ReLU and a bottleneck
    away from the code.
    """

    #: Gain of the e_g read (weights stored divided by it; see :attr:`JpegHead.GAIN`).
    CODE_GAIN = 10.0

    def __init__(self, channels: int, map_channels: int, init_sigma: float = 0.02, *, dim_g: int = 0):
        super().__init__()
        self.code = nn.Linear(dim_g, 3, bias=False) if dim_g else None
        if self.code is not None:
            nn.init.normal_(self.code.weight, std=1e-4)
        hidden = channels
        self.level = nn.Sequential(nn.Conv2d(channels + map_channels, hidden, 1), nn.LeakyReLU(0.1),
                                   nn.Conv2d(hidden, 3, 1))
        nn.init.zeros_(self.level[2].weight)
        nn.init.constant_(self.level[2].bias, math.log(math.expm1(init_sigma)))  # softplus⁻¹(σ₀)
        self.mix = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.weight[:, :, 1, 1] = torch.eye(3)

    def sigma_map(self, feat: torch.Tensor, e: torch.Tensor, e_g: torch.Tensor | None = None) -> torch.Tensor:
        """The noise level σ ``[B,3,H,W]`` (in ``[-1,1]`` image units) the head puts on each pixel."""
        e_full = F.interpolate(e, size=feat.shape[-2:], mode="bilinear", align_corners=True)
        h = torch.cat([feat, e_full], dim=1)
        s = self.level(h)
        if self.code is not None:
            s = s + self.CODE_GAIN * self.code(e_g)[:, :, None, None]
        # σ ≤ 1 (half the [-1,1] range) keeps an early bad step from blowing the output up
        return F.softplus(s).clamp(max=1)

    def output_std(self, feat: torch.Tensor, e: torch.Tensor, e_g: torch.Tensor | None = None) -> torch.Tensor:
        """The standard deviation ``[B,3,H,W]`` of the noise the head adds: σ times the gain of ``mix``
        (each output channel of k∗z, z i.i.d. N(0,1), has std ‖k_c‖₂; the shipped model's gains were 0.5–0.8,
        so a σ matched to the target drew two thirds of the noise)."""
        gain = self.mix.weight.flatten(1).norm(dim=1)
        return self.sigma_map(feat, e, e_g) * gain[None, :, None, None].to(feat.dtype)

    def forward(self, feat: torch.Tensor, e: torch.Tensor, z: torch.Tensor, e_g: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.sigma_map(feat, e, e_g) * self.mix(z.to(feat.dtype))


class JpegHead(nn.Module):
    """JPEG's quantisation applied to ŷ, with step sizes read from the degradation map e and code e_g.

    Each 8×8 block (on the grid anchored at pixel 0, as in a JPEG file) gets two multipliers
    ``m = softplus(conv1×1(avgpool(e)) + linear(e_g))`` of the libjpeg quality-50 luma and chroma tables
    (m = 2.5 is quality 20, m = 0.1 quality 95); its YCbCr DCT coefficients are rounded to those steps
    (:func:`~redegrade.pixels.jpeg.round_to_step`: m's gradient says how many coefficients a larger
    step would zero; ŷ's passes straight through, in training mode outside the zero bin only, so that
    the frozen model in an inversion gives x a gradient for every coefficient). Why: after 22k steps
    the U-Net alone reproduced 0.09 of a q=20 JPEG's blockiness; a grid of independently rounded DCT
    coefficients is hard to draw with 3×3 convolutions. m starts at ``init_scale`` (quality ≈ 95) for every input.
    With ``subsample`` chroma is 2×2-averaged before and upsampled after (4:2:0, JPEG's default).
    """

    #: The 1×1 conv's output is multiplied by this (its weights stored divided by it), as StyleGAN's
    #: equalised learning rate does: Adam moves each weight by ≈ lr per step whatever its gradient, and
    #: JPEG moves the pooled map e by only ≈ 0.1, so a readout of weight ≈ 10 is needed; at gain 10 a
    #: fine-tune at lr 2.5e-4 had reached 0.2 after 1000 steps and every input still got the same step.
    GAIN = 50.0

    def __init__(self, map_channels: int, dim_g: int, init_scale: float = 0.1, max_scale: float = 10.0,
                 *, subsample: bool = False):
        super().__init__()
        self.subsample = subsample
        self.scale = nn.Conv2d(map_channels, 2, 1)
        # a direct read of e_g as well: JPEG quality is global, and through the fused map alone (a ReLU
        # and an 8-channel bottleneck away) the step reached only ≈0.3 of libjpeg's for q=20
        self.code = nn.Linear(dim_g, 2, bias=False)
        nn.init.normal_(self.code.weight, std=1e-4)
        # small, not zero: with zero weights the step would pass no gradient back to the code at first
        nn.init.normal_(self.scale.weight, std=1e-3)
        nn.init.constant_(self.scale.bias, math.log(math.expm1(init_scale)) / self.GAIN)
        self.max_scale = max_scale
        luma, chroma = quantization_tables(50)
        # not persistent: fixed constants, not weights (checkpoints stay free of them)
        self.register_buffer("tables", torch.stack([luma, chroma]), persistent=False)

    def multipliers(self, e: torch.Tensor, e_g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-block table multipliers ``[B,2,H/8,W/8]`` (luma, chroma) from e and e_g for an H×W image."""
        pooled = F.adaptive_avg_pool2d(e, (size[0] // 8, size[1] // 8))
        m = F.softplus(self.GAIN * (self.scale(pooled) + self.code(e_g)[:, :, None, None]))
        # a smooth cap (a clamp has no gradient above it: multipliers that overshoot would stay there)
        return self.max_scale * torch.tanh(m / self.max_scale)

    def forward(self, y: torch.Tensor, e: torch.Tensor, e_g: torch.Tensor, *,
                multipliers: torch.Tensor | None = None) -> torch.Tensor:
        """Round ``y``'s DCT to the steps of :meth:`multipliers` (or of the ``multipliers`` given)."""
        m = (self.multipliers(e, e_g, y.shape[-2:]) if multipliers is None else multipliers).to(y.dtype)
        steps = m[..., None, None] * self.tables.to(y.dtype)[None, :, None, None]  # [B,2,H/8,W/8,8,8]
        # baseline JPEG stores steps as bytes: libjpeg caps them at 255 (most high frequencies below q≈20)
        steps = torch.minimum(steps, steps.new_tensor(255.0))
        out = quantise_ycc((y + 1) * 127.5, steps[:, 0], steps[:, 1], subsample=self.subsample,
                           quantiser=functools.partial(round_to_step, zero_bin_gradient=not self.training))
        return out / 127.5 - 1


class ResidualMLP(nn.Module):
    """``layers`` residual blocks x + Linear(ReLU(Linear(x))) with a C/4 bottleneck (entropy head/tail).

    ``hidden`` overrides the bottleneck width (CDD's ``mid_channels``; converted CDD models only).
    """

    def __init__(self, channels: int, layers: int, *, hidden: int | None = None):
        super().__init__()
        hidden = max(channels // 4, 1) if hidden is None else hidden
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b(x)
        return x
