"""MoCo around the global degradation encoder (HDEN): momentum key encoder + queue of negatives.

tech-facts §1.3: key encoder = momentum copy (m = 0.999), cosine similarity, temperature 0.07,
K = 120 queued negatives, positive = a second random crop of the same degraded image. The query is
the HDEN output e_g that the model computes anyway, so only the key side runs here.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.train.losses import contrastive_loss


class MoCo(nn.Module):
    """Key encoder and negative queue for the contrastive loss on e_g.

    The queue is a ring buffer, so any batch size works (the original needed K % batch == 0).
    ``state_dict()`` holds the key encoder, queue and pointer, which makes a resumed run identical.
    """

    def __init__(self, encoder: nn.Module, *, dim: int = 256, queue_size: int = 120, momentum: float = 0.999,
                 temperature: float = 0.07, seed: int = 0):
        super().__init__()
        self.key_encoder = copy.deepcopy(encoder)
        for p in self.key_encoder.parameters():
            p.requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim, generator=g), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, encoder: nn.Module) -> None:
        """Momentum step ``θ_k ← m θ_k + (1 − m) θ_q`` (buffers such as BN statistics are copied)."""
        for pk, pq in zip(self.key_encoder.parameters(), encoder.parameters()):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)
        for bk, bq in zip(self.key_encoder.buffers(), encoder.buffers()):
            bk.copy_(bq)

    @torch.no_grad()
    def keys(self, y_pos: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_encoder(y_pos), dim=1)

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        n, size = k.shape[0], self.queue.shape[0]
        idx = (int(self.ptr) + torch.arange(n, device=k.device)) % size
        self.queue[idx] = k[-size:] if n > size else k
        self.ptr.fill_((int(self.ptr) + n) % size)

    def loss(self, q: torch.Tensor, y_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE of queries ``q`` (= e_g of the first crops) against keys of ``y_pos``; returns (loss, keys)."""
        k = self.keys(y_pos)
        return contrastive_loss(q, k, self.queue.clone(), temperature=self.temperature), k


__all__ = ["MoCo"]
