"""Gather natural photographs that can be had offline into a training folder with a held-out split.

Sources (all redistributable):

* ``mate`` — Debian's ``mate-backgrounds`` (nature photos, GPL-2+), fetched with
  ``apt-get download mate-backgrounds`` and unpacked with ``dpkg-deb -x`` (nothing is installed);
* ``plasma`` — Debian's ``plasma-workspace-wallpapers`` (the photographic wallpapers only, GPL-2+/LGPL);
* ``skimage`` — scikit-image's colour sample photos (public domain / CC0).

Layout written: ``OUT/train/<source>_<name>.<ext>``, ``OUT/heldout/...`` and ``OUT/manifest.json``
(source, original path, split). The held-out choice is a seeded permutation, so the same command
gives the same split. Usage::

    python -m redegrade.train.photos --out photos --sources mate,plasma,skimage --heldout 4
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from redegrade.cli import setup_logging, user_errors
from redegrade.errors import InputError
from redegrade.files import atomic_path

log = logging.getLogger(__name__)

SOURCES = ("mate", "plasma", "skimage")
# photographic wallpapers in plasma-workspace-wallpapers (the rest are renders / illustrations)
PLASMA_PHOTOS = ("Autumn", "BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
                 "Kite", "OneStandsOut", "PastelHills", "Path", "summer_1am")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _deb(package: str, workdir: Path, deb_dir: Path | None) -> Path:
    """Unpack ``package``'s .deb (from ``deb_dir`` if present there, else ``apt-get download``)."""
    debs = sorted(deb_dir.glob(f"{package}_*.deb")) if deb_dir else []
    if not debs:
        try:
            subprocess.run(["apt-get", "download", package], cwd=workdir, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            err = getattr(exc, "stderr", b"") or b""
            raise InputError(f"`apt-get download {package}` failed ({err.decode(errors='replace').strip() or exc}); "
                             f"download the .deb by hand and pass its folder with --deb-dir, "
                             f"or drop {package} from --sources") from exc
        debs = sorted(workdir.glob(f"{package}_*.deb"))
    root = workdir / package
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
    return root


def _mate(workdir: Path, deb_dir: Path | None) -> list[tuple[str, Path]]:
    root = _deb("mate-backgrounds", workdir, deb_dir)
    files = sorted((root / "usr/share/backgrounds/mate/nature").glob("*.jpg"))
    return [(f.stem, f) for f in files]


def _plasma(workdir: Path, deb_dir: Path | None) -> list[tuple[str, Path]]:
    root = _deb("plasma-workspace-wallpapers", workdir, deb_dir)
    out = []
    for name in PLASMA_PHOTOS:
        images = list((root / "usr/share/wallpapers" / name / "contents/images").glob("*.*"))
        if not images:
            log.warning("plasma wallpaper %s not found in this package version; skipped", name)
            continue
        best = max(images, key=lambda p: p.stat().st_size)  # the largest rendition has the most detail
        out.append((name, best))
    return out


def _skimage(workdir: Path) -> list[tuple[str, Path]]:
    import skimage.data

    out = []
    for name in SKIMAGE_PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception as exc:  # noqa: BLE001 - some samples need a download; skip those
            log.warning("scikit-image sample %s unavailable (%s); skipped", name, exc)
            continue
        path = workdir / f"{name}.png"
        Image.fromarray(np.asarray(arr)).save(path)
        out.append((name, path))
    return out


def fetch_photos(out: str | Path, *, sources: tuple[str, ...] = ("mate", "plasma", "skimage"), heldout: int = 4,
                 seed: int = 0, deb_dir: str | Path | None = None) -> dict:
    """Collect photos from ``sources`` into ``out/train`` and ``out/heldout``; returns the manifest."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise InputError(f"unknown photo source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    out = Path(out)
    deb_dir = Path(deb_dir) if deb_dir else None
    found: list[tuple[str, str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="redegrade-photos-") as tmp:
        work = Path(tmp)
        for src in sources:
            items = (_mate(work, deb_dir) if src == "mate" else _plasma(work, deb_dir) if src == "plasma"
                     else _skimage(work))
            log.info("%s: %d photos", src, len(items))
            found += [(src, name, path) for name, path in items]
        if heldout >= len(found):
            raise InputError(f"--heldout {heldout} leaves no training photos (found {len(found)})")
        order = torch.randperm(len(found), generator=torch.Generator().manual_seed(seed)).tolist()
        held = set(order[:heldout])
        manifest = {"seed": seed, "sources": list(sources), "images": []}
        for i, (src, name, path) in enumerate(found):
            split = "heldout" if i in held else "train"
            dest = out / split / f"{src}_{name}{path.suffix.lower()}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as t:
                shutil.copyfile(path, t)  # copied byte for byte: no re-encoding of the JPEGs
            manifest["images"].append({"file": str(dest.relative_to(out)), "source": src, "name": name,
                                       "split": split})
    with atomic_path(out / "manifest.json") as t:
        t.write_text(json.dumps(manifest, indent=1))
    n_held = sum(1 for m in manifest["images"] if m["split"] == "heldout")
    log.info("wrote %d training and %d held-out photos to %s", len(found) - n_held, n_held, out)
    return manifest


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to fill: OUT/train, OUT/heldout, OUT/manifest.json.")
@click.option("--sources", default=",".join(SOURCES), help="Comma-separated: mate, plasma, skimage.")
@click.option("--heldout", type=click.IntRange(0), default=4, help="Photos kept out of training for evaluation.")
@click.option("--seed", type=int, default=0, help="Seed of the held-out choice.")
@click.option("--deb-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder that already holds the .deb files (skips apt-get download).")
@user_errors
def main(out: Path, sources: str, heldout: int, seed: int, deb_dir: Path | None) -> None:
    """Fetch offline natural photos (Debian wallpaper packages, scikit-image) for training."""
    setup_logging()
    fetch_photos(out, sources=tuple(s.strip() for s in sources.split(",") if s.strip()), heldout=heldout,
                 seed=seed, deb_dir=deb_dir)


if __name__ == "__main__":
    main()
