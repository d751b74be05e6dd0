"""The universal degradation model: encoders, entropy models, map fusion and synthesis in one module.

::

    y ─HDEN─► e_g [B,256] ──┐                      (entropy_g: head → quantise → tail; rate)
    y ─IDEN─► e_l [B,c_l,H/2,W/2] ──┤               (entropy_l: quantise; rate)
                             concat(e_l, e_g broadcast) ─proj 3×3─► ─ReLU→3×3 (head)─► e [B,8,H/2,W/2]
    x ─────────────────────────────────────────► SynthesisUNet(x, e, n₀…n₃₁) ─► ŷ [B,3,H,W]

Additions to the paper's network (:mod:`redegrade.model.extras`) act around the encoders and the U-Net
when the config names them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.errors import ShapeError
from redegrade.image import check_image, check_shape
from redegrade.model.config import ModelConfig
from redegrade.model.encoders import HDEN, IDEN
from redegrade.model.entropy import CodeEntropyModel
from redegrade.model.extras import Extras, lost_pixels, resized
from redegrade.model.layers import PreActConv
from redegrade.model.synthesis import SynthesisUNet
from redegrade.pixels import MULTIPLE


@dataclass(eq=False)
class DegradationCode:
    """What the encoders say about a degradation: global vector and local map."""

    e_g: torch.Tensor
    """[B, dim_g], unbounded."""
    e_l: torch.Tensor
    """[B, c_l, H/2, W/2] in [0, 1]."""
    keep: torch.Tensor | None = None
    """[B, 1, H, W]: 0 at the pixels y lost (black in every channel), which ŷ renders black; only models
    with the ``lost_pixels`` extra read it from y, None otherwise. Measured, never optimised."""
    factor: torch.Tensor | None = None
    """[B] int64, on the CPU wherever the rest is: y is an image 1/factor of its size brought up (1: it is
    not), so ŷ is rendered from x taken down and up the same way; only models with the ``resized`` extra
    read it from y, None otherwise. Measured, never optimised."""

    def detach(self) -> "DegradationCode":
        return dataclasses.replace(self, e_g=self.e_g.detach(), e_l=self.e_l.detach())

    def to(self, *args, **kwargs) -> "DegradationCode":
        """Every tensor but the factor (CPU metadata) through ``Tensor.to`` (device and/or dtype)."""
        keep = None if self.keep is None else self.keep.to(*args, **kwargs)
        return DegradationCode(self.e_g.to(*args, **kwargs), self.e_l.to(*args, **kwargs), keep, self.factor)

    def codes_of(self, index: torch.Tensor) -> "DegradationCode":
        """e_g and e_l of the batch entries ``index`` with what this code measured of its own y (lost pixels,
        resize factor): another sample's degradation drawn on these observations (training on transfer)."""
        return dataclasses.replace(self, e_g=self.e_g[index], e_l=self.e_l[index])


