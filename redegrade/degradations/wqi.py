"""The WQI training mix: CDD's simulated camera degradations, in torch, on the fly.

Applied in a fixed order, each step switched on independently with its probability (tech-facts
§1.12(a)); JPEG is last, and always applied at CDD's ``jpeg_prob`` = 1:

== ===================== ===== ===========================================================
#  step                  p     parameters
== ===================== ===== ===========================================================
1  Gaussian (focus) blur 0.7   kernel ∈ {21, 31, 41}, σ ~ U(0, 30)
2  motion blur           0.5   kernel = 2·randint(1, 20) + 1 ∈ [3, 39], angle ∈ {0..359}, direction ~ U(−1, 1)
3  exposure / contrast   0.2   x·α + β, α ~ U(0.8, 1.2), β = m + m·U(−1, 1), m = (1 − α)/2
4a 1/f ("flicker") noise 0.3   strength ~ U(0, 1)
4b Gaussian noise        0.4   std ~ Exponential(mean 0.03)
5  JPEG (PIL, 4:2:0)     1.0   quality ∈ 30..96
== ===================== ===== ===========================================================

Deviations from CDD's script, on purpose: its 1/f noise runs the inverse FFT over the width and
colour axes of an H×W×C array and so adds noise of amplitude ~1e-4 (its own comment says it has
"no much effect"); ours shapes the spectrum over the two spatial axes and scales a unit-std pink
noise field by ``strength · flicker_amplitude``. The 8-bit conversion before JPEG rounds instead of
truncating. Every draw comes from the ``torch.Generator`` passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F

from redegrade.degradations.jpeg import decode, encode
from redegrade.image import check_shape
from redegrade.pixels.scale import from_unit, to_unit


@dataclass(frozen=True)
class WQIConfig:
    """Probabilities and ranges of the mix (defaults: CDD's ``degradation_simulated``)."""

    blur_prob: float = 0.7
    blur_kernels: tuple[int, ...] = (21, 31, 41)
    blur_max_sigma: float = 30.0
    motion_prob: float = 0.5
    motion_max_half: int = 20          # kernel = 2·randint(1, motion_max_half) + 1, upper bound exclusive
    exposure_prob: float = 0.2
    exposure_max_change: float = 0.2
    flicker_prob: float = 0.3
    flicker_amplitude: float = 0.03    # std of the 1/f field at strength 1 (see module docstring)
    noise_prob: float = 0.4
    noise_mean_std: float = 0.03
    jpeg_min: int = 30
    jpeg_max: int = 96                 # inclusive
    jpeg_prob: float = 1.0             # CDD: always; below 1, the other samples end as 8-bit PNG-like images


#: CDD's ``config_less_challenging.json``.
LESS_CHALLENGING = WQIConfig(blur_max_sigma=10.0, motion_max_half=10, jpeg_min=20)


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, device=g.device))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Integer in ``[lo, hi)``."""
    return int(torch.randint(lo, hi, (), generator=g, device=g.device))


def _pad_mode(x: torch.Tensor, pad: int) -> str:
    # Reflection (OpenCV's default border) needs the image to be larger than the pad.
    return "reflect" if min(x.shape[-2:]) > pad else "replicate"


def gaussian_blur(u: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """OpenCV-style Gaussian blur: a sampled, normalised ``kernel``-tap Gaussian, separable, reflect-101."""
    sigma = max(float(sigma), 1e-3)  # σ → 0 is the identity; avoid 0/0
    t = torch.arange(kernel, dtype=u.dtype, device=u.device) - (kernel - 1) / 2
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c, pad = u.shape[1], kernel // 2
    u = F.pad(u, (pad, pad, pad, pad), mode=_pad_mode(u, pad))
    u = F.conv2d(u, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(u, k.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)


def motion_blur(u: torch.Tensor, kernel: int, angle: float, direction: float) -> torch.Tensor:
    """Linear motion blur (kornia) of length ``kernel`` at ``angle`` degrees; ``direction`` skews the weights."""
    a = torch.tensor([float(angle)], dtype=u.dtype, device=u.device)
    d = torch.tensor([float(direction)], dtype=u.dtype, device=u.device)
    return kornia.filters.motion_blur(u, kernel, a, d, border_type=_pad_mode(u, kernel // 2))


def pink_noise(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Unit-std noise with a 1/f amplitude spectrum over the two spatial axes (per image and channel)."""
    h, w = shape[-2:]
    white = torch.randn(shape, generator=g, device=g.device)
    fy = torch.fft.fftfreq(h, device=g.device)[:, None]
    fx = torch.fft.fftfreq(w, device=g.device)[None, :]
    r = (fx**2 + fy**2).sqrt()
    scale = torch.where(r > 0, 1 / r.clamp_min(1e-12), torch.zeros_like(r))  # no DC: zero-mean field
    field = torch.fft.ifft2(torch.fft.fft2(white) * scale).real
    return field / field.flatten(-2).std(-1).clamp_min(1e-12)[..., None, None]


