"""StyleGAN2 generator (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"),
written from the published architecture with NVIDIA's parameter and buffer names and shapes, so the
state dicts of NVIDIA's stylegan2-ada-pytorch checkpoints load one-to-one.

    z ─► MappingNetwork ─► ws [B, num_ws, w_dim] ─► SynthesisNetwork ─► img [B, C, R, R] in ≈[-1, 1]
         (2nd-moment norm,                          b4: const ─ conv1 ─ torgb ─────────────┐
          fc0..fcN lrelu,                           b8: conv0(up) ─ conv1 ─ torgb ─(+)◄─ up(img)
          truncation → w_avg)                       …  skip architecture up to bR

Differences from NVIDIA's code, on purpose:
  * always float32 (fp16 blocks compute in fp32; ``conv_clamp`` still applies) and always the fused
    (grouped-convolution) modulated conv, which is what NVIDIA's code runs in eval mode in fp32;
  * the synthesis takes per-layer ``noise`` and a ``torch.Generator`` instead of drawing noise itself, and
    its default ``noise_mode`` is ``"const"`` (deterministic) instead of ``"random"``;
  * ``ws`` may also be W++ ([B, num_ws·V, w_dim], V ≥ the widest layer): every layer then gets V style
    vectors and modulates with a per-(output, input) channel matrix, as in RSG (Poirier-Ginter & Lalonde,
    CVPR 2023). W++ that repeats each W+ vector V times gives exactly the W+ image.
  * ``w_avg`` is never updated (inference only).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from redegrade.errors import ConfigError, ShapeError
from redegrade.image import check_shape
from redegrade_stylegan2.ops.bias_act import ACTIVATIONS, bias_act
from redegrade_stylegan2.ops.upfirdn2d import setup_filter, upfirdn2d, upsample2d

NOISE_MODES = ("const", "random", "none")


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, *, f: torch.Tensor | None = None, up: int = 1,
                    padding: int = 0, groups: int = 1, flip_weight: bool = True) -> torch.Tensor:
    """Convolution with optional ×``up`` upsampling (transposed conv, then FIR filter ``f``), padded so the
    output is exactly ``up``× the input for odd kernels with ``padding = k // 2``."""
    out_c, in_c_per_group, kh, kw = w.shape
    if up == 1:
        if not flip_weight:  # conv2d correlates; flip_weight=False asks for a true convolution
            w = w.flip([2, 3])
        return F.conv2d(x, w, padding=padding, groups=groups)
    fh, fw = f.shape[0], f.shape[-1]
    px0, px1 = padding + (fw + up - 1) // 2, padding + (fw - up) // 2
    py0, py1 = padding + (fh + up - 1) // 2, padding + (fh - up) // 2
    # the transposed conv wants [in, out/groups, k, k] per group
    w = w.reshape(groups, out_c // groups, in_c_per_group, kh, kw).transpose(1, 2)
    w = w.reshape(groups * in_c_per_group, out_c // groups, kh, kw)
    if flip_weight:
        w = w.flip([2, 3])
    px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, w, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     flip_weight: bool = True) -> torch.Tensor:
    """Modulated (and demodulated) convolution as one grouped conv over the batch.

    ``styles`` is [B, I] (W / W+: one scale per input channel) or [B, V, I] with V ≥ O (W++: the scale of
    output o and input i is ``styles[:, o, i]``).
    """
    b = x.shape[0]
    out_c, in_c, kh, kw = weight.shape
    if styles.ndim == 2:
        s = styles[:, None, :, None, None]                                  # [B,1,I,1,1]
    else:
        if styles.shape[1] < out_c:
            raise ShapeError(f"W++ needs at least {out_c} style vectors per layer here, got {styles.shape[1]}")
        s = styles[:, :out_c, :in_c, None, None]                            # [B,O,I,1,1]
    w = weight.unsqueeze(0) * s                                             # [B,O,I,k,k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, -1, *x.shape[2:])                                      # [1,B·I,H,W]
    x = conv2d_resample(x, w.reshape(-1, in_c, kh, kw), f=resample_filter, up=up, padding=padding,
                        groups=b, flip_weight=flip_weight)
    x = x.reshape(b, -1, *x.shape[2:])                                      # [B,O,H',W']
    return x if noise is None else x + noise


class FullyConnectedLayer(torch.nn.Module):
    """Linear layer with equalised learning rate: runtime gains ``lr_multiplier/√in`` and ``lr_multiplier``."""

    def __init__(self,
                 in_features: int,              # input width
                 out_features: int,             # output width
                 bias: bool = True,             # learn an additive bias?
                 activation: str = "linear",    # 'linear', 'lrelu', ...
                 lr_multiplier: float = 1.0,    # learning-rate multiplier (scales the stored parameters)
                 bias_init: float = 0.0,        # initial bias (1 for style affines: styles start at 1)
                 ):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain
        b = self.bias
        if b is not None and self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            # one addmm on the flattened batch, so W++ styles are bit-identical to W+ when vectors repeat
            return torch.addmm(b.unsqueeze(0), x.reshape(-1, x.shape[-1]), w.t()).reshape(*x.shape[:-1], -1)
        return bias_act(x.matmul(w.t()), b, dim=x.ndim - 1, act=self.activation)


class MappingNetwork(torch.nn.Module):
    """z (and optional label c) → w, broadcast to ``num_ws`` copies, with truncation towards ``w_avg``."""

    def __init__(self,
                 z_dim: int,                        # input latent (Z) width, 0 = no z
                 c_dim: int,                        # label width, 0 = unconditional
                 w_dim: int,                        # output latent (W) width
                 num_ws: int | None,                # number of w copies to output, None = do not broadcast
                 num_layers: int = 8,               # mapping depth (NVIDIA's small configs use 2)
                 embed_features: int | None = None, # label embedding width, None = w_dim
                 layer_features: int | None = None, # hidden width, None = w_dim
                 activation: str = "lrelu",         # hidden activation
                 lr_multiplier: float = 0.01,       # learning-rate multiplier of every layer
                 w_avg_beta: float | None = 0.995,  # decay of the tracked W average (training); None = no w_avg
                 ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, skip_w_avg_update: bool = True) -> torch.Tensor:
        """ws [B, num_ws, w_dim]; ``truncation_psi`` < 1 pulls the first ``truncation_cutoff`` ws (all when
        ``None``) towards ``w_avg``: w_avg + ψ·(w − w_avg)."""
        x = None
        if self.z_dim > 0:
            check_shape(z, (None, self.z_dim), "z")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None:
                raise ShapeError(f"this generator is conditional: pass c with shape B×{self.c_dim}")
            check_shape(c, (None, self.c_dim), "c")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = y if x is None else torch.cat([x, y], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ConfigError("truncation needs w_avg, but this mapping network has none (w_avg_beta=None)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


class SynthesisLayer(torch.nn.Module):
    """Modulated 3×3 conv (optionally ×2 upsampling) + noise + bias + lrelu·√2 (+ clamp)."""

    def __init__(self,
                 in_channels: int,                  # input channels
                 out_channels: int,                 # output channels
                 w_dim: int,                        # W width
                 resolution: int,                   # output resolution
                 kernel_size: int = 3,              # conv kernel size
                 up: int = 1,                       # upsampling factor (1 or 2)
                 use_noise: bool = True,            # per-pixel noise input?
                 activation: str = "lrelu",         # activation
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass filter for upsampling
                 conv_clamp: float | None = None,   # clamp activations to ±X, None = off
                 channels_last: bool = False,       # memory format (ignored: always contiguous)
                 ):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const",
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                gain: float = 1) -> torch.Tensor:
        styles = self.affine(w)                                     # [B,I] or [B,V,I]
        n = None
        if self.use_noise and noise is not None:
            n = noise * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            # generator=None draws from torch's global RNG, as NVIDIA's code does (pass one to reproduce)
            dev = generator.device if generator is not None else x.device
            n = torch.randn([x.shape[0], 1, self.resolution, self.resolution], generator=generator,
                            device=dev).to(x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            n = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=n, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(torch.nn.Module):
    """Modulated 1×1 conv to image channels, no demodulation, linear, (clamp)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    """One resolution: (const | conv0 ×2 up) → conv1 → torgb, image accumulated by the skip architecture."""

    def __init__(self,
                 in_channels: int,                  # input channels, 0 = first block (learned const input)
                 out_channels: int,                 # output channels
                 w_dim: int,                        # W width
                 resolution: int,                   # block resolution
                 img_channels: int,                 # image channels
                 is_last: bool,                     # last block?
                 architecture: str = "skip",        # 'skip' or 'orig' ('resnet' is not supported)
                 resample_filter: Sequence[float] = (1, 3, 3, 1),  # low-pass filter for resampling
                 conv_clamp: float | None = None,   # clamp activations to ±X, None = off
                 use_fp16: bool = False,            # NVIDIA's fp16 flag: recorded, computation stays fp32
                 fp16_channels_last: bool = False,  # ignored
                 **layer_kwargs,                    # forwarded to SynthesisLayer (use_noise, activation, ...)
                 ):
        if architecture not in ("skip", "orig"):
            raise ConfigError(f"synthesis architecture {architecture!r} is not supported (skip, orig)")
        super().__init__()
        self.in_channels, self.w_dim, self.resolution = in_channels, w_dim, resolution
        self.img_channels, self.is_last, self.architecture, self.use_fp16 = img_channels, is_last, architecture, use_fp16
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1

    def layers(self) -> list[SynthesisLayer]:
        return [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, *,
                noise_mode: str = "const", noise: Sequence[torch.Tensor | None] | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``ws`` [B, num_conv + num_torgb, V, w_dim]; V = 1 is W/W+, V > 1 W++."""
        w_iter = iter(w[:, 0] if w.shape[1] == 1 else w for w in ws.unbind(dim=1))
        noise = noise or [None] * self.num_conv
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        for layer, n in zip(self.layers(), noise):
            x = layer(x, next(w_iter), noise_mode=noise_mode, noise=n, generator=generator)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter))
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(torch.nn.Module):
    """ws → image. Accepts W/W+ [B, num_ws, w_dim] and W++ [B, num_ws·V, w_dim] (V ≥ ``wpp_vectors``)."""

    def __init__(self,
                 w_dim: int,                    # W width
                 img_resolution: int,           # output resolution (power of two ≥ 4)
                 img_channels: int,             # image channels
                 channel_base: int = 32768,     # channels at resolution r: min(channel_base // r, channel_max)
                 channel_max: int = 512,        # widest layer
                 num_fp16_res: int = 0,         # NVIDIA's fp16 resolutions: recorded, computation stays fp32
                 **block_kwargs,                # forwarded to SynthesisBlock (conv_clamp, architecture, ...)
                 ):
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ConfigError(f"img_resolution must be a power of two ≥ 4, got {img_resolution}")
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(channels[r // 2] if r > 4 else 0, channels[r], w_dim, r, img_channels,
                                   is_last=(r == img_resolution), use_fp16=(r >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if r == img_resolution else 0)
            setattr(self, f"b{r}", block)
        # W++ needs one style vector per output channel of the widest layer (RSG uses V = 512 for FFHQ)
        self.wpp_vectors = max(max(channels.values()), img_channels)

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{r}") for r in self.block_resolutions]

    @property
    def noise_shapes(self) -> list[tuple[int, int]]:
        """(H, W) of each noise input, in the order of the ``noise`` argument (b4.conv1, b8.conv0, ...)."""
        return [(l.resolution, l.resolution) for b in self.blocks() for l in b.layers()]

    def forward(self, ws: torch.Tensor, noise_mode: str = "const",
                noise: Sequence[torch.Tensor | None] | None = None, generator: torch.Generator | None = None,
                **unused) -> torch.Tensor:
        """Image [B, img_channels, R, R] from ws [B, num_ws, w_dim] (W/W+) or [B, num_ws·V, w_dim] (W++).

        ``noise_mode``: ``const`` (the stored ``noise_const`` maps), ``random`` (fresh N(0,1) from
        ``generator``), ``none`` (no noise). ``noise``: one tensor per layer (see :attr:`noise_shapes`),
        broadcastable to [B,1,H,W]; entries that are not ``None`` replace the source ``noise_mode`` picks.
        Extra keyword arguments of NVIDIA's signature (``force_fp32``, ``fused_modconv``) are accepted and
        ignored: the computation is always fp32 and fused.
        """
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if unused.keys() - {"force_fp32", "fused_modconv"}:
            raise TypeError(f"unexpected arguments {sorted(unused.keys() - {'force_fp32', 'fused_modconv'})}")
        if ws.ndim != 3 or ws.shape[2] != self.w_dim or ws.shape[1] % self.num_ws:
            raise ShapeError(f"ws must be B×{self.num_ws}×{self.w_dim} (W/W+) or B×{self.num_ws}·V×{self.w_dim} "
                             f"(W++), got {'×'.join(map(str, ws.shape))}")
        v = ws.shape[1] // self.num_ws
        if v > 1 and v < self.wpp_vectors:
            raise ShapeError(f"W++ needs V ≥ {self.wpp_vectors} vectors per layer, got ws with V = {v}")
        n_layers = len(self.noise_shapes)
        if noise is not None and len(noise) != n_layers:
            raise ShapeError(f"noise must hold {n_layers} entries (one per layer), got {len(noise)}")
        ws = ws.to(torch.float32).reshape(ws.shape[0], self.num_ws, v, self.w_dim)
        x = img = None
        w_idx = layer_idx = 0
        for block in self.blocks():
            # the ToRGB of block k shares its w with conv0 of block k+1 (w_idx advances by num_conv)
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            cur_noise = None if noise is None else noise[layer_idx: layer_idx + block.num_conv]
            x, img = block(x, img, cur, noise_mode=noise_mode, noise=cur_noise, generator=generator)
            w_idx += block.num_conv
            layer_idx += block.num_conv
        return img


_IGNORED_KWARGS = {"fp16_channels_last", "channels_last"}


class Generator(torch.nn.Module):
    """NVIDIA's ``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs,
    synthesis_kwargs)``: ``G(z, c, truncation_psi, truncation_cutoff, noise_mode=...)``."""

    def __init__(self,
                 z_dim: int,                            # input latent (Z) width
                 c_dim: int,                            # label width, 0 = unconditional
                 w_dim: int,                            # intermediate latent (W) width
                 img_resolution: int,                   # output resolution
                 img_channels: int,                     # output channels
                 mapping_kwargs: dict | None = None,    # MappingNetwork arguments (num_layers, lr_multiplier, ...)
                 synthesis_kwargs: dict | None = None,  # SynthesisNetwork arguments (channel_base, conv_clamp, ...)
                 ):
        super().__init__()
        mapping_kwargs = {k: v for k, v in (mapping_kwargs or {}).items() if k not in _IGNORED_KWARGS}
        synthesis_kwargs = {k: v for k, v in (synthesis_kwargs or {}).items() if k not in _IGNORED_KWARGS}
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                img_channels=img_channels, mapping_kwargs=dict(mapping_kwargs),
                                synthesis_kwargs=dict(synthesis_kwargs))
        try:
            self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                              **synthesis_kwargs)
            self.num_ws = self.synthesis.num_ws
            self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)
        except TypeError as exc:  # an unknown constructor argument: say which
            raise ConfigError(f"unsupported StyleGAN2 generator argument: {exc}") from exc

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, **synthesis_kwargs) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, **synthesis_kwargs)
