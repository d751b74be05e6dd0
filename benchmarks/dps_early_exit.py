"""DPS network evaluations and quality with and without the early exit, full and respaced schedules.

    python benchmarks/dps_early_exit.py                         # 2 targets × (1000, 250, 100 steps)
    python benchmarks/dps_early_exit.py --targets 1 --steps 1000,100

The prior is the tiny UNet2DModel of ``tests/test_dps.py`` (32², two levels, 8/16 channels), *briefly
trained* here (``--train-iters`` Adam steps of the ε-loss, batch 32, on DPS's linear 1000-step schedule)
on toy images: a random colour ramp plus one soft coloured blob. The weights are cached in
``--cache`` (training takes minutes on a busy CPU). A random-weight UNet is no stand-in: its x̂₀ never
settles (it moves by 25 % per 50 steps even at the last steps), so no plateau criterion can fire.
Targets are *in range*: unconditional samples of that same prior (ζ = 0, 1000 steps, seeds 100, 101,
…), so a perfect restoration exists. Each is observed through a known 3×3 box blur plus Gaussian noise
of ``--sigma-y`` (DPS's 0.05 by default; the same draw for every run on a target) and
restored with DPS at the defaults (ζ = 0.3) for every schedule length, without and with
``early_exit`` (its default window, tolerances and start). Reported per run: network evaluations (NFE),
the final measurement residual ‖y − A(x̂)‖ and PSNR against the target, each also relative to the full
1000-step run without early exit on the same target.
"""
from __future__ import annotations

import os
import sys
import time

import click
import torch
import torch.nn.functional as F

from redegrade import _compat  # noqa: F401  (before diffusers)
from redegrade.forward import Identity, KnownDegradation
from redegrade.metrics import psnr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dps_step_cost import build  # noqa: E402  (a sibling script: the tiny UNet of the tests)


def toy_images(n: int, g: torch.Generator) -> torch.Tensor:
    """Smooth random 32² images in [-1, 1]: a colour ramp plus one soft coloured blob."""
    r = torch.linspace(-1, 1, 32)
    yy, xx = r.view(1, 1, 32, 1), r.view(1, 1, 1, 32)
    a, b, c = (torch.rand(n, 3, 1, 1, generator=g) * 1.2 - 0.6 for _ in range(3))
    cx, cy = (torch.rand(n, 1, 1, 1, generator=g) * 1.2 - 0.6 for _ in range(2))
    col = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.08)
    return (a * xx + b * yy + 0.5 * c + col * blob).clamp(-1, 1)


def trained_tiny(iters: int, cache: str | None, seed: int = 0) -> torch.nn.Module:
    """The tests' tiny UNet after ``iters`` steps of DDPM training on :func:`toy_images` (cached)."""
    unet = build("tiny")
    if cache and os.path.isfile(cache):
        unet.load_state_dict(torch.load(cache, weights_only=True))
        return unet.eval()
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)   # DPS's linear schedule
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    unet.train()
    for _ in range(iters):
        x0 = toy_images(32, g)
        t = torch.randint(0, 1000, (32,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        loss = (unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cache:
        tmp = cache + ".tmp"
        torch.save(unet.state_dict(), tmp)
        os.replace(tmp, cache)
    return unet.eval().requires_grad_(False)


class Blur:
    """3×3 box blur with replicated borders (differentiable, known)."""

    def approx(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def restore(prior, y: torch.Tensor, steps: int, early_exit: bool, seed: int = 0):
    from redegrade_dps import DPS, DPSConfig

    return DPS(DPSConfig(steps=steps, device="cpu", early_exit=early_exit, seed=seed), prior=prior).run(
        y, KnownDegradation(Blur()))


@click.command()
@click.option("--targets", default=2, show_default=True, help="In-range targets (prior samples, seeds 100, …).")
@click.option("--steps", "schedules", default="1000,250,100", show_default=True,
              help="Schedule lengths; the first is the reference (run without early exit too).")
@click.option("--threads", default=1, show_default=True, help="torch CPU threads.")
@click.option("--sigma-y", default=0.05, show_default=True, help="Measurement noise std (images in [-1, 1]).")
@click.option("--train-iters", default=600, show_default=True, help="Training steps of the tiny prior.")
@click.option("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "redegrade-tiny-ddpm-600.pt"),
              show_default=True, help="Where the trained weights are kept ('' = retrain every run).")
def main(targets: int, schedules: str, threads: int, sigma_y: float, train_iters: int, cache: str) -> None:
    from redegrade_dps import DPS, DPSConfig

    torch.set_num_threads(threads)
    t = time.perf_counter()
    prior = trained_tiny(train_iters, cache or None)
    click.echo(f"prior: tiny UNet trained {train_iters} steps on toy images ({time.perf_counter() - t:.0f} s)")
    lengths = [int(s) for s in schedules.split(",")]
    click.echo(f"tiny UNet 32², targets = its own samples, y = blur(target) + N(0, {sigma_y}²); DPS defaults (ζ 0.3), "
               f"early exit at its defaults ({DPSConfig().early_exit_window:.0%} window, residual tol "
               f"{DPSConfig().early_exit_tol}, x̂₀ tol {DPSConfig().early_exit_x0_tol}, after "
               f"{DPSConfig().early_exit_after:.0%})")
    click.echo("| target | steps | early exit | NFE | NFE / full | residual | / full | PSNR dB | − full | s |")
    click.echo("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    totals: dict[tuple[int, bool], list[float]] = {}
    for j in range(targets):
        gt = DPS(DPSConfig(steps=1000, zeta=0.0, device="cpu", seed=100 + j), prior=prior).restore(
            torch.zeros(1, 3, 32, 32), Identity()).image
        noise = sigma_y * torch.randn(gt.shape, generator=torch.Generator().manual_seed(200 + j))
        y = Blur().approx(gt) + noise
        click.echo(f"target {j}: ‖noise‖ = {float(noise.norm()):.3f} (the residual's floor)")
        ref = None
        for steps in lengths:
            for ee in (False, True):
                t = time.perf_counter()
                r = restore(prior, y, steps, ee)
                sec = time.perf_counter() - t
                res, q = r.info["residual"], psnr(r.image, gt)
                if ref is None:
                    ref = (r.info["nfe"], res, q)
                totals.setdefault((steps, ee), []).extend([r.info["nfe"] / ref[0], res / ref[1], q - ref[2]])
                click.echo(f"| {j} | {steps} | {'on' if ee else 'off'} | {r.info['nfe']} | {r.info['nfe'] / ref[0]:.2f} "
                           f"| {res:.3f} | {res / ref[1]:.3f} | {q:.2f} | {q - ref[2]:+.2f} | {sec:.0f} |", nl=True)
    click.echo("mean over targets (NFE / full, residual / full, PSNR − full):")
    for (steps, ee), v in totals.items():
        n = len(v) // 3
        nfe, res, dq = (sum(v[i::3]) / n for i in range(3))
        click.echo(f"  {steps:5d} steps, early exit {'on ' if ee else 'off'}: {nfe:.2f}, {res:.3f}, {dq:+.2f} dB")


if __name__ == "__main__":
    main()
