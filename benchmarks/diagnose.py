"""Why blind restoration wins or loses: can the forward model make the true image the best explanation of y?

For in-range pairs (x drawn from the generator, y = FFHQ-X task of x) it prints, per task:

* **oracle** — the objective and PSNR between y and A(x) for the true x, for identity (naive), the known
  degradation's approximation (non-blind, mean of 4 draws) and the Redegrader at e = E(y), then after
  optimising e_g, e_l, n (and e alone, n fixed) with x fixed;
* **margin** — min over wrong candidates (x blurred, x darkened as N's pixel drop darkens, x shifted by a
  pixel) of L(wrong) − L(true x): a forward model can only lead the inversion to x when it is
  clearly positive;
* **gradient** — the cosine between ∇ₓ L(y, A(x₀)) of each forward model and of the known degradation
  at x₀ = x blurred, and with the step that would mend x₀ (x − x₀);
* **noise** — how much noise A(true x) renders against y: the σ of the finest Haar band and the share of
  black (dropped) pixels, and its brightness and contrast against x's (mean difference, std ratio), the
  mean difference also on x's darkest and brightest quarter of values (N's pixel drop darkens in
  proportion to intensity), for y, the known degradation and the Redegrader at E(y);
* **dither** — how far the inversion's forward pass (JPEG head dithered, not rounded) is from the
  rounded re-degradation at the true x, beside how far y is from x.

Minutes on CPU, against an hour for a table of full inversions (``benchmarks/inrange.py``):

    python benchmarks/diagnose.py --tasks N,A,NA,P,U --images 4
    python benchmarks/diagnose.py --redegrader runs/fx/redegrader --loss l1
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import click
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inrange import natural_generator, targets  # noqa: E402

from redegrade import settings  # noqa: E402
from redegrade.cli import setup_logging, user_errors  # noqa: E402
from redegrade.image import resize  # noqa: E402

DRAWS = 4  # draws of the known degradation's random approximation (noise, drop mask)
BLACK = -0.95  # a pixel this dark in all channels counts as dropped (N's pixel drop writes black)


def candidates(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The true image and plausible wrong ones an inversion could settle on."""
    return {"true": x,
            "blurred": F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1),
            "darkened": 0.84 * (x + 1) - 1,
            "shifted": torch.roll(x, 1, dims=-1)}


