"""FFHQ-X benchmark: blind, naive and non-blind restoration on one backend, side by side.

Reproduces the protocol of RSG (``benchmark/``) and of the seed paper (Table 4; Table 1 of its
report): each ground-truth face is degraded by an FFHQ-X task (U, N, A, P at levels XS…XL, and the 11
combinations at level M), restored by one backend with three forward models —

* **blind**: the universal degradation model (:class:`redegrade.redegrader.Redegrader`),
* **naive**: :class:`redegrade.forward.Identity` (pretend the observation is clean),
* **non-blind**: :class:`redegrade.forward.KnownDegradation` (the true differentiable degradation),

and scored for accuracy (LPIPS-VGG, PSNR vs. ground truth), fidelity (LPIPS of the *truly* re-degraded
restoration vs. the observation) and realism (pFID over random 128² crops). See
:mod:`redegrade.metrics`.

Results survive: one JSON line per (image, task, level, mode), fsynced when it finishes; a rerun
skips every key already present. ``torchrun --nproc_per_node=K benchmarks/ffhqx.py …`` shards the
images across ranks (rank r takes images i with i % K == r and appends to ``results.rank{r}.jsonl``);
whoever finishes last merges every result file into ``table.md`` / ``table.csv`` and ``grids/``.

    python benchmarks/ffhqx.py --tiny --out /tmp/ffhqx-smoke          # CPU smoke run, minutes
    python benchmarks/ffhqx.py --data ffhq/ --limit 100 --redegrader model/ --out runs/ffhqx
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from redegrade import settings
from redegrade.cli import SEED, OneLineCommand, setup_logging, user_errors
from redegrade.errors import ConfigError, InputError
from redegrade.files import append_line, atomic_path, check_output
from redegrade.image import fit_to_resolution, load_image, png_roundtrip, resize, save_image

log = logging.getLogger("ffhqx")

MODES = ("blind", "naive", "nonblind")
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


# ------------------------------------------------------------------------------------------ settings

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


# ---------------------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class GroundTruth:
    index: int
    id: str
    path: Path


def list_images(data: Path, limit: int | None) -> list[GroundTruth]:
    """Aligned face images under ``data`` (recursive), sorted by relative path, the first ``limit``."""
    if not data.is_dir():
        raise InputError(f"--data {data}: no such directory")
    paths = sorted((p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(data).as_posix())
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise InputError(f"--data {data}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    ids = [p.relative_to(data).with_suffix("").as_posix().replace("/", "__") for p in paths]
    return [GroundTruth(i, name, p) for i, (name, p) in enumerate(zip(ids, paths))]


def tiny_images(folder: Path, n: int, resolution: int, seed: int) -> Path:
    """Write ``n`` smooth synthetic images (coloured blobs on a gradient) as the smoke run's ground truth."""
    folder.mkdir(parents=True, exist_ok=True)
    g = settings.generator(seed_for(seed, "tiny-images"))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, resolution), torch.linspace(-1, 1, resolution), indexing="ij")
    for i in range(n):
        base = torch.rand(3, 1, 1, generator=g) * 2 - 1
        tilt = torch.rand(3, 1, 1, generator=g) - 0.5
        img = base * 0.5 + tilt * xx
        for _ in range(4):
            cy, cx = (torch.rand(2, generator=g) * 1.6 - 0.8).tolist()
            r = 0.15 + 0.35 * torch.rand(1, generator=g).item()
            colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img * (1 - blob) + colour * blob
        path = folder / f"{i:05d}.png"
        if not path.exists():
            save_image(img.clamp(-1, 1).unsqueeze(0), path)
    return folder


# ------------------------------------------------------------------------------------------- results

