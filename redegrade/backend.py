"""The backend contract and the ``redegrade.backends`` entry-point registry.

A backend is a prior plus its optimisation loop. It is a :class:`Backend` subclass with a ``Config``
dataclass, registered under the entry-point group ``redegrade.backends`` — the built-in ``rsg`` and
``dps`` exactly like any third-party plugin::

    [project.entry-points."redegrade.backends"]
    mine = "my_package:MyBackend"
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import importlib.metadata as md
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from redegrade import settings
from redegrade.errors import BackendLoadError, UnknownBackendError
from redegrade.forward import ForwardModel

log = logging.getLogger(__name__)
GROUP = "redegrade.backends"


@dataclass(frozen=True)
class StepInfo:
    """One optimisation step, reported to the ``progress`` callback and kept in the history."""

    phase: str
    step: int
    total: int
    loss: float
    lr: float | None = None


Progress = Callable[[StepInfo], None]


@dataclass(frozen=True)
class Option:
    """A flag a backend adds to ``python -m redegrade.restore``: ``--backend NAME --flag VALUE`` sets one
    field of the backend's Config (``--backend NAME --help`` lists them). Declared, not built, so the
    core CLI turns it into a click option and the backend needs no click."""

    flag: str
    """``--zeta``; a ``bool`` option also gets ``--no-…`` (``--early-exit/--no-early-exit``)."""
    field: str
    """The Config field it sets; not given = the Config's default."""
    help: str = ""
    type: type = str
    """``str``, ``int``, ``float`` (finite) or ``bool`` (an on/off flag pair)."""
    metavar: str | None = None
    checkpoint: bool = False
    """The value may name a file the backend reads: no output may overwrite it."""


@dataclass
class Restoration:
    """What a backend returns. Images are ``[1,3,H,W]`` in ``[-1,1]`` on the CPU."""

    image: torch.Tensor
    """The restored image at the prior's resolution."""
    redegraded: torch.Tensor
    """``forward_model(image)`` with the final variables: what the restoration claims y was."""
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """Final latent and forward-model variables, by name (saved as ``state.pt``)."""
    history: list[StepInfo] = field(default_factory=list)
    phases: dict[str, torch.Tensor] = field(default_factory=dict)
    """Image at the end of each phase (RSG) or at checkpoints of the sampler (DPS)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Backend-specific facts (e.g. ``nfe`` network evaluations, ``early_exit`` step)."""


class Backend(abc.ABC):
    """Base class of inversion backends.

    Subclasses set ``Config`` (a dataclass with at least ``seed`` and ``device`` fields) and implement
    :attr:`resolution` and :meth:`restore`; ``options`` declares their own command-line flags. Callers
    use :meth:`run`, which resets the forward model on the observation before :meth:`restore`, so no
    backend and no caller repeats that. The prior (generator, diffusion model) may be passed in
    directly, which is what tests do; otherwise the backend loads it from its config on first use.
    """

    Config: ClassVar[type]
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, config: Any | None = None, *, prior: torch.nn.Module | None = None,
                 objective: Callable[..., torch.Tensor] | None = None):
        self.config = config if config is not None else self.Config()
        self._prior = prior
        self._objective = objective

    @property
    @abc.abstractmethod
    def resolution(self) -> int:
        """Side of the square images the prior produces (observations are brought to it)."""

    def check(self, device: torch.device) -> None:
        """Raise a :class:`~redegrade.errors.RedegradeError` when the backend cannot run here."""

    def objective(self, device: torch.device | None = None) -> Callable[..., torch.Tensor]:
        """The objective passed in, else :func:`redegrade.objective.build` of ``config.loss`` (built once);
        moved to ``device`` when it is a module."""
        if self._objective is None:
            from redegrade.objective import build

            self._objective = build(self.config.loss)
        if device is not None and isinstance(self._objective, torch.nn.Module):
            self._objective.to(device)
        return self._objective

    def run(self, y: torch.Tensor, forward_model: ForwardModel, *, generator: torch.Generator | None = None,
            progress: Progress | None = None) -> Restoration:
        """Reset ``forward_model`` on ``y`` (its random draws from ``generator``, default: one seeded with
        ``config.seed``) on the configured device, then :meth:`restore`. What every caller uses."""
        device = settings.resolve_device(self.config.device)
        forward_model.to(device)
        if generator is None:
            generator = settings.generator(self.config.seed)
        forward_model.reset(y.to(device), generator=generator)
        return self.restore(y, forward_model, progress=progress)

    @abc.abstractmethod
    def restore(self, y: torch.Tensor, forward_model: ForwardModel, *,
                progress: Progress | None = None) -> Restoration:
        """Restore ``y`` ([1,3,H,W] in [-1,1]) so that ``forward_model(prior(latent)) ≈ y``;
        ``forward_model`` has been reset on ``y`` (see :meth:`run`)."""


@dataclass(frozen=True)
class BackendEntry:
    """An installed backend as listed in package metadata (nothing imported)."""

    name: str
    target: str
    distribution: str | None
    version: str | None


@functools.cache
def _entries() -> tuple[md.EntryPoint, ...]:
    return tuple(md.entry_points(group=GROUP))


def refresh() -> None:
    """Forget the cached entry-point listing (after installing a plugin at run time, or in tests)."""
    _entries.cache_clear()


def available() -> list[BackendEntry]:
    """Installed backends, sorted by name, read from metadata without importing them."""
    out = []
    for ep in _entries():
        dist = getattr(ep, "dist", None)
        out.append(BackendEntry(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None))
    return sorted(out, key=lambda e: e.name)


def _describe(entries: list[BackendEntry]) -> str:
    return ", ".join(f"{e.name} ({e.distribution or '?'})" for e in entries) or "none"


def load(name: str) -> type[Backend]:
    """Import and validate the backend registered as ``name``."""
    eps = [ep for ep in _entries() if ep.name == name]
    if not eps:
        raise UnknownBackendError(f"unknown backend {name!r}; installed backends: {_describe(available())}")
    targets = {ep.value for ep in eps}
    if len(targets) > 1:
        owners = ", ".join(f"{ep.value} ({getattr(ep.dist, 'name', '?')})" for ep in eps)
        raise BackendLoadError(f"backend name {name!r} is claimed by several distributions: {owners}")
    try:
        obj = eps[0].load()
    except Exception as exc:  # noqa: BLE001 - any import failure of a plugin is reported the same way
        raise BackendLoadError(f"backend {name!r} ({eps[0].value}) failed to import: {exc}") from exc
    problems = []
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        problems.append("it is not a redegrade.backend.Backend subclass")
    else:
        if not dataclasses.is_dataclass(getattr(obj, "Config", None)):
            problems.append("it has no Config dataclass")
        if getattr(obj.restore, "__isabstractmethod__", False):
            problems.append("it does not implement restore()")
        fields = {f.name for f in dataclasses.fields(obj.Config)} if dataclasses.is_dataclass(
            getattr(obj, "Config", None)) else set()
        for opt in getattr(obj, "options", ()):
            if not isinstance(opt, Option):
                problems.append(f"its options hold {opt!r}, not a redegrade.backend.Option")
            elif opt.field not in fields:
                problems.append(f"its option {opt.flag} sets {opt.field!r}, which its Config lacks")
    if problems:
        raise BackendLoadError(f"backend {name!r} ({eps[0].value}) is unusable: " + "; ".join(problems))
    return obj
