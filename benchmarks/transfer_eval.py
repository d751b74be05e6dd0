"""Degradation reproduce / transfer evaluation on held-out photos (the seed paper's Table 2, offline).

For held-out photo pairs (A, B) (crops the model never saw) and each degradation d — Gaussian noise,
Gaussian blur, real JPEG, and samples of the WQI training mix (the same draw applied to A and B) —
the script forms

* ``true``      d(B), the degradation applied directly to B;
* ``transfer``  f̂(B, e(d(A))): the degradation of A carried onto B (what ``redegrade.transfer`` does);
* ``reproduce`` f̂(B, e(d(B))): B redegraded with its own code (Table 2's reproduce row);
* ``clean``     f̂(B, e(A)): transfer from a *clean* source, which should leave B nearly unchanged.

It reports, per degradation (fractions are medians over pairs), (1) how far transfer moves B's no-reference statistics toward those of
``true`` — ``fraction = (stat(transfer) − stat(B)) / (stat(true) − stat(B))`` on the statistic the
degradation changes (noise level, log-sharpness, blockiness; see :mod:`redegrade.quality`); (2) Table 2
scores of reproduce and transfer against ``true`` (PSNR, SSIM, MS-SSIM, a filter-bank texture distance,
and LPIPS-VGG when its backbone is installed), next to the ``identity`` baseline (B itself scored against
d(B): what a model that adds no degradation gets); (3) PSNR of the clean-source transfer against B.

    python benchmarks/transfer_eval.py --images DIR_OR_FILES... [--redegrader PATH] [--crop 192] [--json out.json]

Everything runs offline on CPU; pixel scores of noise are low by nature (two noise realisations never
match), which is why the statistics and the texture distance are the headline numbers.
"""
from __future__ import annotations

import io
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch
from PIL import Image, ImageFilter

from redegrade import quality
from redegrade.cli import setup_logging, user_errors
from redegrade.errors import InputError
from redegrade.image import pil_to_tensor, png_roundtrip, shrink_short_side, tensor_to_pil
from redegrade.pixels.scale import psnr, to_unit
from redegrade.redegrader import Redegrader
from redegrade.settings import generator
from redegrade.transfer import transfer

log = logging.getLogger("transfer_eval")

EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_SIDE = 512
"""Photos are first downscaled (Lanczos) so the short side is at most this, as the training data is."""


# ------------------------------------------------------------------------------------------- degradations

@dataclass(frozen=True)
class Case:
    """One degradation setting; ``stats`` are the statistics it is expected to move."""

    name: str
    kind: str
    param: float
    stats: tuple[str, ...]


def _pil(x: torch.Tensor) -> Image.Image:
    return tensor_to_pil(x)


def apply_case(case: Case, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply ``case`` to ``x`` ([1,3,H,W] in [-1,1]); the result is 8-bit quantised like a saved file.

    The same ``seed`` gives the same random draw (noise realisation or WQI parameters) on any image of
    the same size, so A and B receive *the same* degradation.
    """
    if case.kind == "noise":
        n = torch.randn(x.shape, generator=generator(seed))
        return png_roundtrip((x + 2 * case.param * n).clamp(-1, 1))
    if case.kind == "blur":
        return pil_to_tensor(_pil(x).filter(ImageFilter.GaussianBlur(case.param)))
    if case.kind == "jpeg":
        buf = io.BytesIO()
        _pil(x).save(buf, format="JPEG", quality=int(case.param))
        buf.seek(0)
        with Image.open(buf) as im:
            return pil_to_tensor(im.convert("RGB"))
    if case.kind == "wqi":
        from redegrade.degradations.wqi import degrade

        y, _ = degrade(x, generator(seed))
        return png_roundtrip(y.clamp(-1, 1))
    raise ValueError(f"unknown case kind {case.kind!r}")


CASES = (
    Case("noise σ=0.03", "noise", 0.03, ("noise",)),
    Case("noise σ=0.08", "noise", 0.08, ("noise",)),
    Case("blur σ=1.5", "blur", 1.5, ("sharpness",)),
    Case("blur σ=3", "blur", 3.0, ("sharpness",)),
    Case("JPEG q=20", "jpeg", 20, ("blockiness",)),
    Case("JPEG q=50", "jpeg", 50, ("blockiness",)),
    Case("WQI mix", "wqi", 0, ("noise", "sharpness", "blockiness")),
)

# A statistic counts toward a WQI sample's fraction only when the true degradation moved it this much
# (otherwise the ratio divides by almost nothing).
MIN_SPAN = {"noise": 0.01, "sharpness": 0.5, "blockiness": 0.1}
LOG_STATS = {"sharpness"}  # spans orders of magnitude: compare on a log scale


# -------------------------------------------------------------------------------------------- data

def find_photos(paths: tuple[Path, ...]) -> list[Path]:
    """Image files given directly or found (recursively) in folders, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p} is neither an image file nor a folder")
    if len(out) < 2:
        raise InputError(f"need at least 2 held-out photos to form pairs, found {len(out)}")
    return out


