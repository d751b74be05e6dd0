"""N (denoising task): Poisson shot noise with a photon count, then per-pixel Bernoulli drop-out."""
from __future__ import annotations

import torch

from redegrade.degradations.base import Degradation
from redegrade.errors import ConfigError

#: Steepness of the surrogate gradient of the clamp (RSG's ``AddNoise.k``).
SURROGATE_K = 2.0
#: Keeps the Gaussian surrogate's standard deviation differentiable at zero intensity.
EPS = 1e-3


class _SurrogateClamp(torch.autograd.Function):
    """Forward: clamp to ``[0,1]``. Backward: gradient of ``sigmoid(k (x − ½))``.

    A hard clamp passes no gradient where the prior's output leaves ``[0,1]``; the sigmoid's slope
    pulls such pixels back instead of leaving them stuck. (Inside the range the slope is below 1,
    at most k/4 = ½ at mid-grey, as in RSG.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(SURROGATE_K * (x - 0.5))
        return grad * SURROGATE_K * s * (1 - s)


def surrogate_clamp(x: torch.Tensor) -> torch.Tensor:
    """Clamp to ``[0,1]`` with a non-zero (sigmoid) surrogate gradient everywhere."""
    return _SurrogateClamp.apply(x)


def drop_mask(shape: tuple[int, ...], p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``[B,1,H,W]`` keep-mask: each pixel (all three channels together) is dropped with probability ``p``."""
    b, _, h, w = shape
    return (torch.rand(b, 1, h, w, generator=generator, device=device) >= p).float()


class PoissonDrop(Degradation):
    """Ground truth: ``Poisson(λx)/λ``, zero whole pixels with probability ``p``, clamp to ``[0,1]``.

    Approximation: surrogate clamp → Gaussian with the Poisson's mean and variance,
    ``(λx + √(λx + ε)·ε')/λ`` → a fresh drop mask → surrogate clamp. Noise and mask are redrawn on
    every call from the instance's own approximation generator (seeded, so a run is reproducible).
    """

    name = "N"

    def __init__(self, photons: float, drop: float, *, resolution: int, seed: int):
        if photons <= 0 or not 0 <= drop < 1:
            raise ConfigError(f"need photons > 0 and 0 <= drop < 1, got ({photons}, {drop})")
        self.photons = float(photons)
        self.drop = float(drop)
        super().__init__(input_size=resolution, output_size=resolution,
                         params={"photons": photons, "drop": drop}, seed=seed)
        # The approximation's own stream (seed + 1 keeps it apart from the ground truth's draws).
        self._approx_gen = torch.Generator().manual_seed((self.seed + 1) % 2**63)

    def _apply(self, u: torch.Tensor) -> torch.Tensor:
        # A fresh CPU generator each call: the same target every time, whatever the device.
        g = torch.Generator().manual_seed(self.seed)
        v = u.detach().float().cpu()
        y = torch.poisson(v * self.photons, generator=g) / self.photons
        y = y * drop_mask(tuple(v.shape), self.drop, g, v.device)
        return y.clamp(0, 1).to(u)

    def _approx(self, u: torch.Tensor) -> torch.Tensor:
        # The prior's output is pre-clamped because the true noise is added to images in [0,1].
        u = surrogate_clamp(u)
        lam = u * self.photons
        eps = torch.randn(u.shape, generator=self._approx_gen).to(u.device)
        # Mean λx, not RSG's λx − ½: Poisson(λx) has mean λx, and the −½ (a continuity correction that
        # only belongs in a CDF) biases the surrogate 0.5/λ darker than the ground truth.
        y = (lam + (lam + EPS).sqrt() * eps) / self.photons
        keep = drop_mask(tuple(u.shape), self.drop, self._approx_gen, torch.device("cpu")).to(u.device)
        return surrogate_clamp(y * keep)
