"""Running the restores: one restore session (:mod:`redegrade.session`) under three forward models, one
scored row per (image, task, level, mode)."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from redegrade import settings
from redegrade.errors import ConfigError
from redegrade.image import fit_to_resolution, load_image, png_roundtrip, save_image
from redegrade.session import DEFAULT_REDEGRADER, Session, open_session

from .data import GroundTruth
from .protocol import TINY_RESOLUTION, Bench, Shard, row_key, seed_for
from .results import ResultStore


def backend_options(bench: Bench, device: str) -> dict[str, Any]:
    """The flags as Config fields for :func:`redegrade.session.make_config`: ``--steps``, ``--loss`` (where
    the backend has one), ``--seed``, ``--device`` and ``--generator``, which sets the field the backend's
    own ``--generator`` option names; a backend without one refuses it."""
    from redegrade import backend as backends

    cls = backends.load(bench.backend)
    options: dict[str, Any] = {"seed": bench.seed, "device": device, "steps": bench.steps}
    if "loss" in {f.name for f in dataclasses.fields(cls.Config)}:
        options["loss"] = bench.loss
    if bench.generator is not None:
        own = {opt.flag: opt.field for opt in cls.options}
        if "--generator" not in own:
            named = ", ".join(opt.flag for opt in cls.options) or "none"
            raise ConfigError(f"--generator: backend {bench.backend!r} has no --generator option (its options: "
                              f"{named}); set its prior with --option FIELD=VALUE")
        options[own["--generator"]] = bench.generator
    return options


def open_bench_session(bench: Bench, device: torch.device, *, check: bool = True, **kw: Any) -> Session:
    """The benchmark's restore session: the flags, then every ``--option KEY=VALUE``."""
    return open_session(bench.backend, backend_options(bench, str(device)), bench.options, set_flag="--option",
                        check=check, **kw)


def tiny_prior(backend: str) -> torch.nn.Module:
    if backend != "rsg":
        raise ConfigError(f"--tiny builds a tiny StyleGAN2 prior, which only the rsg backend takes (got {backend!r})")
    from redegrade_stylegan2 import tiny_generator

    return tiny_generator(resolution=TINY_RESOLUTION, seed=0)


def _blind_model(bench: Bench, device: torch.device):
    """The blind forward model: ``--redegrader``, a random tiny model for ``--tiny``, else the shipped ``ffhqx``."""
    from redegrade.redegrader import Redegrader

    if bench.redegrader is None and bench.tiny:
        from redegrade.model import ModelConfig, UniversalDegradationModel

        # nn.Module initialisers draw from the global RNG: seed a private fork so smoke runs repeat
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = UniversalDegradationModel(ModelConfig.preset("tiny"))
        return Redegrader(model).freeze().to(device)
    return Redegrader.from_pretrained(bench.redegrader or DEFAULT_REDEGRADER, device=device)


class Runner:
    """One restore session, three forward models, the metric networks; :meth:`run_image` does one image."""

    def __init__(self, bench: Bench, shard: Shard, modes: Sequence[str]):
        self.bench = bench
        self.modes = list(modes)
        device = settings.resolve_device(bench.device)
        if device.type == "cuda" and device.index is None and shard.world > 1:
            device = torch.device("cuda", shard.local_rank)  # torchrun: one GPU per rank
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # so "cuda" elsewhere (metrics, aggregation) means this rank's GPU
        self.device = device
        prior = tiny_prior(bench.backend) if bench.tiny else None
        objective = None
        if bench.tiny and bench.loss == "lpips":
            from redegrade.objective import build

            objective = build("lpips", pretrained_backbone=False)  # offline smoke runs: random VGG backbone
        self.session = open_bench_session(bench, device, prior=prior, objective=objective)
        self.resolution = self.session.resolution
        if "blind" in self.modes:
            self.session.blind = _blind_model(bench, device)
        from redegrade.metrics import OptionalNetwork, lpips_network

        self.lpips = OptionalNetwork("LPIPS-VGG (accuracy, fidelity)", lambda: lpips_network().to(device))

    def run_image(self, gt_item: GroundTruth, units: Iterable[tuple[str, str]], done: set[str],
                  store: ResultStore, budget: list[int], bar=None) -> None:
        """Restore one image under every (task, level) × mode not in ``done``; append a row after each."""
        from redegrade.degradations import ffhqx

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
                # one seed per (image, task, level), shared by the three modes, whatever the sharding
                result = self.session.restore(y, mode, degradation=deg, seed=seed)
                x = png_roundtrip(result.image.float().cpu())  # score what the PNG holds
                save_image(x, unit_dir / f"{mode}.png")
                row = self.score(x, gt, y, deg, result)
                row.update({
                    "key": row_key(gt_item.id, task_name, level, mode),
                    "image": gt_item.id, "task": task_name, "level": level, "mode": mode,
                    "restored": (unit_dir / f"{mode}.png").relative_to(out).as_posix(),
                    "degraded": (unit_dir / "degraded.png").relative_to(out).as_posix(),
                    "ground_truth": (img_dir / "gt.png").relative_to(out).as_posix(),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "resolution": R, "backend": self.bench.backend, "seed": self.bench.seed,
                })
                store.append(row)
                done.add(row["key"])
                budget[0] -= 1
                if bar is not None:
                    bar.update(1)

    def score(self, x: torch.Tensor, gt: torch.Tensor, y: torch.Tensor, deg, result) -> dict[str, Any]:
        """Accuracy (x vs. the ground truth) and fidelity (the TRUE degradation of x vs. y), LPIPS and PSNR."""
        from redegrade.metrics import lpips_distance
        from redegrade.pixels.scale import psnr

        redegraded = deg.apply(x)
        net = self.lpips.get()
        return {
            "accuracy_lpips": None if net is None else lpips_distance(net, x, gt),
            "accuracy_psnr": _finite(psnr(x, gt)),
            "fidelity_lpips": None if net is None else lpips_distance(net, redegraded, y),
            "fidelity_psnr": _finite(psnr(redegraded, y)),
            "final_loss": _finite(result.info.get("final_loss")),
            "nfe": result.info.get("nfe", len(result.history)),
        }


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