def load_crop(path: Path, crop: int, seed: int) -> torch.Tensor:
    """Downscale to short side ≤ MAX_SIDE (Lanczos) and take one seeded ``crop``² crop, ``[1,3,c,c]``."""
    with Image.open(path) as im:
        x = pil_to_tensor(shrink_short_side(im.convert("RGB"), MAX_SIDE))
    h, w = x.shape[-2:]
    if min(h, w) < crop:
        raise InputError(f"{path} is {w}×{h} after downscaling; smaller than the {crop}² crop")
    g = generator(seed)
    top = int(torch.randint(0, h - crop + 1, (1,), generator=g))
    left = int(torch.randint(0, w - crop + 1, (1,), generator=g))
    return x[..., top:top + crop, left:left + crop].contiguous()


# ------------------------------------------------------------------------------------------ scores

class Scorer:
    """Full-reference scores of an image against the true degradation (Table 2 columns)."""

    def __init__(self, lpips: bool = True):
        self.bank = quality.random_filter_bank(32, 5, seed=0)
        self.lpips = None
        try:
            import pytorch_msssim
            self.msssim = pytorch_msssim
        except ImportError:  # optional: comes with compressai
            self.msssim = None
        if lpips:
            from redegrade.metrics import OptionalNetwork, lpips_network

            self.lpips = OptionalNetwork("LPIPS-VGG", lpips_network).get()

    def texture_distance(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Mean |log std| difference of random-filter responses: a distribution (not pixel) distance."""
        sa = quality.filter_bank_stats(a, self.bank)
        sb = quality.filter_bank_stats(b, self.bank)
        n = self.bank.shape[0]
        return float((sa[:, n:].clamp_min(1e-6).log() - sb[:, n:].clamp_min(1e-6).log()).abs().mean())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        s = {"psnr": float(psnr(x, ref)), "texture": self.texture_distance(x, ref)}
        if self.msssim is not None:
            xu, ru = to_unit(x.float()).clamp(0, 1), to_unit(ref.float()).clamp(0, 1)
            s["ssim"] = float(self.msssim.ssim(xu, ru, data_range=1.0))
            if min(x.shape[-2:]) > 160:  # 5 scales of an 11-tap window
                s["ms_ssim"] = float(self.msssim.ms_ssim(xu, ru, data_range=1.0))
        if self.lpips is not None:
            from redegrade.metrics import lpips_distance

            s["lpips"] = lpips_distance(self.lpips, x, ref)
        return s


def stats_of(x: torch.Tensor) -> dict[str, float]:
    return {k: float(v) for k, v in quality.measure(x).items()}


@dataclass
class Record:
    case: str
    pair: tuple[str, str]
    stats: dict[str, dict[str, float]]
    fraction: dict[str, float]
    clean_fraction: dict[str, float]
    reproduce_fraction: dict[str, float]
    reproduce: dict[str, float]
    transfer: dict[str, float]
    clean_psnr: float
    identity: dict[str, float] = field(default_factory=dict)
    """Scores of B itself against d(B): what an output that ignores the degradation gets."""
    extra: dict = field(default_factory=dict)


def fractions(stats: dict[str, dict[str, float]], which: str, case: Case) -> dict[str, float]:
    """Fraction of the way ``which`` moved from B toward ``true`` for each statistic the case changes."""
    out = {}
    for k in case.stats:
        b, t, v = stats["B"][k], stats["true"][k], stats[which][k]
        log_scale = k in LOG_STATS
        span = (math.log(max(t, 1e-7)) - math.log(max(b, 1e-7))) if log_scale else t - b
        if case.kind == "wqi" and abs(span) < MIN_SPAN[k]:
            continue
        out[k] = quality.fraction_moved(v, b, t, log=log_scale)
    return out


# ------------------------------------------------------------------------------------------ main loop

def evaluate(model: Redegrader, photos: list[Path], *, crop: int, seed: int, cases: tuple[Case, ...],
             scorer: Scorer) -> list[Record]:
    """All records: one per (case, pair); pair i is (A, B) = (photo i, photo i+1), so every photo is a B once."""
    crops = [load_crop(p, crop, seed + i) for i, p in enumerate(photos)]
    n = len(photos)
    pairs = [(i, (i + 1) % n) for i in range(n)]
    noise_gen = [lambda i=i: generator(seed + 7 * i + 1) for i in range(n)]  # same maps for every synthesis of a pair
    # the clean-source transfer does not depend on the case: once per pair
    clean_out = {i: transfer(model, crops[j], crops[i], generator=noise_gen[i]()) for i, j in pairs}
    clean_stats = {i: stats_of(o) for i, o in clean_out.items()}
    b_stats = [stats_of(c) for c in crops]
    records = []
    for ci, case in enumerate(cases):
        t0 = time.perf_counter()
        for i, j in pairs:
            a, b = crops[i], crops[j]
            dseed = seed * 1000 + ci * 100 + i
            try:
                true_a, true_b = apply_case(case, a, dseed), apply_case(case, b, dseed)
            except ImportError as exc:
                log.warning("skipping %s: %s", case.name, exc)
                break
            out = {"transfer": transfer(model, b, true_a, generator=noise_gen[i]()),
                   "reproduce": transfer(model, b, true_b, generator=noise_gen[i]())}
            stats = {"B": b_stats[j], "true": stats_of(true_b), "clean": clean_stats[i],
                     **{k: stats_of(v) for k, v in out.items()}}
            rec = Record(case.name, (photos[i].name, photos[j].name), stats,
                         fractions(stats, "transfer", case), fractions(stats, "clean", case),
                         fractions(stats, "reproduce", case), scorer(out["reproduce"], true_b), scorer(out["transfer"], true_b),
                         float(psnr(clean_out[i], b)), scorer(b, true_b))
            records.append(rec)
            log.debug("%s %s→%s: fraction %s, clean PSNR %.1f", case.name, *rec.pair, rec.fraction, rec.clean_psnr)
        log.info("%s: %d pairs in %.0f s", case.name, len(pairs), time.perf_counter() - t0)
    return records


def _med(v: list[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return statistics.median(v) if v else float("nan")


def _mean(v: list[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return sum(v) / len(v) if v else float("nan")


def summarise(records: list[Record]) -> tuple[str, dict]:
    """Markdown tables and a JSON-able summary of the records."""
    by_case: dict[str, list[Record]] = {}
    for r in records:
        by_case.setdefault(r.case, []).append(r)
    summary: dict = {}
    lines = ["| degradation | statistic | B (clean) | true d(B) | transfer | fraction moved: transfer | reproduce | "
             "clean source | clean-source PSNR dB |", "|---|---|---|---|---|---|---|---|---|"]
    for case, rs in by_case.items():
        stats = sorted({k for r in rs for k in r.fraction} or {k for r in rs for k in r.stats["B"]})
        summary[case] = {"pairs": len(rs), "clean_psnr": _mean([r.clean_psnr for r in rs]), "stats": {}}
        for k in stats:
            row = {w: _mean([r.stats[w][k] for r in rs]) for w in ("B", "true", "transfer", "clean", "reproduce")}
            row["fraction"] = _med([r.fraction.get(k, float("nan")) for r in rs])
            row["clean_fraction"] = _med([r.clean_fraction.get(k, float("nan")) for r in rs])
            row["reproduce_fraction"] = _med([r.reproduce_fraction.get(k, float("nan")) for r in rs])
            summary[case]["stats"][k] = row
            lines.append(f"| {case} | {k} | {row['B']:.4g} | {row['true']:.4g} | {row['transfer']:.4g} | "
                         f"{row['fraction']:.2f} | {row['reproduce_fraction']:.2f} | {row['clean_fraction']:.2f} | {summary[case]['clean_psnr']:.1f} |")
    metrics = sorted({m for r in records for m in r.transfer})
    lines += ["", "| degradation | row | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for which in ("identity", "reproduce", "transfer"):
        for case, rs in list(by_case.items()) + [("all", records)]:
            vals = {m: _mean([getattr(r, which).get(m, float("nan")) for r in rs]) for m in metrics}
            summary.setdefault(case, {})[which] = vals
            lines.append(f"| {case} | {which} | " + " | ".join(f"{vals[m]:.4f}" for m in metrics) + " |")
    return "\n".join(lines), summary


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--images", "images", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Held-out photos (files or folders); repeat the option for several.")
@click.option("--redegrader", "redegrader_name", default=None, help="Redegrader name or folder (default: shipped).")
@click.option("--crop", type=int, default=192, show_default=True, help="Crop side (multiple of 8).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cases", default="all", show_default=True,
              help="Comma-separated kinds to run (noise,blur,jpeg,wqi) or 'all'.")
@click.option("--max-photos", type=int, default=None, help="Use only the first N photos.")
@click.option("--no-lpips", is_flag=True, help="Skip LPIPS even when its backbone is installed.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write all records here.")
@click.option("-v", "--verbose", is_flag=True)
@user_errors
def main(images, redegrader_name, crop, seed, cases, max_photos, no_lpips, json_path, verbose) -> None:
    """Evaluate reproduce/transfer on held-out photo pairs and print Markdown tables."""
    setup_logging(verbose)
    if crop % 8:
        raise InputError(f"--crop must be a multiple of 8, got {crop}")
    photos = find_photos(images)[:max_photos]
    kinds = {c.kind for c in CASES} if cases == "all" else set(cases.split(","))
    selected = tuple(c for c in CASES if c.kind in kinds)
    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = Redegrader.from_pretrained(redegrader_name)
    model.freeze()
    log.info("loaded redegrader in %.2f s; %d photos, %d pairs, %d cases", time.perf_counter() - t0,
             len(photos), len(photos), len(selected))
    records = evaluate(model, photos, crop=crop, seed=seed, cases=selected, scorer=Scorer(lpips=not no_lpips))
    table, summary = summarise(records)
    click.echo(table)
    log.info("evaluated %d records in %.0f s", len(records), time.perf_counter() - t0)
    if json_path is not None:
        json_path.write_text(json.dumps({"summary": summary, "records": [r.__dict__ for r in records],
                                         "photos": [str(p) for p in photos], "crop": crop, "seed": seed,
                                         "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
