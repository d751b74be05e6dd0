"""Whole pixels set to black with a probability read from e_g (:class:`PixelDrop`)."""
from __future__ import annotations

import math

import torch
from torch import nn


class PixelDrop(nn.Module):
    """Drop each pixel (all channels, to -1) with probability ``p = sigmoid(GAIN·w·e_g + b)``.

    FFHQ-X's N drops pixels at random, which brightens nothing and darkens each pixel in proportion to
    its intensity: E[y] = (1 − p)·x in [0,1] units. A synthesis that must render the drop as a smooth
    output learns a darkening that does not scale with x (0.11 too dark on near-black pixels, where y
    is 0.01 darker), and an inversion through it brightens the dark regions of x by as much. Rendered
    as a drop, the mean is right for every intensity by construction, and the synthesis is trained on
    the kept pixels only (the data knows which pixels the target dropped: ``keep``).

    Which pixels drop is a function of the random state: pixel i drops where Φ(n_i) < p for a full-size
    N(0,1) map n, so it is fixed with n and redrawn with it, like the rest of the model's randomness.
    The rate has no gradient through the hard mask; it learns from its label (the share of dropped
    pixels, :func:`~redegrade.train.losses.drop_rate_loss`).
    """

    #: Gain of the e_g read (weights stored divided by it; see
    #: :attr:`~redegrade.model.extras.noise_head.NoiseHead.CODE_GAIN`).
    GAIN = 10.0

    def __init__(self, dim_g: int, init_rate: float = 1e-3):
        super().__init__()
        self.code = nn.Linear(dim_g, 1)
        nn.init.normal_(self.code.weight, std=1e-4)
        nn.init.constant_(self.code.bias, math.log(init_rate / (1 - init_rate)) / self.GAIN)

    def rate(self, e_g: torch.Tensor) -> torch.Tensor:
        """The drop probability p ``[B]`` for each code."""
        return torch.sigmoid(self.GAIN * self.code(e_g)[:, 0])

    def forward(self, out: torch.Tensor, e_g: torch.Tensor, n: torch.Tensor,
                keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``out`` [B,3,H,W] in [-1,1] with the dropped pixels at -1, and p [B]. ``keep`` [B,1,H,W]
        (1 = kept) replaces the mask drawn from ``n`` [B,1,H,W] (training: the target's own drops)."""
        p = self.rate(e_g)
        if keep is None:
            keep = (torch.special.ndtr(n.float()) >= p.view(-1, 1, 1, 1)).to(out.dtype)
        return keep * (out + 1) - 1, p
