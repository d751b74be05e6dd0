"""Fused bias + activation + gain + clamp: ``clamp(act(x + b) · gain, ±clamp)``.

``impl="ref"`` is plain PyTorch (the specification, differentiable to any order); ``impl="cuda"`` is a
JIT-built elementwise kernel (first-order gradients); ``impl="auto"`` takes the kernel for CUDA tensors when
it builds and the reference otherwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from redegrade_stylegan2.ops import _build


@dataclass(frozen=True)
class Activation:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float
    code: int  # kernel's activation id; -1: no kernel (reference only)


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0, 0),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 1),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 2),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0, -1),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0, -1),
}


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, *, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str = "auto") -> torch.Tensor:
    """Add ``b`` (1-D, broadcast along ``dim``), apply ``act``, multiply by ``gain`` (default: the
    activation's), clamp to ±``clamp`` (``None``: no clamp)."""
    spec = ACTIVATIONS[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = -1.0 if clamp is None else float(clamp)
    if impl not in ("auto", "ref", "cuda"):
        raise ValueError(f"impl must be auto, ref or cuda, not {impl!r}")
    if impl != "ref" and x.is_cuda and spec.code >= 0 and x.dtype == torch.float32:
        plugin = _build.plugin("bias_act", ["bias_act.cpp", "bias_act.cu"])
        if plugin is not None:
            return _BiasActCuda.apply(x, b, dim, spec.code, alpha, gain, clamp, plugin)
    return bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def bias_act_ref(x: torch.Tensor, b: torch.Tensor | None = None, *, dim: int = 1, act: str = "linear",
                 alpha: float | None = None, gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    spec = ACTIVATIONS[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


class _BiasActCuda(torch.autograd.Function):
    """Kernel forward; backward recomputes the activation slope from the saved output (sign and clamp)."""

    @staticmethod
    def forward(ctx, x, b, dim, code, alpha, gain, clamp, plugin):
        dim = dim % x.ndim
        x = x.contiguous()
        bb = b.contiguous() if b is not None else x.new_empty([0])
        inner = math.prod(x.shape[dim + 1:])
        y = plugin.bias_act_fwd(x, bb, inner, x.shape[dim] if b is not None else 1, code, alpha, gain, clamp)
        ctx.save_for_backward(y)
        ctx.args = (dim, code, alpha, gain, clamp, plugin, b is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        dim, code, alpha, gain, clamp, plugin, has_b = ctx.args
        dx = plugin.bias_act_bwd(dy.contiguous(), y, code, alpha, gain, clamp)
        db = dx.sum([i for i in range(dx.ndim) if i != dim]) if has_b and ctx.needs_input_grad[1] else None
        return dx, db, None, None, None, None, None, None