def shift_by_intensity(a: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """Mean of a − x over x's darkest and over its brightest quarter of values (channels apart)."""
    lo, hi = torch.quantile(x.flatten(), torch.tensor([0.25, 0.75], dtype=x.dtype))
    d = a - x
    return float(d[x <= lo].mean()), float(d[x >= hi].mean())


def known_loss(objective, y, deg, x, R):
    from redegrade.forward import KnownDegradation

    A = KnownDegradation(deg, resolution=R)
    return sum(objective(y, A(x)) for _ in range(DRAWS)) / DRAWS


def fit_code(red, objective, y, x, *, steps: int, lr: float, noise: bool) -> None:
    """Optimise the Redegrader's e_g, e_l (and n when ``noise``) so f̂(x) explains y, x fixed."""
    named = red.named_variables()
    params = [v for k, v in named.items() if noise or not k.startswith("n.")]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = objective(y, red(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for v in named.values():
        v.grad = None


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def grad_at(objective, y, A, x0):
    x = x0.detach().clone().requires_grad_(True)
    objective(y, A(x)).backward()
    return x.grad.detach()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--generator", default=None, help="StyleGAN2 .pkl/.safetensors (default: the 64² built-in one).")
@click.option("--resolution", type=click.IntRange(16), default=64, show_default=True)
@click.option("--generator-seed", type=int, default=0, show_default=True,
              help="Weights of the built-in generator (ignored with --generator), as in inrange.py.")
@click.option("--images", type=click.IntRange(1), default=4, show_default=True)
@click.option("--tasks", default="N,A,NA,P,U", show_default=True)
@click.option("--level", default="M", show_default=True)
@click.option("--loss", type=click.Choice(["l1", "l2", "lpips"]), default="l1", show_default=True)
@click.option("--redegrader", default=None, help="Folder, checkpoint, registry or shipped name (default: ffhqx).")
@click.option("--fit-steps", type=click.IntRange(0), default=100, show_default=True,
              help="Adam steps on e (and n) with x fixed, lr 0.03.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(generator, resolution, generator_seed, images, tasks, level, loss, redegrader, fit_steps, seed):
    """Identifiability of the true image under identity, the known degradation and the Redegrader."""
    setup_logging()
    sys.exit(run(generator, resolution, images, tasks, level, loss, redegrader, fit_steps, seed, generator_seed))


@user_errors
def run(generator, resolution, images, tasks, level, loss, redegrader, fit_steps, seed, generator_seed=0) -> int:
    from redegrade.degradations import ffhqx
    from redegrade.forward import Identity, KnownDegradation
    from redegrade.objective import build
    from redegrade.pixels.scale import psnr
    from redegrade.pixels.stats import haar_hh
    from redegrade.redegrader import Redegrader
    from redegrade.session import DEFAULT_REDEGRADER

    if generator is None:
        G = natural_generator(resolution, seed=generator_seed)
    else:
        from redegrade_stylegan2 import load_generator

        G = load_generator(generator)
    R = int(G.img_resolution)
    objective = build(loss)
    red = Redegrader.from_pretrained(redegrader or DEFAULT_REDEGRADER)
    clean = targets(G, images, seed, 1.0)
    for name in ffhqx.parse_tasks(tasks):
        lv = level if name in ffhqx.TASKS_SINGLE else ffhqx.COMPOSED_LEVEL
        acc = defaultdict(list)
        for i in range(images):
            s = seed * 1000 + i
            x = clean[i:i + 1]
            deg = ffhqx.task(name, lv, resolution=R, seed=s)
            y_true = deg.apply(x)
            y = resize(y_true, R)  # what blind and naive see
            cands = candidates(x)
            torch.manual_seed(s)  # the known approximation draws from the global stream
            with torch.no_grad():
                columns = {"identity": {k: float(objective(y, c)) for k, c in cands.items()},
                           "known": {k: float(known_loss(objective, y_true, deg, c, R)) for k, c in cands.items()}}
                red.reset(y, generator=settings.generator(s))
                columns["red E(y)"] = {k: float(objective(y, red(c))) for k, c in cands.items()}
                known_x, red_x = KnownDegradation(deg, resolution=R)(x), red(x)
                acc["psnr identity"].append(float(psnr(x, y)))
                acc["psnr known"].append(float(psnr(known_x, y_true)))
                acc["psnr red E(y)"].append(float(psnr(red_x, y)))
                # at the prior's size, as blind and naive see y (U's known output is the small image)
                for label, a in (("y", y), ("known", resize(known_x, R)), ("red", red_x)):
                    acc[f"hp {label}"].append(float(haar_hh(a).std()))
                    acc[f"black {label}"].append(float((a < BLACK).all(dim=1).float().mean()))
                    acc[f"shift {label}"].append(float(a.mean() - x.mean()))
                    dark, bright = shift_by_intensity(a, x)
                    acc[f"shift dark {label}"].append(dark)
                    acc[f"shift bright {label}"].append(bright)
                    acc[f"contrast {label}"].append(float(a.std() / x.std()))
            # an inversion's forward (x needs a gradient): the JPEG head dithers instead of rounding
            acc["psnr dither"].append(float(psnr(red(x.clone().requires_grad_(True)).detach(), red_x)))
            # gradients at a wrong estimate x0 (blurred x); identity and red at E(y)
            x0 = cands["blurred"]
            torch.manual_seed(s)
            g_known = sum(grad_at(objective, y_true, KnownDegradation(deg, resolution=R), x0) for _ in range(DRAWS))
            mend = x - x0
            for label, A in (("identity", Identity()), ("red E(y)", red)):
                g = grad_at(objective, y, A, x0)
                acc[f"cos {label}·known"].append(cosine(g, g_known))
                acc[f"cos {label}·mend"].append(cosine(-g, mend))
            acc["cos known·mend"].append(cosine(-g_known, mend))
            for label, noise in (("red e*,n*", True), ("red e* (n fixed)", False)):
                red.reset(y, generator=settings.generator(s))
                fit_code(red, objective, y, x, steps=fit_steps, lr=0.03, noise=noise)
                with torch.no_grad():
                    columns[label] = {k: float(objective(y, red(c))) for k, c in cands.items()}
                    acc[f"psnr {label}"].append(float(psnr(red(x), y)))
            for col, vals in columns.items():
                for k, v in vals.items():
                    acc[f"L {col} {k}"].append(v)
                acc[f"margin {col}"].append(min(v for k, v in vals.items() if k != "true") - vals["true"])
        print(report(f"{name}_{lv}", acc, images))
    return 0


def report(task: str, acc: dict, n: int) -> str:
    mean = {k: sum(v) / len(v) for k, v in acc.items()}
    cols = ["identity", "known", "red E(y)", "red e*,n*", "red e* (n fixed)"]
    lines = [f"\n### {task} (mean of {n} images; objective lower = better explanation of y)", "",
             "| candidate | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for cand in ("true", "blurred", "darkened", "shifted"):
        lines.append(f"| {cand} x | " + " | ".join(f"{mean[f'L {c} {cand}']:.3f}" for c in cols) + " |")
    lines.append("| **margin** (min wrong − true) | " + " | ".join(f"**{mean[f'margin {c}']:+.3f}**" for c in cols) + " |")
    lines.append("| PSNR(A(true x), y) dB | " + " | ".join(f"{mean[f'psnr {c}']:.2f}" for c in cols) + " |")
    lines += ["", f"gradient at x blurred: cos(identity, known) {mean['cos identity·known']:+.2f}, "
                  f"cos(red, known) {mean['cos red E(y)·known']:+.2f}; descent · mend: identity "
                  f"{mean['cos identity·mend']:+.2f}, red {mean['cos red E(y)·mend']:+.2f}, "
                  f"known {mean['cos known·mend']:+.2f}",
              "", f"noise rendered at the true x (A(x) against y): finest Haar band σ y {mean['hp y']:.3f}, "
                  f"known {mean['hp known']:.3f}, red {mean['hp red']:.3f}; black pixels y "
                  f"{100 * mean['black y']:.1f} %, known {100 * mean['black known']:.1f} %, red "
                  f"{100 * mean['black red']:.1f} %; mean − x's y {mean['shift y']:+.3f}, known "
                  f"{mean['shift known']:+.3f}, red {mean['shift red']:+.3f}; std / x's y {mean['contrast y']:.2f}, "
                  f"known {mean['contrast known']:.2f}, red {mean['contrast red']:.2f}; mean − x's on x's darkest / "
                  f"brightest quarter y {mean['shift dark y']:+.3f} / {mean['shift bright y']:+.3f}, known "
                  f"{mean['shift dark known']:+.3f} / {mean['shift bright known']:+.3f}, red "
                  f"{mean['shift dark red']:+.3f} / {mean['shift bright red']:+.3f}",
              "", f"JPEG dither in the inversion's forward at the true x: PSNR(dithered, rounded A(x)) "
                  f"{mean['psnr dither']:.1f} dB (y against x: {mean['psnr identity']:.1f} dB)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
