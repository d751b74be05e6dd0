"""Peak memory of one blind RSG step, with and without the Redegrader's activation checkpointing.

    python benchmarks/blind_memory.py --resolution 1024 --device cuda              # the issue's setting
    python benchmarks/blind_memory.py --resolution 256 --precisions fp32,bf16      # CPU, short

Each configuration runs in its own child process (so one cannot hide another's peak): a random-weight
StyleGAN2 of NVIDIA's config-f size at ``--resolution``, LPIPS-VGG with a random backbone (same cost as
the real one, no download) and one ``RSG.restore`` step in ``--phase`` (W++ by default: its latent is
the largest) through the forward model. Models: ``naive`` (identity: the floor), ``paper`` (random
paper-size universal degradation model) and ``shipped`` (restore's default bundled model, ``ffhqx``), each with
``checkpoint=off`` and ``on``. Peak memory is CUDA's ``max_memory_allocated`` (absolute, everything
the process holds) or on CPU the peak resident set size sampled every 5 ms (absolute, and the growth
during the restore). Nothing is timed here: see ``step_cost.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_cost import _PeakRSS, random_stylegan2  # noqa: E402  (a sibling script)

MODELS = ("naive", "paper", "shipped")


def one_step(model: str, checkpoint: str, precision: str, resolution: int, device: str, phase: str) -> dict:
    """Build everything, run one RSG step and return the peak memory (bytes)."""
    from redegrade import settings
    from redegrade.forward import Identity
    from redegrade.objective import build
    from redegrade.redegrader import Redegrader
    from redegrade.session import DEFAULT_REDEGRADER
    from redegrade_rsg import RSG, RSGConfig

    dev = settings.resolve_device(device)
    G = random_stylegan2(resolution).to(dev)
    if model == "naive":
        fm = Identity()
    elif model == "shipped":
        fm = Redegrader.from_pretrained(DEFAULT_REDEGRADER, checkpoint=checkpoint, precision=precision)
    else:
        from redegrade.model import ModelConfig, UniversalDegradationModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            fm = Redegrader(UniversalDegradationModel(ModelConfig.preset("paper")), checkpoint=checkpoint,
                            precision=precision)
    y = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fm.to(dev).reset(y.to(dev), generator=settings.generator(0))
    rsg = RSG(RSGConfig(steps=1, phases=phase, device=str(dev)), prior=G,
              objective=build("lpips", pretrained_backbone=False))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        rsg.restore(y, fm)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        return {"peak": peak, "growth": peak - base, "device": torch.cuda.get_device_name(dev)}
    with _PeakRSS() as watch:
        base = watch.peak
        rsg.restore(y, fm)
    return {"peak": watch.peak, "growth": watch.peak - base, "device": "cpu"}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--resolution", default=1024, show_default=True, help="Image side (1024 = the generator's, on a GPU).")
@click.option("--device", default="auto", show_default=True)
@click.option("--models", default="naive,paper,shipped", show_default=True)
@click.option("--precisions", default="fp32", show_default=True, help="Comma-separated: fp32, bf16, fp16.")
@click.option("--phase", default="W++", show_default=True, help="RSG phase of the measured step.")
@click.option("--child", hidden=True, help="model,checkpoint,precision (internal).")
def main(resolution: int, device: str, models: str, precisions: str, phase: str, child: str | None) -> None:
    """Peak memory of one blind RSG step per model × checkpointing × precision, one child process each."""
    if child:
        model, checkpoint, precision = child.split(",")
        click.echo(json.dumps(one_step(model, checkpoint, precision, resolution, device, phase)))
        return
    runs = []
    for model in models.split(","):
        if model not in MODELS:
            raise click.BadParameter(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        for precision in (["fp32"] if model == "naive" else precisions.split(",")):
            runs += [(model, "off", precision)] if model == "naive" else [(model, c, precision) for c in ("off", "on")]
    click.echo(f"one blind RSG step ({phase}) at {resolution}², device {device}; peak = everything the process "
               f"holds, growth = above what it held before the restore")
    click.echo("| model | checkpoint | precision | peak MiB | growth MiB | growth × off |")
    click.echo("|---|---|---|---:|---:|---:|")
    off: dict[tuple[str, str], int] = {}
    card = device
    for model, checkpoint, precision in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--resolution", str(resolution), "--device", device,
               "--phase", phase, "--child", f"{model},{checkpoint},{precision}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            why = "killed (out of memory?)" if proc.returncode < 0 else proc.stderr.strip().splitlines()[-1:]
            click.echo(f"| {model} | {checkpoint} | {precision} | failed: {why} | | |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        card = r["device"]
        if checkpoint == "off":
            off[model, precision] = r["growth"]
        ref = off.get((model, precision))
        ratio = f"{r['growth'] / ref:.2f}" if ref and checkpoint == "on" else ""
        click.echo(f"| {model} | {checkpoint} | {precision} | {r['peak'] / 2**20:.0f} | {r['growth'] / 2**20:.0f} "
                   f"| {ratio} |")
    click.echo(f"(device: {card}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
