"""Pixel primitives on the ground floor: the model, the degradations and the quality measures import
them, and they import nothing of redegrade's but its errors.

* :mod:`~redegrade.pixels.scale` — ``[-1,1]`` ↔ ``[0,1]`` and PSNR;
* :mod:`~redegrade.pixels.stats` — luma, the finest Haar band, the MAD → σ factor;
* :mod:`~redegrade.pixels.jpeg` — PIL's quantisation tables, the 8×8 DCT, rounding to a step, JPEG's
  lossy core on tensors.

This package's root imports nothing (no torch), so a CLI can read :data:`MULTIPLE` before it loads torch.
"""

#: Image sides the degradation model accepts are multiples of this (the IDA term of its deepest U-Net
#: level, H/4, works at H/8).
MULTIPLE = 8
