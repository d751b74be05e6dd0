"""What an FFHQ-X run is: its settings, its place in a ``torchrun`` job, its seeds and its work units
((task, level) pairs in the paper's order, times the modes)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redegrade.errors import ConfigError
from redegrade.session import MODES

MODE_TITLES = {"nonblind": "non-blind", "naive": "naive", "blind": "blind"}
TABLE_MODES = ("nonblind", "naive", "blind")
"""Column order of the table, as in the paper: the non-blind reference, then the two blind methods."""
BLIND_FAMILY = ("naive", "blind")
"""The values compared for bold: blind with our model vs. naive blind (the paper's "w/o Ours / w/ Ours")."""
GRID_MODES = ("naive", "blind", "nonblind")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
COMPOSED_LEVEL = "M"
METRICS = ("accuracy_lpips", "accuracy_psnr", "fidelity_lpips", "fidelity_psnr", "realism_pfid")
LOWER_IS_BETTER = {"accuracy_lpips": True, "accuracy_psnr": False, "fidelity_lpips": True, "fidelity_psnr": False,
                   "realism_pfid": True}
RESULT_FIELDS = ("backend", "seed", "steps", "loss", "generator", "redegrader", "options", "tiny")
"""Run settings that change results: a rerun into the same --out must agree on all of them."""
TINY_RESOLUTION = 32
GRID_TILE = 256
TINY_IMAGES = 4
MIN_IMAGE_SIDE = 16
"""Smallest ground-truth side accepted (the multiscale objectives stop at 16 px)."""


@dataclass
class Bench:
    """Everything a run needs (what the CLI flags say)."""

    out: Path
    data: Path | None = None
    limit: int | None = None
    backend: str = "rsg"
    tasks: str = "all"
    levels: str = "XS,S,M,L,XL"
    modes: str = "blind,naive,nonblind"
    steps: int | None = None
    loss: str = "lpips"
    generator: str | None = None
    redegrader: str | None = None
    options: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    tiny: bool = False
    crop_size: int = 128
    crops: int = 1000
    grid_images: int = 4
    max_rows: int | None = None

    def identity(self) -> dict[str, Any]:
        """The settings that change results (stored in ``run.json``, checked on resume)."""
        return {"backend": self.backend, "seed": self.seed, "steps": self.steps, "loss": self.loss,
                "generator": self.generator, "redegrader": self.redegrader, "options": sorted(self.options),
                "tiny": self.tiny}


@dataclass(frozen=True)
class Shard:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when run directly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Shard":
        try:
            rank = int(os.environ.get("RANK", 0))
            world = int(os.environ.get("WORLD_SIZE", 1))
            local = int(os.environ.get("LOCAL_RANK", rank))
        except ValueError as exc:
            raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from exc
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return cls(rank, world, local)

    def take(self, index: int) -> bool:
        return index % self.world == self.rank


def seed_for(seed: int, *parts: object) -> int:
    """A seed that depends only on ``seed`` and ``parts`` (image, task, level), never on batching or sharding."""
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def row_key(image: str, task: str, level: str, mode: str) -> str:
    return f"{image}|{task}|{level}|{mode}"


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_modes(text: str) -> list[str]:
    modes = [m.replace("-", "").replace("_", "") for m in _split(text)]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"--modes {text!r}: choose from {', '.join(MODES)}")
    return list(dict.fromkeys(modes))


def work_units(tasks: str, levels: str) -> list[tuple[str, str]]:
    """(task, level) pairs in the paper's order: single tasks × levels, then combinations at level M."""
    from redegrade.degradations import ffhqx

    names = ffhqx.parse_tasks(tasks)
    wanted = _split(levels)
    bad = [lv for lv in wanted if lv not in ffhqx.LEVELS]
    if bad or not wanted:
        raise ConfigError(f"--levels {levels!r}: choose from {', '.join(ffhqx.LEVELS)}")
    units = []
    for name in names:
        if name in ffhqx.TASKS_COMPOSED:
            units.append((name, COMPOSED_LEVEL))  # RSG's convention: combinations only at level M
        else:
            units += [(name, lv) for lv in ffhqx.LEVELS if lv in wanted]
    return units

