"""Forward models A_θ: what turns a clean image into the observation y.

A backend never knows which forward model it got. Blind restoration uses the
:class:`~redegrade.redegrader.Redegrader` (θ = e_g, e_l, n), naive blind uses :class:`Identity` and
non-blind uses :class:`KnownDegradation` (the true, differentiable degradation; θ = ∅).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from redegrade.image import check_image


class ForwardModel(nn.Module):
    """Base class. Network weights are frozen; only :meth:`variables` may be optimised.

    Subclasses implement :meth:`forward` and, if they have variables, :meth:`reset` and
    :meth:`named_variables`.
    """

    def reset(self, y: torch.Tensor, *, generator: torch.Generator | None = None) -> None:
        """Initialise the variables from the observation ``y`` ([B,3,H,W] in [-1,1])."""
        check_image(y, "observation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def named_variables(self) -> dict[str, torch.Tensor]:
        """Optimisable leaf tensors (``requires_grad=True``) by name; empty when θ = ∅."""
        return {}

    def variables(self) -> list[torch.Tensor]:
        """The tensors a backend may optimise together with its latent."""
        return list(self.named_variables().values())

    def mask(self) -> torch.Tensor | None:
        """The known inpainting mask ([B,1,H,W], 1 = observed) when the forward model knows one."""
        return None

    def _apply(self, fn, recurse: bool = True):
        # ``.to(device)`` / ``.double()`` move the variables with the weights. Their data moves in place,
        # so they stay the leaf tensors a backend's optimiser already holds.
        super()._apply(fn, recurse)
        for v in self.variables():
            v.data = fn(v.data)
        return self

    def freeze(self) -> "ForwardModel":
        """Freeze network weights (eval mode, no gradients to parameters). Returns ``self``."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


class Identity(ForwardModel):
    """Naive blind: pretend the observation is clean, A(x) = x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@runtime_checkable
class Differentiable(Protocol):
    """A degradation with a differentiable approximation (see :mod:`redegrade.degradations`)."""

    def approx(self, x: torch.Tensor) -> torch.Tensor: ...


class KnownDegradation(ForwardModel):
    """Non-blind: the true degradation's differentiable approximation, with no free variables.

    Resolution glue: ``x`` is first brought to ``resolution`` (area resize, as RSG's
    ``ResizePrediction``) when given, so a prior of any size can be scored against the degradation's
    native input size.
    """

    def __init__(self, degradation: Differentiable, *, resolution: int | None = None):
        super().__init__()
        self.degradation = degradation
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resolution is not None and x.shape[-1] != self.resolution:
            x = torch.nn.functional.interpolate(x, size=(self.resolution, self.resolution), mode="area")
        return self.degradation.approx(x)

    def mask(self) -> torch.Tensor | None:
        return getattr(self.degradation, "mask", None)
