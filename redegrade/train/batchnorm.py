"""The encoders' BatchNorm statistics in training: re-estimated once (:func:`recalibrate_bn`), then fixed
(:func:`freeze_bn`)."""
from __future__ import annotations

import torch
from torch import nn

from redegrade.train.data import PairSampler

BN_BATCHES = 100


def _batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def recalibrate_bn(model: nn.Module, sampler: PairSampler, *, batches: int = BN_BATCHES,
                   device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``batches`` batches.

    Why: with the default momentum (0.1) the saved statistics are those of the last ~10 batches, and
    which 80 crops those were decided whether a checkpoint transferred noise (median fraction 0.06 or
    0.49 for the same weights). Returns the number of layers.
    """
    norms = _batch_norms(model)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for i in range(batches):
            model.encode(sampler.sample(i).y.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


def freeze_bn(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics, no updates), so that training computes
    the codes exactly as inference will. Call after ``model.train()``."""
    for m in _batch_norms(model):
        m.eval()
