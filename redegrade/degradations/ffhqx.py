"""FFHQ-X: RSG's benchmark tasks — four degradations at five levels, and their 11 combinations.

====== ========== ============================ =========== ==========
level  U: factor  N: (photons, drop p)         A: quality  P: strokes
====== ========== ============================ =========== ==========
XS     2          (96, 0.04)                   18          1
S      4          (48, 0.08)                   15          5
M      8          (24, 0.16)                   12          9
L      16         (12, 0.32)                   9           13
XL     32         (6, 0.64)                    6           17
====== ========== ============================ =========== ==========

Combined tasks (UN … UNAP) apply their parts in the order U → N → A → P; the benchmark runs them at
level M. Every random draw (resize filter, noise, drop mask, stroke positions) comes from ``seed``:
part ``k`` of ``"UNAP"`` uses the stream :func:`~redegrade.degradations.base.sub_seed` ``(seed, k)``.
"""
from __future__ import annotations

import itertools

from redegrade.degradations.base import Composed, Degradation, sub_seed
from redegrade.degradations.inpaint import Strokes
from redegrade.degradations.jpeg import JPEG
from redegrade.degradations.noise import PoissonDrop
from redegrade.degradations.resize import Downsample
from redegrade.errors import ConfigError

LEVELS = ("XS", "S", "M", "L", "XL")
#: The level every combined task uses in FFHQ-X.
COMPOSED_LEVEL = "M"
ORDER = "UNAP"
TASKS_SINGLE = tuple(ORDER)
TASKS_COMPOSED = tuple("".join(c) for k in range(2, 5) for c in itertools.combinations(ORDER, k))

FACTORS = dict(zip(LEVELS, (2, 4, 8, 16, 32)))
NOISE = dict(zip(LEVELS, ((96, 0.04), (48, 0.08), (24, 0.16), (12, 0.32), (6, 0.64))))
QUALITIES = dict(zip(LEVELS, (18, 15, 12, 9, 6)))
STROKES = dict(zip(LEVELS, (1, 5, 9, 13, 17)))


def _check_name(name: str) -> str:
    name = name.strip().upper()
    if name not in TASKS_SINGLE + TASKS_COMPOSED:
        raise ConfigError(f"unknown FFHQ-X task {name!r}; choose from {', '.join(TASKS_SINGLE + TASKS_COMPOSED)}")
    return name


def _check_level(level: str) -> str:
    level = level.strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"unknown FFHQ-X level {level!r}; choose from {', '.join(LEVELS)}")
    return level


def task(name: str, level: str = COMPOSED_LEVEL, *, resolution: int, seed: int = 0) -> Degradation:
    """Build FFHQ-X task ``name`` (``"U"`` … ``"UNAP"``) at ``level`` for ``resolution²`` inputs.

    Deterministic given ``seed``. Combined tasks accept any level (FFHQ-X itself uses ``"M"``).
    """
    name, level = _check_name(name), _check_level(level)
    if resolution < 1:
        raise ConfigError(f"resolution must be positive, got {resolution}")
    if "U" in name and resolution // FACTORS[level] < 1:
        raise ConfigError(f"U at {level} downsamples by {FACTORS[level]}: needs a resolution of at least "
                          f"{FACTORS[level]}, got {resolution}")
    parts: list[Degradation] = []
    size = resolution
    for letter in name:
        s = sub_seed(seed, ORDER.index(letter))
        if letter == "U":
            part: Degradation = Downsample(FACTORS[level], resolution=size, seed=s)
        elif letter == "N":
            part = PoissonDrop(*NOISE[level], resolution=size, seed=s)
        elif letter == "A":
            part = JPEG(QUALITIES[level], resolution=size, seed=s)
        else:
            part = Strokes(STROKES[level], resolution=size, seed=s, mask_resolution=resolution)
        part.level = level
        size = part.output_size[0]
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return Composed(parts, name=name, level=level)


def parse_tasks(spec: str) -> list[str]:
    """Task names from ``"single"``, ``"composed"``, ``"all"`` or a comma list such as ``"U,N,UNAP"``."""
    key = spec.strip().lower()
    if key == "single":
        return list(TASKS_SINGLE)
    if key == "composed":
        return list(TASKS_COMPOSED)
    if key == "all":
        return list(TASKS_SINGLE + TASKS_COMPOSED)
    names = [_check_name(n) for n in spec.split(",") if n.strip()]
    if not names:
        raise ConfigError("no FFHQ-X task given; use single, composed, all or names such as U,N,UNAP")
    return list(dict.fromkeys(names))


def benchmark_tasks(names: list[str] | None = None) -> list[tuple[str, str]]:
    """The (name, level) pairs of FFHQ-X: every single task at every level, combined tasks at M (31)."""
    names = list(TASKS_SINGLE + TASKS_COMPOSED) if names is None else [_check_name(n) for n in names]
    out = []
    for n in names:
        levels = LEVELS if n in TASKS_SINGLE else (COMPOSED_LEVEL,)
        out += [(n, lv) for lv in levels]
    return out
