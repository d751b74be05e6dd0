"""An observation that is an upsampled smaller image is rendered from x at that size (the ``resized`` extra).

FFHQ-X's U observes a face at 1/k of its size, and every restore brings y back to the prior's size
with :func:`redegrade.image.resize` (bicubic). Such a y lies, to float precision, in the range of the
bicubic upsampler from (H/k)×(W/k): :func:`measure` finds k from y alone, as ``lost_pixels`` finds the
dropped pixels, and :func:`apply` takes x down and up the same way before the synthesis. A synthesis
that has to render an 8× blur itself re-degrades in-range U targets at the true x to 26–31 dB, barely
above the identity's 26–30; x resized down and up gives 38–44 dB. With the blur measured, the synthesis
only renders what came after the resize (FFHQ-X's N, A and P at the small size), and the inversion's x
gets no gradient from detail y cannot show.
"""
from __future__ import annotations

import functools

import torch

from redegrade.image import resize

#: y is called k× upsampled when the least-squares fit from 1/k of its size leaves at most this share of
#: the residual that a fit from 1/(2k) leaves: on in-range U observations the share is 0.00–0.06 at the
#: true k (above 0 only where bicubic overshoots clip), and 0.13–1 for clean faces, photo crops and N,
#: A, P observations at every k, and at 2k for U.
RATIO = 0.1
#: ...and the fit from 1/(2k) must miss by at least this much (mean |·|, [-1,1] units; 8-bit rounding
#: alone leaves 0.002), so that a flat image, which every size explains, is not called upsampled.
MIN_DETAIL = 0.002
#: ...and the fit from 1/k must itself be close (in-range U observations: at most 0.021, where bicubic
#: overshoots of N's noise clip), so that a smooth image with one sharp edge is not called upsampled.
MAX_MISFIT = 0.03
#: The smallest size a fit is tried from.
MIN_SIDE = 2


@functools.lru_cache(maxsize=64)
def _upsampler(small: int, large: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The [large, small] matrix of :func:`redegrade.image.resize`'s bicubic upsampling along one axis and
    its pseudo-inverse, in float32 on ``device``."""
    eye = torch.eye(small, dtype=torch.float64).view(small, 1, small, 1)
    up = torch.nn.functional.interpolate(eye, size=(large, 1), mode="bicubic", align_corners=False)
    up = up.view(small, large).T.contiguous()
    return up.float().to(device), torch.linalg.pinv(up).float().to(device)


def _misfit(y: torch.Tensor, k: int) -> torch.Tensor:
    """[B]: mean |y − U·z*·Vᵀ| for the least-squares z* at (H/k)×(W/k)."""
    h, w = y.shape[-2:]
    uh, uh_inv = _upsampler(h // k, h, str(y.device))
    uw, uw_inv = _upsampler(w // k, w, str(y.device))
    z = uh_inv @ y @ uw_inv.T
    return (uh @ z @ uw.T - y).abs().mean(dim=(1, 2, 3))


def measure(y: torch.Tensor) -> torch.Tensor:
    """[B] int64 on the CPU: the factor k (1, 2, 4, …) by which each y [B,3,H,W] in [-1,1] was
    upsampled, 1 if none. On the CPU because :func:`apply` reads it at every forward, where a device
    tensor would cost a device-to-host sync each step.

    Tries k = 2, 4, … while 2k divides H and W and (H/2k)×(W/2k) is at least :data:`MIN_SIDE`; the
    largest k whose fit passes :data:`RATIO`, :data:`MIN_DETAIL` and :data:`MAX_MISFIT` wins.
    """
    y = y.detach().float()
    b, _, h, w = y.shape
    candidates = []
    k = 2
    while h % (2 * k) == 0 and w % (2 * k) == 0 and min(h, w) // (2 * k) >= MIN_SIDE:
        candidates.append(k)
        k *= 2
    misfit = {k: _misfit(y, k) for k in {*candidates, *(2 * k for k in candidates)}}
    factor = torch.ones(b, dtype=torch.int64, device=y.device)
    for k in candidates:
        fit, coarser = misfit[k], misfit[2 * k]
        upsampled = (coarser >= MIN_DETAIL) & (fit <= RATIO * coarser) & (fit <= MAX_MISFIT)
        factor = torch.where(upsampled, torch.full_like(factor, k), factor)
    return factor.cpu()


def apply(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x [B,3,H,W] brought to (H/k)×(W/k) and back with :func:`redegrade.image.resize` (area down,
    bicubic up), each sample by its own ``factor`` [B] (on the CPU, see :func:`measure`); k = 1 leaves a
    sample as it is."""
    h, w = x.shape[-2:]
    out = x
    for k in factor.unique().tolist():
        if k > 1:
            rows = (factor == k).nonzero().flatten().to(x.device)
            out = out.index_put((rows,), resize(resize(x[rows], (h // k, w // k)), (h, w)))
    return out
