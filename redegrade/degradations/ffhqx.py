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

import torch

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


def _noisy_at_full_size(name: str) -> bool:
    """Whether task ``name`` adds N's noise and drops at the observation's resolution (not before U)."""
    return "N" in name and "U" not in name


class FFHQXMix:
    """FFHQ-X as a training mix, as the paper trained its FFHQ model for GAN inversion (tech-facts
    §1.12(b)): each sample gets one of RSG's 31 tasks (20 single tasks × levels, 11 combinations at M),
    drawn uniformly. Callable ``(x, generator) -> (y, params)`` like :class:`~redegrade.degradations.wqi.WQIMix`.

    ``x`` is a square ``[1,3,R,R]`` in ``[-1,1]``; tasks are built for R. Where U makes ``y`` smaller
    it is resized back to R (area/bicubic, as the restore CLI brings every observation to the prior's
    size), so the model learns the degradation the inversion will show it. ``params`` holds the task,
    level and seed, ``{"jpeg": {"quality": q}}`` when the task compresses (the JPEG head's label) and
    ``"noisy": True`` when it adds noise at the observation's resolution (y given x is then random pixel by
    pixel). After U, N's noise and drops are drawn on the small image and the resize back to R makes
    them smooth blotches that an observation cannot tell from content: not noisy in that sense.
    """

    def __init__(self, tasks: list[str] | None = None):
        self.units = benchmark_tasks(tasks)

    def sample(self, generator: torch.Generator) -> dict:
        name, level = self.units[int(torch.randint(len(self.units), (1,), generator=generator))]
        params: dict = {"task": name, "level": level,
                        "seed": int(torch.randint(2 ** 62, (1,), generator=generator))}
        if "A" in name:
            params["jpeg"] = {"quality": QUALITIES[level]}
        if _noisy_at_full_size(name):
            params["noisy"] = True
        return params

    @torch.no_grad()
    def apply(self, x: torch.Tensor, params: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply a parameter set from :meth:`sample` (deterministic: every draw comes from its seed)."""
        from redegrade.image import resize

        deg = task(params["task"], params["level"], resolution=x.shape[-1], seed=params["seed"])
        return resize(deg.apply(x), tuple(x.shape[-2:]))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        params = self.sample(generator)
        return self.apply(x, params), params