class ResultStore:
    """JSON lines in ``results.rank{r}.jsonl`` files: this rank appends to its own, everyone reads all."""

    def __init__(self, out: Path, rank: int = 0):
        self.out = out
        self.path = out / f"results.rank{rank}.jsonl"

    def repair(self) -> None:
        """Cut a half-written last line (a kill during ``write``) so the next append starts a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[:data.rfind(b"\n") + 1]
            log.warning("%s: dropping a half-written last line", self.path.name)
            with atomic_path(self.path) as tmp:
                tmp.write_bytes(keep)

    def append(self, row: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(row, sort_keys=True, allow_nan=False))

    def rows(self) -> list[dict[str, Any]]:
        """Every row of every rank file, de-duplicated by key (first wins), in a stable order."""
        seen: dict[str, dict[str, Any]] = {}
        for path in sorted(self.out.glob("results.rank*.jsonl")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    key = row["key"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s:%d: unreadable line skipped", path.name, n)
                    continue
                seen.setdefault(key, row)
        return sorted(seen.values(), key=lambda r: r["key"])

    def keys(self) -> set[str]:
        return {r["key"] for r in self.rows()}


def check_run_file(out: Path, bench: Bench) -> None:
    """Refuse to mix results of different settings in one ``--out``; record the settings on first use."""
    path = out / "run.json"
    ident = bench.identity()
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in RESULT_FIELDS if old.get(k) != ident.get(k)]
        if diff:
            raise ConfigError(
                f"{out} holds results of a run with different settings ({', '.join(f'{k}: {old.get(k)!r} → {ident.get(k)!r}' for k in diff)}); "
                "use another --out or the same flags")
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(ident, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# -------------------------------------------------------------------------------------------- engine

def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        if value.lower() not in {"1", "0", "true", "false", "yes", "no"}:
            raise ConfigError(f"expected a boolean, got {value!r}")
        return value.lower() in {"1", "true", "yes"}
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    return value


def backend_config(backend_cls: type, bench: Bench, device: str) -> Any:
    """The backend's ``Config`` with the flags applied: ``--steps``, ``--loss``, ``--generator`` (the
    prior checkpoint: ``generator`` for RSG, ``diffusion_model`` for DPS), ``--seed``, ``--device`` and
    any ``--option KEY=VALUE``."""
    cfg = backend_cls.Config()
    names = {f.name for f in dataclasses.fields(cfg)}
    updates: dict[str, Any] = {"seed": bench.seed, "device": device}
    if "loss" in names:
        updates["loss"] = bench.loss
    if bench.steps is not None:
        updates["steps"] = bench.steps
    if bench.generator is not None:
        prior_field = next((n for n in ("generator", "diffusion_model") if n in names), None)
        if prior_field is None:
            raise ConfigError(f"--generator: backend {bench.backend!r} has no generator/diffusion_model setting")
        updates[prior_field] = bench.generator
    for item in bench.options:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"--option {item!r}: use KEY=VALUE with KEY one of {', '.join(sorted(names))}")
        try:
            updates[key] = _coerce(value, getattr(cfg, key))
        except ValueError as exc:
            raise ConfigError(f"--option {item!r}: {exc}") from exc
    missing = sorted(set(updates) - names)
    if missing:
        raise ConfigError(f"backend {bench.backend!r} has no setting(s) {', '.join(missing)}")
    return dataclasses.replace(cfg, **updates)


def _tiny_prior(backend: str) -> torch.nn.Module:
    if backend != "rsg":
        raise ConfigError(f"--tiny builds a tiny StyleGAN2 prior, which only the rsg backend takes (got {backend!r})")
    from redegrade_stylegan2 import tiny_generator

    return tiny_generator(resolution=TINY_RESOLUTION, seed=0)


def _blind_model(bench: Bench, device: torch.device):
    """The blind forward model: ``--redegrader``, a random tiny model for ``--tiny``, else the shipped ``ffhqx``."""
    from redegrade.redegrader import Redegrader
    from redegrade.restore import DEFAULT_REDEGRADER

    if bench.redegrader is None and bench.tiny:
        from redegrade.model import ModelConfig, UniversalDegradationModel

        # nn.Module initialisers draw from the global RNG: seed a private fork so smoke runs repeat
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = UniversalDegradationModel(ModelConfig.preset("tiny"))
        return Redegrader(model).freeze().to(device)
    return Redegrader.from_pretrained(bench.redegrader or DEFAULT_REDEGRADER, device=device)


class Runner:
    """One backend, three forward models, the metric networks; :meth:`run_image` does one image."""

    def __init__(self, bench: Bench, shard: Shard, modes: Sequence[str]):
        from redegrade import backend as backends

        self.bench = bench
        self.modes = list(modes)
        device = settings.resolve_device(bench.device)
        if device.type == "cuda" and device.index is None and shard.world > 1:
            device = torch.device("cuda", shard.local_rank)  # torchrun: one GPU per rank
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # so "cuda" elsewhere (metrics, aggregation) means this rank's GPU
        self.device = device
        cls = backends.load(bench.backend)
        self.config = backend_config(cls, bench, str(device))
        prior = _tiny_prior(bench.backend) if bench.tiny else None
        objective = None
        if bench.tiny and bench.loss == "lpips":
            from redegrade.objective import build

            objective = build("lpips", pretrained_backbone=False)  # offline smoke runs: random VGG backbone
        self.backend = cls(self.config, prior=prior, objective=objective)
        self.backend.check(device)
        self.resolution = int(self.backend.resolution)
        self.blind = _blind_model(bench, device) if "blind" in self.modes else None
        from redegrade.metrics import OptionalNetwork, lpips_network

        self.lpips = OptionalNetwork("LPIPS-VGG (accuracy, fidelity)", lambda: lpips_network().to(device))

    def forward_model(self, mode: str, degradation):
        from redegrade.forward import Identity, KnownDegradation

        if mode == "blind":
            return self.blind
        if mode == "naive":
            return Identity()
        return KnownDegradation(degradation, resolution=self.resolution)

    def run_image(self, gt_item: GroundTruth, units: Iterable[tuple[str, str]], done: set[str],
                  store: ResultStore, budget: list[int], bar=None) -> None:
        """Restore one image under every (task, level) × mode not in ``done``; append a row after each."""
        from redegrade.degradations import ffhqx
        from redegrade.metrics import lpips_distance
        from redegrade.pixels.scale import psnr

        out, R = self.bench.out, self.resolution
        gt = png_roundtrip(fit_to_resolution(load_image(gt_item.path), R, name=gt_item.id))
        img_dir = out / "images" / gt_item.id
        if not (img_dir / "gt.png").exists():
            save_image(gt, img_dir / "gt.png")
        for task_name, level in units:
            todo = [m for m in self.modes if row_key(gt_item.id, task_name, level, m) not in done]
            if not todo:
                continue
            seed = seed_for(self.bench.seed, gt_item.id, task_name, level)
            deg = ffhqx.task(task_name, level, resolution=R, seed=seed)
            y = deg.apply(gt)
            unit_dir = img_dir / f"{task_name}_{level}"
            save_image(y, unit_dir / "degraded.png")
            for mode in todo:
                if budget[0] == 0:
                    return
                t0 = time.perf_counter()
                fm = self.forward_model(mode, deg)
                # blind/naive see y at the prior's size (so A(x) and y match); the true approximation
                # of U produces the small y itself
                y_obs = y if mode == "nonblind" else resize(y, R)
                fm.reset(y_obs, generator=settings.generator(seed))
                # one seed per (image, task, level), shared by the three modes, whatever the sharding
                self.backend.config = dataclasses.replace(self.config, seed=seed % 2 ** 31)
                result = self.backend.restore(y_obs, fm)
                x = png_roundtrip(result.image.float().cpu())  # score what the PNG holds
                save_image(x, unit_dir / f"{mode}.png")
                redegraded = deg.apply(x)  # fidelity uses the TRUE degradation
                net = self.lpips.get()
                row = {
                    "key": row_key(gt_item.id, task_name, level, mode),
                    "image": gt_item.id, "task": task_name, "level": level, "mode": mode,
                    "accuracy_lpips": None if net is None else lpips_distance(net, x, gt),
                    "accuracy_psnr": _finite(psnr(x, gt)),
                    "fidelity_lpips": None if net is None else lpips_distance(net, redegraded, y),
                    "fidelity_psnr": _finite(psnr(redegraded, y)),
                    "restored": (unit_dir / f"{mode}.png").relative_to(out).as_posix(),
                    "degraded": (unit_dir / "degraded.png").relative_to(out).as_posix(),
                    "ground_truth": (img_dir / "gt.png").relative_to(out).as_posix(),
                    "final_loss": _finite(result.info.get("final_loss")),
                    "nfe": result.info.get("nfe", len(result.history)),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "resolution": R, "backend": self.bench.backend, "seed": self.bench.seed,
                }
                store.append(row)
                done.add(row["key"])
                budget[0] -= 1
                if bar is not None:
                    bar.update(1)


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


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


# ------------------------------------------------------------------------------------------ aggregate

def _order_key(task: str, level: str) -> tuple:
    from redegrade.degradations import ffhqx

    order = list(ffhqx.TASKS_SINGLE) + list(ffhqx.TASKS_COMPOSED)
    t = order.index(task) if task in order else len(order)
    lv = list(ffhqx.LEVELS).index(level) if level in ffhqx.LEVELS else len(ffhqx.LEVELS)
    return (t, task, lv, level)


def realism(rows: list[dict[str, Any]], bench: Bench, device: torch.device) -> dict[tuple[str, str, str], float]:
    """pFID per (task, level, mode): random crops of the restorations vs. the same crops of the ground
    truths of every image in the results. Empty when Inception's weights cannot be had."""
    from redegrade.metrics import (FeatureStats, OptionalNetwork, crop_positions, frechet_distance,
                                   inception_features, inception_network, take_crops)

    out, size, n = bench.out, bench.crop_size, bench.crops
    net = OptionalNetwork("pFID's Inception network (realism)", lambda: inception_network().to(device)).get()
    if net is None or not rows:
        return {}
    cache = out / "pfid"
    cache.mkdir(exist_ok=True)

    def positions(image: str, x: torch.Tensor) -> torch.Tensor:
        # the same crops of an image in the ground truth and in every restoration of it
        return crop_positions(x.shape[-2], x.shape[-1], size, n, settings.generator(seed_for(bench.seed, image, "pfid")))

    def stats(name: str, files: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        tag = hashlib.sha256(json.dumps([files, size, n]).encode()).hexdigest()[:16]
        path = cache / f"{name}_{tag}.npz"
        if path.exists():
            with np.load(path) as z:
                return z["mu"], z["sigma"]
        acc = FeatureStats()
        for image, rel in files:
            x = load_image(out / rel)
            acc.add(inception_features(net, take_crops(x, positions(image, x), size)))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                acc.save(f)
        return acc.mean_cov()

    if size > min(load_image(out / rows[0]["ground_truth"]).shape[-2:]):
        log.warning("pFID crops of %d² do not fit %s; realism stays empty (use --crop-size)", size,
                    rows[0]["ground_truth"])
        return {}
    gt_files = sorted({(r["image"], r["ground_truth"]) for r in rows})
    reference = stats("gt", gt_files)
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["level"], r["mode"])].append((r["image"], r["restored"]))
    return {k: frechet_distance(stats("_".join(k), sorted(v)), reference) for k, v in groups.items()}


