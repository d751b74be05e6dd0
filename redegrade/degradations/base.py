"""Degradation base class, composition and the small helpers every degradation shares.

A :class:`Degradation` has two faces:

* :meth:`Degradation.apply` — the exact, scripted ground truth (may be non-differentiable), drawn from
  generators derived from the instance's seed only, so a target is reproducible bit for bit; every
  step ends with an 8-bit PNG round trip that truncates, as RSG's ``to_pil_image`` does (targets sit
  ½ level below a rounded round trip; see :func:`~redegrade.image.png_roundtrip`).
* :meth:`Degradation.approx` — a differentiable approximation used as the non-blind forward model;
  gradients flow to its input.

Images are ``[B,3,H,W]`` float32 in ``[-1,1]``; internally the degradations work in ``[0,1]`` (the
range RSG's and CDD's scripts use), see :func:`~redegrade.pixels.scale.to_unit` / :func:`~redegrade.pixels.scale.from_unit`.
"""
from __future__ import annotations

import numpy as np
import torch

from redegrade.errors import ConfigError, ShapeError
from redegrade.image import check_image, png_roundtrip
from redegrade.pixels.scale import from_unit, to_unit


def sub_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for random stream ``stream`` of a task seeded with ``seed``.

    Each component of a composed task gets its own stream, so ``N`` draws the same noise whether it
    runs alone or inside ``UNAP`` (given the same seed), and no two streams share state.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(stream)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


class Degradation:
    """One scripted degradation with its differentiable approximation.

    Subclasses set ``name``, ``level``, ``params``, ``input_size`` and ``output_size`` and implement
    :meth:`_apply` (ground truth on a ``[0,1]`` image, may use ``torch.no_grad``) and :meth:`_approx`
    (differentiable, ``[0,1]`` in and out). ``mask`` is the known-pixel mask (1 = kept) at the output
    size for inpainting, else ``None``.
    """

    name: str = ""
    level: str = ""
    mask: torch.Tensor | None = None

    def __init__(self, *, input_size: int, output_size: int, params: dict, seed: int):
        self.input_size = int(input_size)
        self.output_size = (int(output_size), int(output_size))
        self.params = dict(params)
        self.seed = int(seed)

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Ground truth: the exact scripted degradation of ``x`` (``[B,3,R,R]`` in ``[-1,1]``).

        Deterministic given the seed (every call re-seeds); ends with an 8-bit round trip that
        truncates like RSG's (floor(u·255)/255 in [0,1]).
        """
        self._check_input(x)
        return png_roundtrip(from_unit(self._apply(to_unit(x.clamp(-1, 1)))), truncate=True)

    def approx(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable approximation of :meth:`apply`; same output size, gradients reach ``x``."""
        self._check_input(x)
        return from_unit(self._approx(to_unit(x)))

    __call__ = apply

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, level={self.level!r}, params={self.params})"

    # -- for subclasses ---------------------------------------------------------------------
    def _apply(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _approx(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        check_image(x, f"input of degradation {self.name or type(self).__name__}")
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ShapeError(
                f"degradation {self.name} {self.level} was built for {self.input_size}×{self.input_size} "
                f"inputs, got {x.shape[-1]}×{x.shape[-2]}; build it with resolution={x.shape[-1]} "
                "or resize the image first"
            )


class Composed(Degradation):
    """Components applied in order; the ground truth re-quantises to 8 bits after every step.

    ``params`` merges the components' params (their keys do not collide), ``mask`` is the mask of the
    last component that has one (P is always last in FFHQ-X), ``output_size`` that of the last
    component.
    """

    def __init__(self, parts: list[Degradation], *, name: str = "", level: str = ""):
        if not parts:
            raise ConfigError("Composed needs at least one degradation")
        for a, b in zip(parts, parts[1:]):
            if a.output_size[0] != b.input_size:
                raise ConfigError(f"{a.name} outputs {a.output_size[0]}² but {b.name} expects {b.input_size}²")
        params: dict = {}
        for p in parts:
            params.update(p.params)
        super().__init__(input_size=parts[0].input_size, output_size=parts[-1].output_size[0],
                         params=params, seed=parts[0].seed)
        self.parts = list(parts)
        self.name = name or "".join(p.name for p in parts)
        self.level = level or parts[0].level
        masks = [p.mask for p in parts if p.mask is not None]
        self.mask = masks[-1] if masks else None

    @torch.no_grad()
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        for p in self.parts:
            x = p.apply(x)  # each part ends with its own 8-bit round trip, as RSG re-saves per step
        return x

    def approx(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        for p in self.parts:
            x = p.approx(x)
        return x

    __call__ = apply
