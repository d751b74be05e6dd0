"""CPU cost of ``pyr_down`` (the stroke mask's Gaussian pyramid step) against the old full-size ``conv2d``
version, and of a whole ``Strokes`` mask build.

    python benchmarks/pyr_down_cost.py [--size 1024] [--repeats 5] [--threads N]

Prints the median (and fastest) seconds of the reference and of ``redegrade``'s ``pyr_down`` on a
random binary ``size²`` mask, their ratio, and the same for a 17-stroke (XL) mask at resolution
``size`` (a ``4·size``² canvas). ``tests/test_degradations_inpaint.py`` checks that both versions agree.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from redegrade.degradations.inpaint import draw_strokes, pyr_down


def pyr_down_reference(m: torch.Tensor) -> torch.Tensor:
    """The old implementation: separable 5-tap ``conv2d`` at full size, then keep even pixels."""
    c = m.shape[1]
    k = (torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16).to(m)
    m = F.pad(m, (2, 2, 2, 2), mode="reflect")
    m = F.conv2d(m, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    m = F.conv2d(m, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return m[..., ::2, ::2]


def median_time(fn, repeats: int) -> tuple[float, float]:
    """(median, fastest) seconds of ``repeats`` calls after a warm-up; on a shared machine the fastest is
    the better estimate of the cost itself."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m = (torch.rand(1, 1, args.size, args.size, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    assert torch.equal(pyr_down(m), pyr_down_reference(m))
    old = median_time(lambda: pyr_down_reference(m), args.repeats)
    new = median_time(lambda: pyr_down(m), args.repeats)
    print(f"pyr_down {args.size}² ({torch.get_num_threads()} threads), median (fastest): reference "
          f"{old[0]:.4f} s ({old[1]:.4f}), new {new[0]:.4f} s ({new[1]:.4f}), ratio {old[0] / new[0]:.1f}× "
          f"({old[1] / new[1]:.1f}×)")
    build = median_time(lambda: draw_strokes(17, args.size, np.random.default_rng(0)), args.repeats)
    print(f"Strokes mask, 17 strokes at {args.size}² ({4 * args.size}² canvas), median (fastest): "
          f"{build[0]:.3f} s ({build[1]:.3f})")


if __name__ == "__main__":
    main()