class MapFusion(nn.Module):
    """(e_g, e_l) → degradation map e [B, map_channels, H/2, W/2] shared by every SFT layer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        m = config.map_channels
        self.proj = nn.Conv2d(config.c_l + config.dim_g, m, 3, 1, 1, bias=True)
        self.head = PreActConv(m, m, 3, act=nn.ReLU())

    def forward(self, code: DegradationCode) -> torch.Tensor:
        return self.head(self.project(code.e_g, code.e_l))

    def project(self, e_g: torch.Tensor, e_l: torch.Tensor) -> torch.Tensor:
        """``proj(concat(e_l, e_g broadcast over e_l's grid))`` without materialising the broadcast.

        e_g is constant over the grid, so its part of the 3×3 conv reduces to one vector per kernel tap
        ([B,M,3,3]); convolving those taps with an all-ones map reproduces the zero-padding borders
        exactly. At 1024² (e at 512²) this avoids a [B,c_l+256,512,512] tensor and its conv.
        """
        b, c_l, h, w = e_l.shape
        weight = self.proj.weight                                       # [M, c_l+dim_g, 3, 3]
        m = weight.shape[0]
        local = F.conv2d(e_l, weight[:, :c_l], self.proj.bias, padding=1)   # [B,M,h,w]
        taps = torch.einsum("ocij,bc->boij", weight[:, c_l:], e_g)         # [B,M,3,3]
        ones = e_l.new_ones(1, 1, h, w)
        glob = F.conv2d(ones, taps.reshape(b * m, 1, 3, 3), padding=1)      # [1,B·M,h,w]
        return local + glob.reshape(b, m, h, w)


class CodedModel(nn.Module):
    """What every degradation model with entropy-coded codes shares: ``config.dim_g``/``config.c_l`` and
    ``entropy_g``/``entropy_l`` (ours and CDD's exact network alike)."""

    def aux_loss(self) -> torch.Tensor:
        """Sum of the EntropyBottlenecks' auxiliary quantile losses (train them with their own optimiser)."""
        return self.entropy_g.aux_loss() + self.entropy_l.aux_loss()

    def _check_code(self, code: DegradationCode, *, batch: int | None = None,
                    size: tuple[int, int] | None = None) -> None:
        c = self.config
        check_shape(code.e_g, (batch, c.dim_g), "e_g")
        b = batch if batch is not None else code.e_g.shape[0]
        check_shape(code.e_l, (b, c.c_l, *(size or (None, None))), "e_l")
        if code.keep is not None:
            check_shape(code.keep, (b, 1, 2 * code.e_l.shape[-2], 2 * code.e_l.shape[-1]), "keep")
        if code.factor is not None:
            check_shape(code.factor, (b,), "factor")

    def _check_synthesis_inputs(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor], *,
                                multiple: int) -> None:
        """x is an image (sides multiples of ``multiple``), the code fits it at half size, and the noise
        maps are :meth:`noise_shapes`'s, one per map."""
        check_image(x, "image", multiple_of=multiple)
        b, _, h, w = x.shape
        self._check_code(code, batch=b, size=(h // 2, w // 2))
        shapes = self.noise_shapes(h, w)
        if len(noise) != len(shapes):
            raise ShapeError(f"expected {len(shapes)} noise maps, got {len(noise)}")
        for i, (n, s) in enumerate(zip(noise, shapes)):
            check_shape(n, (b, 1, *s), f"noise map {i}")


class UniversalDegradationModel(CodedModel):
    """CDD's universal degradation model: ``y → (e_g, e_l)`` and ``(x, e_g, e_l, n) → ŷ``.

    Noise is an explicit input (:meth:`sample_noise`), quantisation an explicit mode (:meth:`quantize`).
    Images are [B,3,H,W] in [-1,1] with H, W multiples of 8.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.hden = HDEN(width=config.enc_width, dim_g=config.dim_g, kernel=config.enc_kernel)
        self.iden = IDEN(width=config.enc_width, c_l=config.c_l, kernel=config.enc_kernel)
        self.entropy_g = CodeEntropyModel(config.dim_g, mlp_layers=config.entropy_mlp_layers, step=config.quant_step_g)
        self.entropy_l = CodeEntropyModel(config.c_l, step=config.quant_step_l)
        self.fusion = MapFusion(config)
        self.synthesis = SynthesisUNet(config, in_channels=3 + Extras.input_channels_for(config.extras))
        self.extras = Extras(config.extras, dim_g=config.dim_g, map_channels=config.map_channels,
                             features=config.widths[0])

    # -- encoders ---------------------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> DegradationCode:
        """y [B,3,H,W] → DegradationCode(e_g [B,dim_g], e_l [B,c_l,H/2,W/2] in [0,1], keep, factor)."""
        check_image(y, "observation", multiple_of=MULTIPLE)
        return DegradationCode(self.extras.global_code(self.hden(y), y), self.iden(y), self.extras.keep_mask(y),
                               self.extras.resize_factor(y))

    def degradation_map(self, code: DegradationCode) -> torch.Tensor:
        """The fused map e [B, map_channels, H/2, W/2] that conditions every SFT layer."""
        self._check_code(code)
        return self.fusion(code)

    # -- noise ------------------------------------------------------------------------------------
    @property
    def num_noise(self) -> int:
        """Number of noise maps (one per SFT layer, 32 for the paper preset, then the extras' maps)."""
        return self.synthesis.num_noise + self.extras.num_noise

    def noise_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of each noise map for an H×W image."""
        return self.config.noise_shapes(height, width)

    def sample_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Fresh N(0,1) maps [B,1,h,w] for image ``x``, drawn from ``generator``.

        ``generator=None`` means a generator seeded with 0 (reproducible; the global RNG is never used).
        """
        check_image(x, "image", multiple_of=MULTIPLE)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        b = x.shape[0]
        return [torch.randn((b, 1, h, w), generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
                for h, w in self.noise_shapes(*x.shape[-2:])]

    # -- synthesis --------------------------------------------------------------------------------
    def synthesize(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor], *,
                   checkpoint: bool = False, dither: torch.Generator | None = None) -> torch.Tensor:
        """ŷ = f̂(x, e_g, e_l, n): x [B,3,H,W], code at H/2, ``num_noise`` maps → [B,3,H,W].

        ``checkpoint`` trades a second forward of each SFT block in the backward for not storing its
        activations (same values and gradients; see :func:`~redegrade.model.synthesis.run_block`).
        ``dither`` (a generator) replaces the JPEG head's rounding by uniform noise (half a step wide),
        as an inversion's forward model needs (:meth:`~redegrade.model.extras.jpeg_head.JpegHead.forward`).
        """
        self._check_synthesis_inputs(x, code, noise, multiple=MULTIPLE)
        return self._synthesize(x, code, noise, checkpoint=checkpoint, dither=dither)

    def synthesize_with_heads(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor], *,
                              fixed_jpeg_steps: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`synthesize` for training: ŷ and what its heads decided (``noise_std``,
        ``jpeg_multipliers``; see :meth:`Extras.finish <redegrade.model.extras.Extras.finish>`), which the
        label losses supervise. With ``fixed_jpeg_steps`` ŷ's gradient does not reach the JPEG steps."""
        self._check_synthesis_inputs(x, code, noise, multiple=MULTIPLE)
        heads: dict[str, torch.Tensor] = {}
        y_hat = self._synthesize(x, code, noise, heads=heads, fixed_jpeg_steps=fixed_jpeg_steps)
        return y_hat, heads

    def _synthesize(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor], *,
                    checkpoint: bool = False, heads: dict[str, torch.Tensor] | None = None,
                    fixed_jpeg_steps: bool = False, dither: torch.Generator | None = None) -> torch.Tensor:
        if code.factor is not None:
            x = resized.apply(x, code.factor)
        e = self.fusion(code)
        k = self.synthesis.num_noise
        feat = self.synthesis.features(self.extras.synthesis_input(x), e, noise[:k], checkpoint=checkpoint)
        out = self.extras.finish(self.synthesis.conv_last(feat), x, feat, e, code.e_g, noise[k:], heads=heads,
                                 fixed_jpeg_steps=fixed_jpeg_steps, dither=dither)
        return out if code.keep is None else lost_pixels.apply(out, code.keep)

    def forward(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor]) -> torch.Tensor:
        """Same as :meth:`synthesize`."""
        return self.synthesize(x, code, noise)

    # -- entropy ----------------------------------------------------------------------------------
    def quantize(self, code: DegradationCode, mode: str, *, generator: torch.Generator | None = None,
                 rate: bool = True) -> tuple[DegradationCode, dict[str, torch.Tensor]]:
        """Quantise both codes by ``mode`` ("noise" | "ste" | "round" | "none"; never from ``self.training``).

        Returns the code to synthesise from and ``rate = {"g": bits [B], "l": bits [B]}``. ``"noise"``
        needs ``generator``. e_g goes through the entropy head/tail MLPs, so ``code_hat.e_g`` differs
        from ``code.e_g`` even with ``"none"``. ``rate=False`` skips the bits (zeros; inversion).
        """
        self._check_code(code)
        e_g, bits_g = self.entropy_g(code.e_g, mode, generator=generator, rate=rate)
        e_l, bits_l = self.entropy_l(code.e_l, mode, generator=generator, rate=rate)
        return dataclasses.replace(code, e_g=e_g, e_l=e_l), {"g": bits_g, "l": bits_l}

