"""Degradation encoders (tech-facts §1.3, §1.4).

HDEN (CDD ``LPE``) maps an image to the global code e_g ∈ R^dim_g; IDEN (CDD ``LPEL``) maps it to the
local map e_l ∈ [0,1]^{c_l×H/2×W/2}. Both have a long-range branch (large first kernel) and a
short-range branch (one stride-2 conv); convs are ``Conv → BatchNorm → LeakyReLU(0.2)``.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBNAct(nn.Sequential):
    """zero-pad → Conv (bias) → BatchNorm → LeakyReLU(0.2) (CDD ``Conv2dBlock``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, pad: int | None = None):
        pad = kernel // 2 if pad is None else pad
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, pad, bias=True), nn.BatchNorm2d(cout),
                         nn.LeakyReLU(0.2))


def short_branch(w: int) -> nn.Sequential:
    """Short-range branch: [B,3,H,W] → [B,4w,H/2,W/2] (one stride-2 conv)."""
    return nn.Sequential(ConvBNAct(3, w, 3), ConvBNAct(w, w, 1), ConvBNAct(w, 2 * w, 3, 2),
                         ConvBNAct(2 * w, 2 * w, 1), ConvBNAct(2 * w, 4 * w, 3), ConvBNAct(4 * w, 4 * w, 1))


class HDEN(nn.Module):
    """Global degradation encoder: y [B,3,H,W] → e_g [B,dim_g], unbounded.

    Both branches are global-average-pooled, concatenated and mapped by a two-layer MLP.
    """

    def __init__(self, *, width: int = 64, dim_g: int = 256, kernel: int = 3):
        super().__init__()
        w = width
        d = (kernel - 1) // 2  # CDD: stride of the first long-range conv, 1 for k = 3
        self.long = nn.Sequential(ConvBNAct(3, w, kernel, d, 0), ConvBNAct(w, w, 3), ConvBNAct(w, 2 * w, 3),
                                  ConvBNAct(2 * w, 4 * w, 3))
        self.short = short_branch(w)
        self.head = nn.Sequential(nn.Linear(8 * w, dim_g), nn.LeakyReLU(0.1), nn.Linear(dim_g, dim_g))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.long(y).mean(dim=(2, 3)), self.short(y).mean(dim=(2, 3))], dim=1))


class IDEN(nn.Module):
    """Local degradation encoder: y [B,3,H,W] → e_l [B,c_l,H/2,W/2] in [0,1] (sigmoid).

    The long-range branch keeps full resolution (strided first conv undone by a transposed conv)
    and is average-pooled to H/2; a 1×1 fusion of both branches ends in a sigmoid.
    """

    def __init__(self, *, width: int = 64, c_l: int = 4, kernel: int = 3):
        super().__init__()
        w = width
        s = (kernel - 1) // 2
        p = s // 2
        self.long = nn.Sequential(ConvBNAct(3, w, kernel, s, p), ConvBNAct(w, w, 3), ConvBNAct(w, 2 * w, 3),
                                  ConvBNAct(2 * w, 2 * w, 3), nn.ConvTranspose2d(2 * w, 4 * w, kernel, s),
                                  nn.AvgPool2d(2))
        self.short = short_branch(w)
        self.fuse = nn.Sequential(nn.Conv2d(8 * w, 4 * w, 1), nn.LeakyReLU(0.1), nn.Conv2d(4 * w, c_l, 1),
                                  nn.Sigmoid())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b = self.short(y)
        a = self.long(y)
        h, w = b.shape[-2:]
        if a.shape[-2] < h or a.shape[-1] < w:
            # only for kernel/size combinations the configs never use; pad rather than fail
            a = nn.functional.pad(a, (0, max(w - a.shape[-1], 0), 0, max(h - a.shape[-2], 0)), mode="replicate")
        a = a[..., :h, :w]  # CDD crops the long branch when it comes out larger
        return self.fuse(torch.cat([a, b], dim=1))
