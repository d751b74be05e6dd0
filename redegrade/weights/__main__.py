"""``python -m redegrade.weights``: list, fetch, verify and convert checkpoints."""
from __future__ import annotations

from pathlib import Path

import click

from redegrade.cli import OneLineGroup, setup_logging, user_errors
from redegrade.errors import CheckpointError
from redegrade.files import check_output, refuse_inputs
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
        how = "  (download by hand)" if c.manual else ""
        click.echo(f"{c.name:22} {state:8} {size:>9}  {c.licence}\n{'':22} {c.url}{how}")


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


_FORMATS = ("stylegan2", "adm", "cdd")


@main.command(help="Convert a foreign checkpoint into redegrade's safe format: `convert [FORMAT] IN OUT`. "
                   "FORMAT is stylegan2 (an NVIDIA StyleGAN2 .pkl → safetensors file OUT), adm (a guided-diffusion "
                   "ADM .pt state dict such as DPS's ffhq_10m.pt → diffusers UNet2DModel folder OUT) or cdd (a CDD "
                   "trainer checkpoint such as model_latest.pt, or the registry name cdd.ffhq / cdd.wm → redegrader "
                   "folder OUT with config.json + model.safetensors); left out (or --format auto) it is decided by "
                   "the file's content. Nothing in IN is executed, and OUT may never be IN.")
@click.argument("args", metavar="[FORMAT] IN OUT", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["auto", *_FORMATS]), default="auto", show_default=True,
              help="Input format (same as the FORMAT argument).")
@click.option("--cdd-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="cdd: CDD's training config (YAML/JSON) or a JSON/YAML of options (compress_g, compress_l, "
                   "local_encoder): what the checkpoint itself does not say.")
@click.option("--compress-g/--no-compress-g", default=None,
              help="cdd: the synthesis was trained on e_g after its entropy model (netCprs.enabled; default: "
                   "the config's, else assumed true).")
@click.option("--compress-l/--no-compress-l", default=None,
              help="cdd: the same for e_l (netCprs_loc.enabled).")
@click.option("--local-encoder", type=click.Choice(["LPEL", "LPELOri"]), default=None,
              help="cdd: netE_loc's type (needed only when its kernel is not 3).")
@user_errors
def convert(args: tuple[str, ...], fmt: str, cdd_config: Path | None, compress_g: bool | None,
            compress_l: bool | None, local_encoder: str | None) -> None:
    if len(args) == 3:
        if args[0] not in _FORMATS:
            raise CheckpointError(f"unknown checkpoint format {args[0]!r}; choose one of {', '.join(_FORMATS)}")
        if fmt not in ("auto", args[0]):
            raise CheckpointError(f"the format is given twice and differs: {args[0]} and --format {fmt}")
        fmt, args = args[0], args[1:]
    if len(args) != 2:
        raise CheckpointError("convert takes [FORMAT] IN OUT (e.g. `convert cdd model_latest.pt cdd_model/`)")
    src, dst = Path(args[0]), Path(args[1])
    if fmt in ("auto", "cdd") and not src.exists() and args[0] in REGISTRY:
        src = resolve(args[0], download_missing=False)
    if src.is_dir():
        raise CheckpointError(f"cannot convert {src}: it is a folder, not a checkpoint file")
    if not src.is_file():
        raise CheckpointError(f"cannot convert {src}: no such file")
    refuse_inputs(dst, [src])  # OUT is not IN (also through links), before IN is read to tell its format
    if fmt == "auto":
        fmt = _sniff(src)
    check_output(dst, folder=fmt in ("adm", "cdd"))  # before any work: OUT can be written
    if fmt is None:
        raise CheckpointError(f"cannot tell the format of {src} from its content: it is neither a pickle nor a "
                              "torch checkpoint; name it: convert stylegan2|adm|cdd IN OUT")
    if fmt in ("adm", "cdd") and dst.is_dir() and any(dst.iterdir()):
        raise CheckpointError(f"output folder {dst} exists and is not empty; choose a new folder")
    if fmt == "stylegan2":
        from redegrade_stylegan2 import convert_pickle
        convert_pickle(src, dst)
    elif fmt == "adm":
        from redegrade_adm import convert_checkpoint
        convert_checkpoint(src, dst)
    else:
        from redegrade.model.cdd.options import CDDOptions
        from redegrade.model.cdd.checkpoint import convert as convert_cdd

        base = dict(REGISTRY[args[0]].options) if args[0] in REGISTRY else None
        flags = CDDOptions(compress_g=compress_g, compress_l=compress_l, local_encoder=local_encoder)
        options = CDDOptions.read(base).updated(CDDOptions.read(cdd_config)).updated(flags)
        convert_cdd(src, dst, options)
    click.echo(f"wrote {dst}")



def _sniff(src: Path) -> str | None:
    """The format of ``src`` from its content, whatever its name; None when it is no checkpoint at all.

    A torch checkpoint (zip archive, or a legacy pickle torch reads safely) is cdd when it has CDD's
    layout, else adm; any other pickle is stylegan2. A file torch refuses goes to the reader of its
    kind (zip: adm; pickle: stylegan2), which says in one line what it found (e.g. code it will not run).
    """
    with open(src, "rb") as f:
        head = f.read(1 << 20)  # an NVIDIA pickle names its reconstructor with its first network
    zipped, pickled = head[:4] == b"PK\x03\x04", head[:1] == b"\x80"
    if not (zipped or pickled):
        return None
    if pickled and b"torch_utils.persistence" in head:
        return "stylegan2"
    import torch

    from redegrade.model.cdd.checkpoint import is_cdd_checkpoint

    try:  # memory-mapped where it is a zip archive: only the layout is looked at
        obj = torch.load(src, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception:  # noqa: BLE001 - the chosen reader says in one line what is wrong with the file
        return "adm" if zipped else "stylegan2"
    return "cdd" if is_cdd_checkpoint(obj) else "adm"


if __name__ == "__main__":
    main()
