"""Training the universal degradation model (paper 000 eq. 7; tech-facts §1.8–§1.12).

::

    python -m redegrade.train.photos --out photos                    # offline photos + held-out split
    python -m redegrade.train --data photos/train --out runs/small --preset small --steps 1500

Modules: :mod:`~redegrade.train.losses` (stats/gram/lpips/l1 similarity, rgbn colour, SSIM diversity,
MoCo InfoNCE, rates, WGAN-GP), :mod:`~redegrade.train.data` (photo cache → (x, y, y_pos) batches as a
pure function of seed and step), :mod:`~redegrade.train.moco`, :mod:`~redegrade.train.loop`
(:class:`TrainConfig`, :class:`Trainer`, :func:`train`), :mod:`~redegrade.train.photos`.
"""
from redegrade.train.loop import TrainConfig, Trainer, load_checkpoint, train

__all__ = ["TrainConfig", "Trainer", "train", "load_checkpoint"]