def summarise(rows: list[dict[str, Any]], pfid: dict[tuple[str, str, str], float]) -> list[dict[str, Any]]:
    """One record per (task, level): image count and the mean of each metric per mode."""
    by: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[(r["task"], r["level"])][r["mode"]].append(r)
    table = []
    for (task, level) in sorted(by, key=lambda k: _order_key(*k)):
        rec: dict[str, Any] = {"task": task, "level": level,
                               "images": len({r["image"] for m in by[(task, level)].values() for r in m})}
        for mode in TABLE_MODES:
            mode_rows = by[(task, level)].get(mode, [])
            for metric in METRICS[:-1]:
                vals = [r[metric] for r in mode_rows if r.get(metric) is not None]
                rec[f"{mode}_{metric}"] = float(np.mean(vals)) if vals else None
            rec[f"{mode}_realism_pfid"] = pfid.get((task, level, mode))
        table.append(rec)
    return table


def _best(rec: dict[str, Any], metric: str) -> set[str]:
    """The blind-family modes with the best *displayed* value (ties are all bold)."""
    shown = {m: _fmt(rec.get(f"{m}_{metric}"), metric) for m in BLIND_FAMILY}
    vals = {m: float(s) for m, s in shown.items() if s}
    if len(vals) < 2:
        return set()
    best = (min if LOWER_IS_BETTER[metric] else max)(vals.values())
    return {m for m, v in vals.items() if v == best}


