"""In-range restoration benchmark: does blind restoration beat naive where the prior can be exact?

Clean targets are drawn from the generator itself (seeded z, ``noise_mode="const"``), so a perfect
inversion exists; each is degraded with FFHQ-X tasks and restored on one backend with three forward
models — naive (identity), blind (the Redegrader) and non-blind (the true degradation's
differentiable approximation). Printed: PSNR of the restoration against the clean target per task
and mode, blind − naive, the share of the naive → non-blind gap that blind closes, and PSNR after
every phase, so one sees where blind goes wrong.

    python benchmarks/inrange.py                                  # CPU, built-in 64² generator, minutes
    python benchmarks/inrange.py --generator ffhq.pkl --loss lpips --images 8 --device cuda
    python benchmarks/inrange.py --tasks N,A --set phases=W,W+,W++ --modes naive

Without ``--generator`` a small random StyleGAN2 is built here (:func:`natural_generator`): random
weights with the high-resolution RGB outputs damped so its images have a photo-like falling spectrum
(colour regions and texture rather than white noise). Any NVIDIA ``.pkl`` or our ``.safetensors``
export runs unchanged.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import click
import torch

from redegrade import settings
from redegrade.cli import setup_logging, user_errors
from redegrade.files import atomic_path
from redegrade.image import png_roundtrip, resize

log = logging.getLogger("inrange")

MODES = ("naive", "blind", "nonblind")


def natural_generator(resolution: int = 64, seed: int = 0, *, channels: int = 32, w_dim: int = 32,
                      damping: float = 0.5):
    """A small random-weight StyleGAN2 whose images look more like photos than white noise.

    The skip architecture sums the RGB outputs of every block; the output of the block at resolution
    ``r`` is scaled by ``(4/r)**damping`` (a falling spectrum, as natural images have), then all RGB
    outputs by one factor so the images have a standard deviation of about 0.5 in ``[-1,1]``.
    """
    from redegrade_stylegan2 import tiny_generator

    G = tiny_generator(resolution=resolution, seed=seed, w_dim=w_dim, channels=channels)
    torgbs = [getattr(G.synthesis, f"b{r}").torgb for r in G.synthesis.block_resolutions]
    with torch.no_grad():
        for r, layer in zip(G.synthesis.block_resolutions, torgbs):
            layer.weight.mul_((4 / r) ** damping)
            layer.bias.mul_((4 / r) ** damping)
        z = torch.randn(16, G.z_dim, generator=torch.Generator().manual_seed(seed))
        scale = 0.5 / float(G(z, None, noise_mode="const").std())
        for layer in torgbs:
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
    return G


def targets(G, n: int, seed: int, psi: float) -> torch.Tensor:
    """``n`` clean images ``[n,3,R,R]`` from seeded z, clamped and stored as 8 bits (a saved target)."""
    z = torch.randn(n, G.z_dim, generator=settings.generator(seed))
    with torch.no_grad():
        ws = G.mapping(z.to(G.mapping.w_avg.device), None, truncation_psi=psi)
        return png_roundtrip(G.synthesis(ws, noise_mode="const").float().cpu())


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    from redegrade.pixels.scale import psnr as _psnr

    return float(_psnr(x.float().cpu().clamp(-1, 1), ref.float().cpu()))


def summary(rows: list[dict]) -> str:
    """Markdown: PSNR per task × mode (mean over images), blind − naive, gap closed; then per phase."""
    by = defaultdict(list)
    phases = defaultdict(lambda: defaultdict(list))
    tasks, modes = [], []
    for r in rows:
        key = f"{r['task']}_{r['level']}"
        tasks += [key] if key not in tasks else []
        modes += [r["mode"]] if r["mode"] not in modes else []
        by[key, r["mode"]].append(r["psnr"])
        for name, v in r["phases"].items():
            phases[key, r["mode"]][name].append(v)
    mean = {k: sum(v) / len(v) for k, v in by.items()}
    cols = [m for m in MODES if m in modes]
    lines = ["| task | " + " | ".join(cols) + " | blind − naive | gap closed |",
             "|---|" + "---|" * (len(cols) + 2)]
    for t in tasks:
        vals = [mean.get((t, m)) for m in cols]
        n, b, k = (mean.get((t, m)) for m in ("naive", "blind", "nonblind"))
        diff = f"{b - n:+.2f}" if None not in (n, b) else ""
        gap = f"{(b - n) / (k - n):.2f}" if None not in (n, b, k) and abs(k - n) > 1e-6 else ""
        lines.append(f"| {t} | " + " | ".join("" if v is None else f"{v:.2f}" for v in vals) + f" | {diff} | {gap} |")
    lines += ["", "PSNR after each phase (dB):", "", "| task | mode | " + " | ".join(_phase_names(phases)) + " |",
              "|---|---|" + "---|" * len(_phase_names(phases))]
    for t in tasks:
        for m in cols:
            ph = phases.get((t, m), {})
            lines.append(f"| {t} | {m} | " + " | ".join(
                f"{sum(ph[p]) / len(ph[p]):.2f}" if p in ph else "" for p in _phase_names(phases)) + " |")
    return "\n".join(lines)


def _phase_names(phases) -> list[str]:
    names: list[str] = []
    for d in phases.values():
        names += [p for p in d if p not in names]
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--generator", default=None, help="StyleGAN2 .pkl/.safetensors or registry name "
              "(default: a 64² random generator built here, see --resolution).")
@click.option("--resolution", type=click.IntRange(16), default=64, show_default=True,
              help="Side of the built-in generator (ignored with --generator).")
@click.option("--generator-seed", type=int, default=0, show_default=True,
              help="Weights of the built-in generator (ignored with --generator).")
@click.option("--images", type=click.IntRange(1), default=4, show_default=True, help="Targets per task.")
@click.option("--tasks", default="N,A,NA,P,U", show_default=True, help="FFHQ-X tasks, comma-separated.")
@click.option("--level", default="M", show_default=True, help="FFHQ-X level of single tasks (combined use M).")
@click.option("--modes", default="naive,blind,nonblind", show_default=True)
@click.option("--steps", type=click.IntRange(0), default=150, show_default=True, help="Steps per phase.")
@click.option("--loss", type=click.Choice(["l1", "l2", "lpips"]), default="l1", show_default=True,
              help="Objective (lpips needs torchvision's VGG16 weights).")
@click.option("--redegrader", default=None, help="Blind model: folder, checkpoint, registry or shipped name (default: ffhqx).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help="Backend setting, e.g. phases=W,W+,W++.")
@click.option("--psi", type=float, default=1.0, show_default=True, help="Truncation of the targets' latents.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds targets, degradations and noise.")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="Also write rows as JSON lines.")
def main(generator, resolution, generator_seed, images, tasks, level, modes, steps, loss, redegrader, assignments,
         psi, seed, device, out):
    """Blind vs naive vs non-blind RSG restoration on targets the generator can reproduce exactly."""
    setup_logging()
    sys.exit(run(generator, resolution, images, tasks, level, modes, steps, loss, redegrader, assignments,
                 psi, seed, device, out, generator_seed))


@user_errors
def run(generator, resolution, images, tasks, level, modes, steps, loss, redegrader, assignments, psi, seed,
        device, out, generator_seed: int = 0) -> int:
    from redegrade.degradations import ffhqx
    from redegrade.session import open_session

    dev = settings.resolve_device(device)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if any(m not in MODES for m in mode_list):
        raise click.UsageError(f"--modes: choose from {', '.join(MODES)}")
    task_list = ffhqx.parse_tasks(tasks)
    if generator is None:
        G = natural_generator(resolution, seed=generator_seed)
    else:
        from redegrade_stylegan2 import load_generator

        G = load_generator(generator)
    G = G.to(dev)
    R = int(G.img_resolution)
    session = open_session("rsg", {"steps": steps, "loss": loss, "device": str(dev)}, tuple(assignments), prior=G)
    if "blind" in mode_list:
        session.load_blind(redegrader)
    clean = targets(G, images, seed, psi)
    rows = []
    for name in task_list:
        lv = level if name in ffhqx.TASKS_SINGLE else ffhqx.COMPOSED_LEVEL
        for i in range(images):
            s = seed * 1000 + i
            x = clean[i:i + 1]
            deg = ffhqx.task(name, lv, resolution=R, seed=s)
            y = deg.apply(x)
            for mode in mode_list:
                t0 = time.perf_counter()
                res = session.restore(y, mode, degradation=deg, seed=s)
                row = {"task": name, "level": lv, "image": i, "mode": mode, "psnr": psnr(res.image, x),
                       "phases": {p: psnr(im, x) for p, im in res.phases.items()},
                       "degraded_psnr": psnr(resize(y, R), x), "seconds": round(time.perf_counter() - t0, 2)}
                rows.append(row)
                log.info("%s_%s image %d %-8s PSNR %.2f dB (%.0f s)", name, lv, i, mode, row["psnr"], row["seconds"])
    text = summary(rows)
    print(text)
    if out is not None:
        with atomic_path(out) as tmp:
            Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    main()
