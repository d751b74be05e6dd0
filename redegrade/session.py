"""One restore session, shared by ``python -m redegrade.restore`` and the benchmarks.

A session is one backend with its settings applied and the forward models of the modes it runs under:

    settings ──make_config──► backend.Config ─► Backend ─┐
    mode ──forward_model──► blind: Redegrader            ├─► Backend.run: reset A on y, restore ─► Restoration
                            naive: Identity              │
                            nonblind: KnownDegradation ──┘

The callers keep what is theirs: the CLI reads and writes files, the benchmark degrades and scores. This
module imports no torch until a session is opened, so the CLI can check its inputs first.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redegrade import settings
from redegrade.cli import SEED
from redegrade.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from redegrade.backend import Backend, Progress, Restoration
    from redegrade.forward import ForwardModel

#: The shipped model trained on FFHQ-X's degradations (the WQI one, trained on photo degradations, is
#: transfer's default): on in-range targets it is the one whose re-degradation the true image wins.
DEFAULT_REDEGRADER = "ffhqx"
MODES = ("blind", "naive", "nonblind")
#: Settings every caller passes by the core CLI's flag (the backend's own flags are its ``options``).
COMMON = {"steps": "--steps", "loss": "--loss", "seed": "--seed", "device": "--device"}


# ------------------------------------------------------------------------------------------ settings
def _convert(text: str, tp: Any, key: str, flag: str) -> Any:
    """Typed value of ``KEY=text`` for a dataclass field annotated ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        for arg in (a for a in args if a is not type(None)):
            with contextlib.suppress(ConfigError):
                return _convert(text, arg, key, flag)
        raise ConfigError(f"{flag} {key}={text}: expected {tp}")
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{flag} {key}={text}: expected true or false")
    if tp in (int, float, str, Path):
        try:
            value = tp(text)
        except ValueError:
            raise ConfigError(f"{flag} {key}={text}: expected {tp.__name__}") from None
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{flag} {key}={text}: expected a finite number")
        return value
    raise ConfigError(f"{flag} {key}: a field of type {tp} cannot be set from the command line")


def option_flag(cls: type[Backend], field: str) -> str:
    """The command-line flag that sets Config ``field``: the backend's own option, a common one, or the name."""
    own = {opt.field: opt.flag for opt in getattr(cls, "options", ())}
    return own.get(field) or COMMON.get(field) or field


def make_config(cls: type[Backend], name: str, options: dict[str, Any], assignments: tuple[str, ...] = (),
                *, set_flag: str = "--set") -> Any:
    """The backend's Config with ``options`` (Config field → value, ``None`` = not given) and then every
    ``KEY=VALUE`` of ``assignments`` (``--set`` in restore, ``--option`` in the benchmark) applied; an
    option whose field the Config lacks is an error naming its flag."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    try:
        hints = typing.get_type_hints(cls.Config)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
        hints = {k: f.type for k, f in fields.items()}
    changes = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(f"option {option_flag(cls, key)} does not apply to backend {name}")
        changes[key] = value
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{set_flag} expects KEY=VALUE, got {item!r}")
        if key not in fields:
            raise ConfigError(f"{set_flag} {key}: backend {name} has no such setting; "
                              f"its settings are {', '.join(fields)}")
        changes[key] = _convert(text, hints.get(key, str), key, set_flag)
    try:
        return dataclasses.replace(cls.Config(), **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid settings for backend {name}: {exc}") from exc


# ------------------------------------------------------------------------------------------ the session
@dataclass
class Session:
    """One backend (its settings applied) and the blind forward model, restoring observations by mode."""

    backend: Backend
    device: torch.device
    blind: ForwardModel | None = None
    """The Redegrader every blind run shares (:meth:`load_blind`), reset on each observation."""

    def __post_init__(self) -> None:
        self.config = self.backend.config  # what the settings said; per-run seeds replace a copy

    @property
    def resolution(self) -> int:
        return int(self.backend.resolution)

    def load_blind(self, name: str | None = None, **kw: Any) -> ForwardModel:
        """The Redegrader ``name`` (default :data:`DEFAULT_REDEGRADER`) on the session's device."""
        from redegrade.redegrader import Redegrader

        self.blind = Redegrader.from_pretrained(name or DEFAULT_REDEGRADER, device=self.device, **kw)
        return self.blind

    def forward_model(self, mode: str, degradation: Any = None) -> ForwardModel:
        """blind: the Redegrader; naive: identity; nonblind: ``degradation`` made differentiable."""
        from redegrade.forward import Identity, KnownDegradation

        if mode == "blind":
            if self.blind is None:
                self.load_blind()
            return self.blind
        if mode == "naive":
            return Identity()
        if mode == "nonblind":
            if degradation is None:
                raise ConfigError("the non-blind mode needs the true degradation")
            return KnownDegradation(degradation, resolution=self.resolution)
        raise ConfigError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")

    def restore(self, y: torch.Tensor, mode: str, *, degradation: Any = None, seed: int | None = None,
                progress: Progress | None = None) -> Restoration:
        """Restore the observation ``y`` under ``mode``'s forward model (reset on ``y`` by the backend).

        blind and naive see ``y`` at the prior's size (so A(x) and y match); the true degradation of
        nonblind produces its own size. ``seed`` makes this one run's seed: the forward model's reset
        draws from it, the backend from its low 31 bits; ``None`` keeps the configured seed.
        """
        from redegrade.image import resize

        forward_model = self.forward_model(mode, degradation)
        if mode != "nonblind":
            y = resize(y, self.resolution)
        generator = None
        if seed is None:
            self.backend.config = self.config
        else:
            self.backend.config = dataclasses.replace(self.config, seed=seed % 2 ** 31)
            generator = settings.generator(seed)
        return self.backend.run(y, forward_model, generator=generator, progress=progress)


def open_session(name: str, options: dict[str, Any], assignments: tuple[str, ...] = (), *,
                 set_flag: str = "--set", prior: Any = None, objective: Any = None, check: bool = True) -> Session:
    """Load backend ``name``, apply the settings (see :func:`make_config`) and, with ``check``, ask it
    whether it can run on the configured device. Loads no model: the prior loads on first use."""
    from redegrade import backend as registry

    cls = registry.load(name)
    config = make_config(cls, name, options, assignments, set_flag=set_flag)
    if not SEED.min <= getattr(config, "seed", 0) <= SEED.max:
        raise ConfigError(f"seed {config.seed} is out of range ({SEED.min}…{SEED.max})")
    device = settings.resolve_device(getattr(config, "device", "auto"))
    backend = cls(config, prior=prior, objective=objective)
    if check:
        backend.check(device)
    return Session(backend, device)
