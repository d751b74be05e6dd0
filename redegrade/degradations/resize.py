"""U (upsampling task): downsample by an integer factor with a randomly drawn PIL filter."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from redegrade.degradations.base import Degradation
from redegrade.errors import ConfigError

#: The filters RSG draws from (one per task instance).
FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def pil_resize(u: torch.Tensor, size: int, filter: str) -> torch.Tensor:
    """Resize ``[B,3,H,W]`` in ``[0,1]`` to ``size²`` with PIL on the 8-bit RGB image, as RSG does.

    PIL's 8-bit path is the ground truth on purpose: it clips and rounds between its horizontal and
    vertical passes, so bicubic and Lanczos results differ from a float resize by up to ~9 levels
    near edges. The input is rounded to 8 bits first; RSG truncates here, which only differs off the
    8-bit grid (FFHQ-X inputs, the ground truth and every step's truncated output, are on it).
    """
    arr = (u.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = [np.array(Image.fromarray(np.ascontiguousarray(a), "RGB").resize((size, size), FILTERS[filter]),
                    dtype=np.float32) for a in arr]
    return torch.from_numpy(np.stack(out) / 255.0).permute(0, 3, 1, 2).contiguous().to(u.device, u.dtype)


class Downsample(Degradation):
    """Ground truth: PIL resize to ``floor(R / factor)`` with the drawn filter. Approx: ``avg_pool2d(factor)``.

    The filter is drawn from the instance's seed (RSG draws it from Python's unseeded ``random``, so
    its targets are not reproducible; ours are).
    """

    name = "U"

    def __init__(self, factor: int, *, resolution: int, seed: int, filter: str | None = None):
        if factor < 1 or resolution // factor < 1:
            raise ConfigError(f"cannot downsample {resolution}² by {factor}")
        if filter is None:
            filter = list(FILTERS)[int(np.random.default_rng(seed).integers(len(FILTERS)))]
        if filter not in FILTERS:
            raise ConfigError(f"unknown resize filter {filter!r}; choose from {', '.join(FILTERS)}")
        self.factor = int(factor)
        self.filter = filter
        super().__init__(input_size=resolution, output_size=resolution // factor,
                         params={"factor": self.factor, "filter": filter}, seed=seed)

    def _apply(self, u: torch.Tensor) -> torch.Tensor:
        return pil_resize(u, self.output_size[0], self.filter)

    def _approx(self, u: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(u, self.factor)
