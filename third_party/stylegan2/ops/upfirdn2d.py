"""Upsample (zero insertion), FIR filter, downsample: StyleGAN2's resampling primitive.

``upfirdn2d(x, f, up, down, padding, flip_filter, gain)`` on ``x`` [N,C,H,W]:
    1. insert ``up-1`` zeros after every sample (H → H·up);
    2. pad by ``padding`` = [x0, x1, y0, y1] (negative values crop);
    3. convolve with ``f`` ([fh,fw], or a 1-D separable tap list) scaled by ``gain`` (``flip_filter``:
       correlate instead);
    4. keep every ``down``-th sample.
``impl="ref"`` is plain PyTorch (the specification); ``impl="cuda"`` a JIT-built kernel; ``impl="auto"``
the kernel for CUDA tensors when it builds.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from redegrade_stylegan2.ops import _build


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pad4(p: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(p, int):
        return p, p, p, p
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    return tuple(int(v) for v in p)  # type: ignore[return-value]


def setup_filter(f: Sequence[float] | torch.Tensor, *, normalize: bool = True, separable: bool = False,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """A 2-D filter (outer product of a 1-D tap list) normalised to unit sum, as NVIDIA's buffers hold."""
    f = torch.as_tensor(f, dtype=torch.float32, device=device)
    if f.ndim == 1 and not separable:
        f = f.ger(f)
    if normalize:
        f = f / f.sum()
    return f


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, *, up: int | Sequence[int] = 1, down: int | Sequence[int] = 1,
              padding: int | Sequence[int] = 0, flip_filter: bool = False, gain: float = 1,
              impl: str = "auto") -> torch.Tensor:
    """See the module docstring; ``up``/``down`` are ints or (x, y) pairs."""
    if impl not in ("auto", "ref", "cuda"):
        raise ValueError(f"impl must be auto, ref or cuda, not {impl!r}")
    if impl != "ref" and x.is_cuda and x.dtype == torch.float32:
        plugin = _build.plugin("upfirdn2d", ["upfirdn2d.cpp", "upfirdn2d.cu"])
        if plugin is not None:
            return upfirdn2d_kernel(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain,
                                    kernel=plugin.upfirdn2d)
    return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor, *, up: int | Sequence[int] = 1, down: int | Sequence[int] = 1,
                  padding: int | Sequence[int] = 0, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _pad4(padding)
    n, c, h, w = x.shape
    # 1. zero insertion
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    # 2. pad, then crop for negative padding
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # 3. convolution = correlation with the flipped filter; gain is split over the filter's dimensions
    f = (f * gain ** (f.ndim / 2)).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].expand(c, 1, 1, -1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, -1, 1), groups=c)
    # 4. decimation
    return x[:, :, ::downy, ::downx]


def upfirdn2d_kernel(x, f, *, up=1, down=1, padding=0, flip_filter=False, gain=1.0, kernel) -> torch.Tensor:
    """The op through ``kernel(x, w, upx, upy, downx, downy, px0, px1, py0, py1)`` (plain correlation with a
    pre-flipped, pre-scaled 2-D filter ``w``) with an exact adjoint as backward. ``kernel`` is the CUDA
    function in production; tests pass a reference to check the adjoint on CPU."""
    return _UpFirDn2d.apply(x, f, _pair(up), _pair(down), _pad4(padding), bool(flip_filter), float(gain), kernel)


class _UpFirDn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, up, down, pad, flip_filter, gain, kernel):
        f2 = f if f.ndim == 2 else f.ger(f)
        w = f2 * gain  # a 1-D separable filter carries √gain per axis in the reference: the same total
        if not flip_filter:
            w = w.flip([0, 1])
        y = kernel(x.contiguous(), w.to(x.dtype).contiguous(), up[0], up[1], down[0], down[1], *pad)
        ctx.save_for_backward(f)
        ctx.args = (x.shape, up, down, pad, flip_filter, gain, kernel)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        (_, _, ih, iw), (upx, upy), (downx, downy), (px0, px1, py0, py1), flip_filter, gain, kernel = ctx.args
        _, _, oh, ow = dy.shape
        fh, fw = (f.shape[0], f.shape[-1])
        # The adjoint swaps up/down, flips the filter and mirrors the padding so sizes match exactly.
        pad = (fw - px0 - 1, iw * upx - ow * downx + px0 - upx + 1,
               fh - py0 - 1, ih * upy - oh * downy + py0 - upy + 1)
        dx = _UpFirDn2d.apply(dy, f, (downx, downy), (upx, upy), pad, not flip_filter, gain, kernel)
        return dx, None, None, None, None, None, None, None


def upsample2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 2, padding: int | Sequence[int] = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample by ``up`` with filter ``f``; output size is exactly ``up``× the input (plus padding)."""
    px0, px1, py0, py1 = _pad4(padding)
    fh, fw = f.shape[0], f.shape[-1]
    p = [px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2, py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up * up, impl=impl)
