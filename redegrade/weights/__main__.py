"""``python -m redegrade.weights``: list, fetch, verify and convert checkpoints."""
from __future__ import annotations

from pathlib import Path

import click

from redegrade.cli import OneLineGroup, setup_logging, user_errors
from redegrade.errors import CheckpointError
from redegrade.files import check_output
from redegrade.weights import REGISTRY, cache_path, get, resolve, verify


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]},
             help="Manage redegrade's checkpoints. The cache is $REDEGRADE_HOME/weights "
                  "(default ~/.cache/redegrade/weights); REDEGRADE_OFFLINE=1 forbids downloads. "
                  "Every error is one line on stderr with exit code 2, and nothing is written.")
def main() -> None:
    setup_logging()


@main.command("list", help="List known checkpoints, whether each is cached, and its source.")
def list_() -> None:
    for c in sorted(REGISTRY.values(), key=lambda c: c.name):
        state = "cached" if cache_path(c).exists() else "missing"
        size = f"{c.size / 2**20:.0f} MiB" if c.size else "size ?"
        click.echo(f"{c.name:22} {state:8} {size:>9}  {c.licence}\n{'':22} {c.url}")


@main.command(help="Download NAME into the cache (with progress, atomically, verified).")
@click.argument("name")
@user_errors
def fetch(name: str) -> None:
    click.echo(resolve(get(name).name))


@main.command(help="Print where NAME is (or would be) cached.")
@click.argument("name")
@user_errors
def path(name: str) -> None:
    click.echo(cache_path(get(name)))


@main.command("verify", help="Check a cached NAME against its recorded sha256/size.")
@click.argument("name")
@user_errors
def verify_(name: str) -> None:
    ckpt = get(name)
    p = cache_path(ckpt)
    if not p.exists():
        raise CheckpointError(f"{name} is not cached at {p}")
    verify(ckpt, p)
    click.echo(f"{name}: ok ({p})")


@main.command(help="Convert a foreign checkpoint into redegrade's safe format. IN is an NVIDIA StyleGAN2 "
                   ".pkl (→ safetensors file OUT) or a guided-diffusion ADM .pt state dict such as DPS's "
                   "ffhq_10m.pt (→ diffusers UNet2DModel folder OUT). Nothing in IN is executed, and OUT may "
                   "never be IN.")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "stylegan2", "adm"]), default="auto",
              show_default=True, help="Input format; auto decides by the file's content.")
@user_errors
def convert(src: Path, dst: Path, fmt: str) -> None:
    if src.is_dir():
        raise CheckpointError(f"cannot convert {src}: it is a folder, not a checkpoint file")
    if not src.is_file():
        raise CheckpointError(f"cannot convert {src}: no such file")
    if fmt == "auto":
        fmt = "stylegan2" if src.suffix == ".pkl" else "adm"
    # before any work: OUT is not IN (also through links), and can be written
    check_output(dst, inputs=[src], folder=fmt == "adm")
    if fmt == "adm" and dst.is_dir() and any(dst.iterdir()):
        raise CheckpointError(f"output folder {dst} exists and is not empty; choose a new folder")
    if fmt == "stylegan2":
        from redegrade_stylegan2 import convert_pickle
        convert_pickle(src, dst)
    else:
        from redegrade_adm import convert_checkpoint
        convert_checkpoint(src, dst)
    click.echo(f"wrote {dst}")


if __name__ == "__main__":
    main()
