"""Merge every rank's rows into ``table.md`` (the paper's layout), ``table.csv``, pFID and ``grids/``."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from redegrade import settings
from redegrade.errors import InputError
from redegrade.files import atomic_path
from redegrade.image import load_image, resize, save_image

from .protocol import (BLIND_FAMILY, GRID_MODES, GRID_TILE, LOWER_IS_BETTER, METRICS, MODE_TITLES, TABLE_MODES,
                       Bench, seed_for)
from .results import ResultStore

log = logging.getLogger("ffhqx")


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

