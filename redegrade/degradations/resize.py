"""U (upsampling task): downsample by an integer factor with a randomly drawn PIL filter."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from redegrade.degradations.base import Degradation

#: The filters RSG draws from (one per task instance).
FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def pil_resize(u: torch.Tensor, size: int, filter: str) -> torch.Tensor:
    """Resize ``[B,C,H,W]`` in ``[0,1]`` to ``size²`` with PIL, channel by channel in float mode.

    Float ("F") images skip PIL's own 8-bit rounding, so the only quantisation is the PNG round trip
    that follows every ground-truth step.
    """
    out = torch.empty(*u.shape[:2], size, size, dtype=u.dtype)
    arr = u.detach().cpu().float().numpy()
    for b in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            im = Image.fromarray(np.ascontiguousarray(arr[b, c]), mode="F").resize((size, size), FILTERS[filter])
            out[b, c] = torch.from_numpy(np.array(im, dtype=np.float32))
    return out.to(u.device).clamp(0, 1)  # lanczos/bicubic overshoot; an image file cannot hold it


class Downsample(Degradation):
    """Ground truth: PIL resize to ``floor(R / factor)`` with the drawn filter. Approx: ``avg_pool2d(factor)``.

    The filter is drawn from the instance's seed (RSG draws it from Python's unseeded ``random``, so
    its targets are not reproducible; ours are).
    """

    name = "U"

    def __init__(self, factor: int, *, resolution: int, seed: int, filter: str | None = None):
        if factor < 1 or resolution // factor < 1:
            raise ValueError(f"cannot downsample {resolution}² by {factor}")
        if filter is None:
            filter = list(FILTERS)[int(np.random.default_rng(seed).integers(len(FILTERS)))]
        if filter not in FILTERS:
            raise ValueError(f"unknown resize filter {filter!r}; choose from {', '.join(FILTERS)}")
        self.factor = int(factor)
        self.filter = filter
        super().__init__(input_size=resolution, output_size=resolution // factor,
                         params={"factor": self.factor, "filter": filter}, seed=seed)

    def _apply(self, u: torch.Tensor) -> torch.Tensor:
        return pil_resize(u, self.output_size[0], self.filter)

    def _approx(self, u: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(u, self.factor)
