"""Seconds per DPS step on CPU: the tiny test UNet (32²) vs the 256² architectures (random weights).

One step = UNet forward + backward to x_t + the ancestral/guidance update, timed inside the real
``DPS.restore`` loop through its progress callback (median over the timed steps, after a warm-up step).
Also reports the network evaluations saved by the early exit on the tiny setup.

    .venv/bin/python benchmarks/dps_step_cost.py                 # tiny, celebahq256, adm256
    .venv/bin/python benchmarks/dps_step_cost.py --archs tiny --steps 20
"""
from __future__ import annotations

import resource
import statistics
import time

import click
import torch

from redegrade import _compat  # noqa: F401  (before diffusers)
from redegrade.forward import Identity


def build(arch: str) -> torch.nn.Module:
    """A randomly initialised prior of the named architecture."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    if arch == "tiny":  # the one tests/test_dps.py uses
        return UNet2DModel(sample_size=32, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                           attention_head_dim=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    if arch == "celebahq256":  # google/ddpm-ema-celebahq-256 (tech-facts §4.5)
        return UNet2DModel(sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512), layers_per_block=2,
                           down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
                           norm_eps=1e-6, freq_shift=1, flip_sin_to_cos=False, downsample_padding=0,
                           attention_head_dim=None)
    if arch == "adm256":  # DPS's ffhq_10m.pt architecture, through the reference ADM UNet
        from redegrade_adm import ADMConfig, ADMUNet

        return ADMUNet(ADMConfig.ffhq256())
    raise click.BadParameter(f"unknown architecture {arch!r}")


def step_seconds(arch: str, steps: int, **cfg) -> tuple[float, float]:
    """Median seconds per step and the peak resident-memory growth (GiB) of the run."""
    from redegrade_dps import DPS, DPSConfig

    prior = build(arch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = prior.config.image_size if arch == "adm256" else prior.config.sample_size
    y = torch.zeros(1, 3, size, size)
    stamps: list[float] = []
    dps = DPS(DPSConfig(steps=steps + 1, device="cpu", **cfg), prior=prior)
    t0 = time.perf_counter()
    dps.restore(y, Identity(), progress=lambda info: stamps.append(time.perf_counter()))
    diffs = [b - a for a, b in zip([t0] + stamps[:-1], stamps)][1:]  # drop the warm-up step
    # ru_maxrss is a high-water mark (KiB): growth ≈ weights + one step's activations kept for the backward
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2**20
    return statistics.median(diffs), grown


@click.command()
@click.option("--archs", default="tiny,celebahq256,adm256", show_default=True)
@click.option("--steps", default=3, show_default=True, help="Timed steps per architecture (after one warm-up).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads.")
@click.option("--early-exit-steps", default=200, show_default=True,
              help="Schedule length for the tiny early-exit measurement (0 = skip).")
def main(archs: str, steps: int, threads: int, early_exit_steps: int) -> None:
    torch.set_num_threads(threads)
    results = {}
    for arch in archs.split(","):
        sec, gib = step_seconds(arch, steps if arch != "tiny" else max(steps, 20))
        results[arch] = sec
        click.echo(f"{arch:12s} {sec:8.3f} s/step (CPU, {threads} thread(s)); peak memory growth {gib:.2f} GiB")
    if "tiny" in results:
        for arch, sec in results.items():
            if arch != "tiny":
                click.echo(f"ratio {arch}/tiny: {sec / results['tiny']:.0f}×")
    if early_exit_steps:
        from redegrade_dps import DPS, DPSConfig

        y = torch.linspace(-0.8, 0.8, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()
        r = DPS(DPSConfig(steps=early_exit_steps, device="cpu", early_exit=True), prior=build("tiny")).restore(y, Identity())
        full = DPS(DPSConfig(steps=early_exit_steps, device="cpu"), prior=build("tiny")).restore(y, Identity())
        saved = early_exit_steps - r.info["nfe"]
        c = DPSConfig()
        click.echo(f"early exit (tiny random prior, {early_exit_steps} steps, window {c.early_exit_window:.0%}, "
                   f"tol {c.early_exit_tol}, x̂₀ tol {c.early_exit_x0_tol}): nfe {r.info['nfe']} "
                   f"(saved {saved}, {100 * saved / early_exit_steps:.0f}%), exit step {r.info['early_exit_step']}, "
                   f"residual {r.info['residual']:.2f} vs {full.info['residual']:.2f} with the full schedule")


if __name__ == "__main__":
    main()
