"""Training the universal degradation model (paper 000 eq. 7; tech-facts §1.8–§1.12).

::

    python -m redegrade.train.photos --out photos                    # offline photos + held-out split
    python -m redegrade.train --data photos/train --out runs/small --preset small --steps 1500

Modules: :mod:`~redegrade.train.similarity` (stats/gram/lpips/l1 similarity), :mod:`~redegrade.train.losses`
(rgbn colour, SSIM diversity, grid, quality, MoCo InfoNCE, rates, the heads' labels), :mod:`~redegrade.train.gan`
(WGAN-GP), :mod:`~redegrade.train.data` (photo cache → (x, y, y_pos) batches as a pure function of seed and
step), :mod:`~redegrade.train.moco`, :mod:`~redegrade.train.config` (:class:`TrainConfig`),
:mod:`~redegrade.train.trainer` (:class:`Trainer`: one step), :mod:`~redegrade.train.batchnorm`,
:mod:`~redegrade.train.loop` (:func:`train`: the run), :mod:`~redegrade.train.photos`.
"""
from redegrade.train.config import TrainConfig
from redegrade.train.loop import load_checkpoint, train
from redegrade.train.trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "train", "load_checkpoint"]
