"""Pixel noise added to ŷ at full resolution from three extra noise maps (:class:`NoiseHead`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NoiseHead(nn.Module):
    """Pixel noise ``σ(F, e, e_g)·(k∗z)``: a per-pixel, per-channel level read by a small MLP from the last
    decoder features F and the degradation map e, plus a direct read of the global code e_g, times three
    N(0,1) maps z mixed by a learned 3×3 kernel k (colour and spatial correlation).

    Noise injected only inside the SFT layers starts with no gradient (a loss that compares statistics
    is flat at zero noise amplitude); an explicit, non-zero level does. σ = softplus(s) of the MLP's
    output s: positive, so every noisy target pushes the level the same way (a signed σ settles at ≈0
    with a sign that changes from pixel to pixel, where the pixels' gradients cancel). σ starts at
    ``init_sigma`` everywhere. The e_g read is there because noise strength is global, and through F
    and the fused map alone the level is a ReLU and a bottleneck away from the code.
    """

    #: Gain of the e_g read (weights stored divided by it; see
    #: :attr:`~redegrade.model.extras.jpeg_head.JpegHead.GAIN`).
    CODE_GAIN = 10.0

    def __init__(self, channels: int, map_channels: int, init_sigma: float = 0.02, *, dim_g: int):
        super().__init__()
        self.code = nn.Linear(dim_g, 3, bias=False)
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

    def sigma_map(self, feat: torch.Tensor, e: torch.Tensor, e_g: torch.Tensor) -> torch.Tensor:
        """The noise level σ ``[B,3,H,W]`` (in ``[-1,1]`` image units) the head puts on each pixel."""
        e_full = F.interpolate(e, size=feat.shape[-2:], mode="bilinear", align_corners=True)
        h = torch.cat([feat, e_full], dim=1)
        s = self.level(h) + self.CODE_GAIN * self.code(e_g)[:, :, None, None]
        # σ ≤ 1 (half the [-1,1] range) keeps an early bad step from blowing the output up
        return F.softplus(s).clamp(max=1)

    def output_std(self, feat: torch.Tensor, e: torch.Tensor, e_g: torch.Tensor) -> torch.Tensor:
        """The standard deviation ``[B,3,H,W]`` of the noise the head adds: σ times the gain of ``mix``
        (each output channel of k∗z, z i.i.d. N(0,1), has std ‖k_c‖₂)."""
        gain = self.mix.weight.flatten(1).norm(dim=1)
        return self.sigma_map(feat, e, e_g) * gain[None, :, None, None].to(feat.dtype)

    def forward(self, feat: torch.Tensor, e: torch.Tensor, z: torch.Tensor, e_g: torch.Tensor) -> torch.Tensor:
        return self.sigma_map(feat, e, e_g) * self.mix(z.to(feat.dtype))
