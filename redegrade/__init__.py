"""redegrade: blind image restoration by generative-model inversion.

Data flows one way: image (:mod:`redegrade.image`) → forward model (:mod:`redegrade.forward`,
:mod:`redegrade.redegrader`) → backend loop (:mod:`redegrade.backend`) → :class:`Restoration`.
"""
from redegrade import _compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
