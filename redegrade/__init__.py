"""redegrade: blind image restoration by generative-model inversion.

Data flows one way: image (:mod:`redegrade.image`) → forward model (:mod:`redegrade.forward`,
:mod:`redegrade.redegrader`) → backend loop (:mod:`redegrade.backend`) → :class:`Restoration`.

Importing the package is light (no torch), so the CLIs check their inputs in about a second. Import
:mod:`redegrade._compat` before importing torchvision or a package that does (lpips, compressai,
ffhq-align, diffusers, pytorch-fid); redegrade's own modules do so where they import them.
"""
__version__ = "0.1.0"
