"""Helpers shared by the training tests (test_train_*.py): photos, samplers, a few trainer steps."""
from __future__ import annotations

import torch

from redegrade.train.config import TrainConfig
from redegrade.train.data import PairSampler, synthetic_images
from redegrade.train.loop import build_model
from redegrade.train.trainer import Trainer


def _photo(size: int = 64) -> torch.Tensor:
    import skimage.data

    im = torch.tensor(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return torch.nn.functional.interpolate(im, size=(size, size), mode="area")


def _sampler(crop: int = 32, batch: int = 4, seed: int = 0) -> PairSampler:
    return PairSampler(synthetic_images(4, 64, seed=seed), crop=crop, batch=batch, seed=seed)


class _FixedBatch:
    """A sampler that always returns the same batch (training on it must lower its losses)."""

    def __init__(self, batch):
        self.batch = batch

    def sample(self, step: int):
        return self.batch


def _losses_before_after(steps: int, **weights) -> tuple[dict[str, float], dict[str, float]]:
    torch.manual_seed(0)  # module initialisation only; training draws use explicit generators
    cfg = TrainConfig(preset="tiny", crop=32, batch=4, lr=2e-3, lr_aux=5e-2, queue=8, **weights)
    trainer = Trainer(build_model("tiny"), cfg)
    fixed = _sampler().sample(0)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            _, terms, _, _ = trainer.losses(fixed.x, fixed.y, fixed.y_pos, torch.Generator().manual_seed(123))
        return {k: float(v) for k, v in terms.items()}

    before = evaluate()
    for _ in range(steps):
        trainer.step(_FixedBatch(fixed))
    return before, evaluate()
