"""Seconds per RSG step on this machine: blind (Redegrader) vs naive (identity), at 256² and 1024².

Random weights everywhere (same cost as the real checkpoints): a StyleGAN2 generator of the FFHQ
config (1024²: config-f, channel_base 32768; 256²: the paper256 config, channel_base 16384), the
Redegrader at the ``paper`` preset, and LPIPS-VGG with a random backbone (no download; the same
network, so the same cost). Steps are timed inside the real ``RSG.restore`` loop through its progress
callback: the median per phase over the timed steps (the first step of each phase is a warm-up).

    .venv/bin/python benchmarks/rsg_step_cost.py                       # 256 and 1024, 3 steps per phase
    .venv/bin/python benchmarks/rsg_step_cost.py --resolutions 256 --steps 5 --device cuda
"""
from __future__ import annotations

import statistics
import time

import click
import torch

from redegrade import settings
from redegrade.forward import Identity
from redegrade.objective import build


def make_generator(resolution: int) -> torch.nn.Module:
    """A random-weight StyleGAN2 with the FFHQ architecture at ``resolution``."""
    from redegrade_stylegan2 import Generator

    base = 32768 if resolution >= 512 else 16384
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                      mapping_kwargs=dict(num_layers=8),
                      synthesis_kwargs=dict(channel_base=base, channel_max=512, conv_clamp=256))
    return G.eval().requires_grad_(False)


def make_redegrader(preset: str) -> torch.nn.Module:
    from redegrade.model import ModelConfig, UniversalDegradationModel
    from redegrade.redegrader import Redegrader

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Redegrader(UniversalDegradationModel(ModelConfig.preset(preset))).freeze()


def time_run(G, fm, objective, y, steps: int, device: torch.device, phases: str) -> dict[str, float]:
    """Median seconds per step of each phase (first step of a phase excluded)."""
    from redegrade_rsg import RSG, RSGConfig

    stamps: dict[str, list[float]] = {}

    def progress(info):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.setdefault(info.phase, []).append(time.perf_counter())

    RSG(RSGConfig(steps=steps, device=str(device), phases=phases), prior=G, objective=objective).run(
        y, fm, progress=progress)  # resets fm on y with seed 0, the config's
    return {phase: statistics.median(b - a for a, b in zip(t, t[1:])) for phase, t in stamps.items()}


@click.command()
@click.option("--resolutions", default="256,1024", show_default=True)
@click.option("--steps", default=3, show_default=True, help="Steps per phase (≥ 2; the first is a warm-up).")
@click.option("--preset", default="paper", show_default=True, help="Redegrader size preset.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--phases", default="V,W,W+,W++", show_default=True, help="Phases to time (e.g. W,W++ at 1024² on CPU).")
@click.option("--modes", default="naive,blind", show_default=True,
              help="Forward models to time (blind at 1024² needs ~40 GB for the paper-size Redegrader's backward).")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
def main(resolutions: str, steps: int, preset: str, device: str, phases: str, modes: str,
         threads: int | None) -> None:
    dev = settings.resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    objective = build("lpips", pretrained_backbone=False).to(dev)
    print(f"device {dev}, torch threads {torch.get_num_threads()}, {steps} steps per phase, redegrader '{preset}'")
    print(f"{'res':>5} {'phase':>5} {'naive s/step':>13} {'blind s/step':>13} {'blind/naive':>12}")
    for res in (int(r) for r in resolutions.split(",")):
        G = make_generator(res).to(dev)
        y = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2 - 1
        naive = time_run(G, Identity(), objective, y, steps, dev, phases) if "naive" in modes else {}
        blind = time_run(G, make_redegrader(preset), objective, y, steps, dev, phases) if "blind" in modes else {}
        nan = float("nan")
        for phase in naive or blind:
            n, b = naive.get(phase, nan), blind.get(phase, nan)
            print(f"{res:>5} {phase:>5} {n:>13.3f} {b:>13.3f} {b / n:>12.2f}")
        mean_n = statistics.mean(naive.values()) if naive else nan
        mean_b = statistics.mean(blind.values()) if blind else nan
        print(f"{res:>5} {'all':>5} {mean_n:>13.3f} {mean_b:>13.3f} {mean_b / mean_n:>12.2f}", flush=True)
        del G


if __name__ == "__main__":
    main()