#: The steps whose output is random given x, pixel by pixel (a noise field is drawn in :meth:`WQIMix.apply`).
NOISE_STEPS = ("flicker_noise", "gaussian_noise")


class WQIMix:
    """Callable ``(x, generator) -> (y, params)`` applying the mix with ``config``.

    ``x`` is ``[1,3,H,W]`` in ``[-1,1]``; ``params`` has one entry per applied step (``"jpeg"`` unless ``jpeg_prob`` < 1 skipped it).
    The two halves are public too: :meth:`sample` draws the parameters, :meth:`apply` applies a given
    parameter set (drawing only the noise fields), e.g. to degrade two images the same way.
    """

    def __init__(self, config: WQIConfig | None = None):
        self.config = config or WQIConfig()

    def sample(self, generator: torch.Generator) -> dict:
        """Draw which steps run and their parameters, in the mix's fixed order."""
        c, g = self.config, generator
        params: dict = {}
        if _uniform(g) < c.blur_prob:
            kernel = c.blur_kernels[_randint(g, 0, len(c.blur_kernels))]
            params["gaussian_blur"] = {"kernel": kernel, "sigma": _uniform(g, 0.0, c.blur_max_sigma)}
        if _uniform(g) < c.motion_prob:
            angle = _randint(g, 0, 360)
            kernel = 2 * _randint(g, 1, c.motion_max_half) + 1
            params["motion_blur"] = {"kernel": kernel, "angle": angle, "direction": _uniform(g, -1.0, 1.0)}
        if _uniform(g) < c.exposure_prob:
            alpha = _uniform(g, 1 - c.exposure_max_change, 1 + c.exposure_max_change)
            margin = (1 - alpha) / 2
            # The offset keeps mid-grey near mid-grey: β ∈ [0, 2m] (or [2m, 0] when α > 1).
            params["exposure"] = {"alpha": alpha, "beta": margin + margin * _uniform(g, -1.0, 1.0)}
        if _uniform(g) < c.flicker_prob:
            params["flicker_noise"] = {"strength": _uniform(g)}
        if _uniform(g) < c.noise_prob:
            # Exponential with mean β by inversion; 1 − U lies in (0, 1], so the log is finite.
            params["gaussian_noise"] = {"std": -c.noise_mean_std * math.log(1.0 - _uniform(g))}
        # no extra draw at jpeg_prob = 1, so CDD's setting keeps its random stream
        if c.jpeg_prob >= 1 or _uniform(g) < c.jpeg_prob:
            params["jpeg"] = {"quality": _randint(g, c.jpeg_min, c.jpeg_max + 1)}
        return params

    @torch.no_grad()
    def apply(self, x: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
        """Apply a parameter set from :meth:`sample`; noise fields are drawn from ``generator``."""
        check_shape(x, (1, 3, None, None), "WQI input")
        u = to_unit(x.float().clamp(-1, 1))
        if "gaussian_blur" in params:
            u = gaussian_blur(u, params["gaussian_blur"]["kernel"], params["gaussian_blur"]["sigma"])
        if "motion_blur" in params:
            p = params["motion_blur"]
            u = motion_blur(u, p["kernel"], p["angle"], p["direction"])
        if "exposure" in params:
            u = u * params["exposure"]["alpha"] + params["exposure"]["beta"]
        if "flicker_noise" in params:
            field = pink_noise(tuple(u.shape), generator).to(u)
            u = u + params["flicker_noise"]["strength"] * self.config.flicker_amplitude * field
        if "gaussian_noise" in params:
            u = u + params["gaussian_noise"]["std"] * torch.randn(u.shape, generator=generator,
                                                                  device=generator.device).to(u)
        if "jpeg" not in params:
            return from_unit(u.clamp(0, 1).mul(255).round().div(255))
        return from_unit(decode(encode(u.clamp(0, 1), params["jpeg"]["quality"]), x.device))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        check_shape(x, (1, 3, None, None), "WQI input")
        params = self.sample(generator)
        return self.apply(x, params, generator), params


def degrade(x: torch.Tensor, generator: torch.Generator, config: WQIConfig | None = None) -> tuple[torch.Tensor, dict]:
    """Apply the WQI mix to ``x`` (``[1,3,H,W]`` in ``[-1,1]``); returns the degraded image and its params."""
    return WQIMix(config)(x, generator)


def degrade_batch(x: torch.Tensor, generator: torch.Generator,
                  config: WQIConfig | None = None) -> tuple[torch.Tensor, list[dict]]:
    """:func:`degrade` each image of a ``[B,3,H,W]`` batch independently (one params dict per image)."""
    mix = WQIMix(config)
    outs = [mix(x[i:i + 1], generator) for i in range(x.shape[0])]
    return torch.cat([o[0] for o in outs]), [o[1] for o in outs]
