"""CDD's degradation encoders: ``LPE`` for e_g and ``LPEL``/``LPELOri`` for e_l."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.errors import ShapeError
from redegrade.model.encoders import ConvBNAct


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
