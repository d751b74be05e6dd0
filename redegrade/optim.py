"""Optimisers shared by backends."""
from __future__ import annotations

import torch


class NGD(torch.optim.Optimizer):
    """Normalised gradient descent (RSG): every latent vector moves exactly ``lr`` per step.

    The gradient is divided by its L2 norm along the last dimension (each 512-vector of w separately);
    NaN/Inf entries become 0.
    """

    def __init__(self, params, lr: float):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = torch.nan_to_num(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
                g = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                p.sub_(group["lr"] * g)
        return loss