def _fmt(v: float | None, metric: str) -> str:
    if v is None:
        return ""
    if metric.endswith("lpips"):
        return f"{v:.3f}"
    return f"{v:.1f}" if metric == "realism_pfid" else f"{v:.2f}"


def markdown(table: list[dict[str, Any]], bench: Bench, note: str) -> str:
    """The paper's layout: rows task/level; accuracy, fidelity, realism × (non-blind, naive, blind)."""
    def block(title: str, metrics: Sequence[tuple[str, str]]) -> list[str]:
        head = ["task", "level", "n"] + [f"{name} {MODE_TITLES[m]}" for _, name in metrics for m in TABLE_MODES]
        lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
        for rec in table:
            cells = [rec["task"], rec["level"], str(rec["images"])]
            for metric, _ in metrics:
                best = _best(rec, metric)
                for m in TABLE_MODES:
                    s = _fmt(rec.get(f"{m}_{metric}"), metric)
                    cells.append(f"**{s}**" if s and m in best else s)
            lines.append("| " + " | ".join(cells) + " |")
        return lines + [""]

    lines = [f"## FFHQ-X — backend `{bench.backend}`", "",
             f"seed {bench.seed}, steps {bench.steps if bench.steps is not None else 'default'}, loss {bench.loss}, "
             f"generator {bench.generator or 'default'}{', tiny smoke run' if bench.tiny else ''}.",
             "Columns per metric: non-blind (true differentiable degradation) | naive (identity) | "
             "blind (our Redegrader). **Bold**: the better of the two blind methods (naive vs. blind), "
             "as in the paper's tables.", ""]
    if note:
        lines += [note, ""]
    lines += block("Accuracy (LPIPS ↓), fidelity (LPIPS ↓), realism (pFID ↓)",
                   [("accuracy_lpips", "Acc."), ("fidelity_lpips", "Fid."), ("realism_pfid", "pFID")])
    lines += block("Accuracy and fidelity in PSNR (dB ↑)",
                   [("accuracy_psnr", "Acc. PSNR"), ("fidelity_psnr", "Fid. PSNR")])
    return "\n".join(lines)


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    cols = ["task", "level", "images"] + [f"{m}_{metric}" for m in TABLE_MODES for metric in METRICS]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for rec in table:
        w.writerow([("" if rec.get(c) is None else (f"{rec[c]:.6g}" if isinstance(rec[c], float) else rec[c]))
                    for c in cols])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def write_grids(rows: list[dict[str, Any]], bench: Bench) -> list[Path]:
    """One PNG per task: a row per (level, image), columns GT | degraded | naive | blind | non-blind."""
    out = bench.out
    by_task: dict[str, dict[tuple[str, str], dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by_task[r["task"]][(r["level"], r["image"])][r["mode"]] = r
    written = []
    for task, cells in by_task.items():
        keys = sorted(cells, key=lambda k: (_order_key(task, k[0]), k[1]))
        per_level: dict[str, int] = defaultdict(int)
        lines = []
        for level, image in keys:
            if per_level[level] >= bench.grid_images:
                continue
            per_level[level] += 1
            any_row = next(iter(cells[(level, image)].values()))
            gt = load_image(out / any_row["ground_truth"])
            side = min(gt.shape[-1], GRID_TILE)  # 1024² tiles would make grids of hundreds of megapixels
            y = load_image(out / any_row["degraded"])
            # the observation is enlarged with nearest so its pixels show as they are
            mode_of = "nearest" if y.shape[-1] < side else "area"
            tiles = [resize(gt, side), torch.nn.functional.interpolate(y, size=(side, side), mode=mode_of)]
            for mode in GRID_MODES:
                r = cells[(level, image)].get(mode)
                tiles.append(resize(load_image(out / r["restored"]), side) if r
                             else torch.zeros(1, 3, side, side))  # grey: mode not run
            lines.append(torch.cat(tiles, dim=-1))
        path = out / "grids" / f"{task}.png"
        save_image(torch.cat(lines, dim=-2), path)
        written.append(path)
    return written


def aggregate(bench: Bench, device: torch.device | None = None) -> list[dict[str, Any]]:
    """Merge every rank's results into ``table.md``, ``table.csv`` and ``grids/``; return the summary."""
    rows = ResultStore(bench.out).rows()
    if not rows:
        raise InputError(f"{bench.out}: no results to aggregate")
    device = device or settings.resolve_device(bench.device)
    pfid = realism(rows, bench, device)
    table = summarise(rows, pfid)
    empty = [name for name, key in (("LPIPS", "accuracy_lpips"),) if all(r.get(key) is None for r in rows)]
    if not pfid:
        empty.append("pFID")
    note = f"Empty columns ({', '.join(empty)}): the metric's network weights were unavailable." if empty else ""
    with atomic_path(bench.out / "table.md") as tmp:
        tmp.write_text(markdown(table, bench, note) + "\n", encoding="utf-8")
    write_csv(table, bench.out / "table.csv")
    write_grids(rows, bench)
    log.info("%d rows → %s, %s, %s/", len(rows), bench.out / "table.md", bench.out / "table.csv",
             bench.out / "grids")
    return table


# ------------------------------------------------------------------------------------------------ run

def run(bench: Bench, shard: Shard | None = None, *, aggregate_only: bool = False) -> int:
    """Run (or resume) this rank's share; the last rank to finish writes the tables. Returns new rows."""
    shard = shard or Shard.from_env()
    out = bench.out
    out.mkdir(parents=True, exist_ok=True)
    modes = parse_modes(bench.modes)
    if bench.tiny and bench.data is None:
        bench = dataclasses.replace(bench, data=tiny_images(out / "tiny_data", bench.limit or TINY_IMAGES,
                                                            TINY_RESOLUTION, bench.seed))
    if bench.data is None:
        raise ConfigError("--data DIR is required (or --tiny for the smoke run)")
    if aggregate_only:
        aggregate(bench)
        return 0
    check_run_file(out, bench)
    images = [im for im in list_images(bench.data, bench.limit) if shard.take(im.index)]
    units = work_units(bench.tasks, bench.levels)
    marker = out / f".done.rank{shard.rank}"
    marker.unlink(missing_ok=True)
    store = ResultStore(out, shard.rank)
    store.repair()
    done = store.keys()
    todo = sum(1 for im in images for t, lv in units for m in modes if row_key(im.id, t, lv, m) not in done)
    log.info("rank %d/%d: %d images, %d (task, level) pairs, modes %s; %d rows to do, %d already done",
             shard.rank, shard.world, len(images), len(units), ",".join(modes), todo,
             len(images) * len(units) * len(modes) - todo)
    budget = [bench.max_rows if bench.max_rows is not None else -1]
    if todo:
        runner = Runner(bench, shard, modes)
        from tqdm import tqdm

        with tqdm(total=todo, desc=f"ffhqx rank {shard.rank}", disable=None, position=shard.rank) as bar:
            for im in images:
                runner.run_image(im, units, done, store, budget, bar)
                if budget[0] == 0:
                    log.warning("stopping after --max-rows %d new rows (resume by running again)", bench.max_rows)
                    return bench.max_rows
    marker.write_text(f"{shard.world}\n", encoding="utf-8")
    finished = [out / f".done.rank{r}" for r in range(shard.world)]
    if all(p.exists() for p in finished):  # whoever finishes last merges everyone's rows
        aggregate(bench)
    else:
        log.info("rank %d done; the last rank to finish writes the table", shard.rank)
    return todo


MIN_IMAGE_SIDE = 16
"""Smallest ground-truth side accepted (the multiscale objectives stop at 16 px)."""


def check_bench(bench: Bench, *, aggregate_only: bool = False) -> None:
    """Every check that needs no model, before anything is written: flags, the results folder (writable,
    not inside the data), the data (every image's header), the backend's settings, the device and the
    checkpoints named. A bad flag or input is then one line and no work, never a failure hours in."""
    parse_modes(bench.modes)
    work_units(bench.tasks, bench.levels)
    check_output(bench.out, folder=True)
    if bench.data is not None:
        data, out = bench.data.resolve(), bench.out.resolve()
        if out == data or data in out.parents:
            raise InputError(f"--out {bench.out} is inside --data {bench.data}: results would be read back as "
                             "ground truth; choose a results folder outside the data")
        if not aggregate_only:
            from redegrade.image import probe_image

            for item in list_images(bench.data, bench.limit):
                probe_image(item.path, min_size=MIN_IMAGE_SIDE, verify=True)
    elif not bench.tiny and not aggregate_only:
        raise ConfigError("--data DIR is required (or --tiny for the smoke run)")
    if aggregate_only:
        if not any(bench.out.glob("results.rank*.jsonl")):
            raise InputError(f"--aggregate-only: {bench.out} holds no results to aggregate")
        return
    from redegrade import backend as backends
    from redegrade.weights import check_checkpoint

    device = settings.resolve_device(bench.device)
    cls = backends.load(bench.backend)
    config = backend_config(cls, bench, str(device))
    if bench.tiny:
        _tiny_prior(bench.backend)  # only rsg takes the tiny prior
    else:
        cls(config).check(device)
    if bench.redegrader is not None and "blind" in parse_modes(bench.modes):
        check_checkpoint(bench.redegrader, "--redegrader")


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Folder of aligned face images (e.g. FFHQ 1024²).")
@click.option("--limit", type=click.IntRange(min=1), help="Use the first N images (sorted by path).")
@click.option("--backend", default="rsg", show_default=True, help="Registered backend (redegrade.backends entry point).")
@click.option("--tasks", default="all", show_default=True, help="U,N,A,P, combinations such as UNAP, or single/composed/all.")
@click.option("--levels", default="XS,S,M,L,XL", show_default=True, help="Levels of the single tasks (combinations use M).")
@click.option("--modes", default="blind,naive,nonblind", show_default=True, help="Forward models to compare.")
@click.option("--steps", type=click.IntRange(min=0), help="Backend steps (RSG: per phase). Default: the backend's.")
@click.option("--loss", default="lpips", show_default=True, help="Objective: lpips, l1 or l2 (as in restore).")
@click.option("--generator", help="Prior checkpoint (RSG generator / DPS diffusion model): registry name or file.")
@click.option("--redegrader", help="Universal degradation model for the blind mode: folder, file, registry name "
              "or shipped name (default: ffhqx, trained on FFHQ-X's degradations).")
@click.option("--option", "-o", "options", multiple=True, help="Extra backend setting KEY=VALUE (repeatable).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds every degradation, initialisation and crop.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (torchrun: cuda:LOCAL_RANK).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Results folder (resumable).")
@click.option("--tiny", is_flag=True, help="CPU smoke run: tiny generator and model, 4 generated 32² images, l1 loss.")
@click.option("--crop-size", type=click.IntRange(min=1), default=128, show_default=True, help="pFID crop side.")
@click.option("--crops", type=click.IntRange(min=1), default=1000, show_default=True, help="pFID crops per image.")
@click.option("--grid-images", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per level in each grid.")
@click.option("--max-rows", type=click.IntRange(min=1), hidden=True, help="Stop after N new rows (tests resume).")
@click.option("--aggregate-only", is_flag=True, help="Only merge existing results into the table and grids.")
@click.option("--verbose", "-v", is_flag=True)
@user_errors
def main(data, limit, backend, tasks, levels, modes, steps, loss, generator, redegrader, options, seed, device,
         out, tiny, crop_size, crops, grid_images, max_rows, aggregate_only, verbose):
    """Run the FFHQ-X benchmark: blind, naive and non-blind restoration side by side.

    Every error, usage errors included, is one line on stderr (exit code 2); flags, data and the results
    folder are checked before anything is written or any model loads.
    """
    setup_logging(verbose)
    if tiny:
        # smoke-run defaults; any flag given explicitly still wins
        steps = 2 if steps is None else steps
        loss = "l1" if loss == "lpips" else loss
        crop_size = min(crop_size, 16)
        crops = min(crops, 16)
    bench = Bench(out=out, data=data, limit=limit, backend=backend, tasks=tasks, levels=levels, modes=modes,
                  steps=steps, loss=loss, generator=generator, redegrader=redegrader, options=tuple(options),
                  seed=seed, device=device, tiny=tiny, crop_size=crop_size, crops=crops, grid_images=grid_images,
                  max_rows=max_rows)
    check_bench(bench, aggregate_only=aggregate_only)
    run(bench, aggregate_only=aggregate_only)


if __name__ == "__main__":
    sys.exit(main())
