"""ŷ's intensities scaled by a gain read from e_g (:class:`Gain`)."""
from __future__ import annotations

import torch
from torch import nn


class Gain(nn.Module):
    """``ŷ ← g·ŷ`` in [0,1] units with ``g = 2·sigmoid(w·e_g + b)``, 1 at initialisation.

    Pixels dropped to black at a rate p darken an image in proportion to its intensity, E[y] = (1 − p)·x,
    wherever the drops themselves are not seen: JPEG'd afterwards (NA) or resized after being drawn on
    a smaller image (UN). A synthesis that renders the darkening as an additive residual learns it
    where its training crops have most of their values and gets the dark and bright ends wrong
    (NA: 2× too dark on a face's darkest quarter of values); a gain is right at every intensity. The
    FFHQ-X mix labels it (:func:`~redegrade.train.losses.gain_loss`), as it labels JPEG's quality.
    """

    # No gain on the e_g read (as the noise head has): Adam moves each of e_g's 256 weights by about the
    # learning rate per step, already 0.05 on the logit at 2e-4, and a ×10 read overshot its label.
    def __init__(self, dim_g: int):
        super().__init__()
        self.code = nn.Linear(dim_g, 1)
        nn.init.zeros_(self.code.weight)
        nn.init.zeros_(self.code.bias)

    def gain(self, e_g: torch.Tensor) -> torch.Tensor:
        """g ``[B]`` for each code."""
        return 2 * torch.sigmoid(self.code(e_g)[:, 0])

    def forward(self, out: torch.Tensor, e_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``out`` [B,3,H,W] in [-1,1] scaled in [0,1] units, and g [B]."""
        g = self.gain(e_g)
        return g.view(-1, 1, 1, 1) * (out + 1) - 1, g
