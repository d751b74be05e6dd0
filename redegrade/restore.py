"""``python -m redegrade.restore``: restore one image with any installed backend.

Flow: cheap checks first, without torch (the image decodes, every output can be written and is not an
input, checkpoints exist) → options that need the backend's Config (settings, device) → only then the
models → optional FFHQ alignment → bring the image to the prior's resolution → forward model (blind: the
Redegrader; naive: identity) → ``reset`` on the image → ``backend.restore`` with a progress bar per
phase → write the outputs, all at once and only after success.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path

import math
import os
from typing import TYPE_CHECKING

import click

from redegrade import settings
from redegrade.cli import FINITE, SEED, OneLineCommand, setup_logging, user_errors
from redegrade.errors import ConfigError, InputError, RedegradeError
from redegrade.files import atomic_path, check_output

if TYPE_CHECKING:
    import torch

    from redegrade import backend as registry

log = logging.getLogger("redegrade.restore")

#: Backend-specific options → the Config field they set; they apply only where that field exists.
SPECIFIC = {"generator": "--generator", "diffusion_model": "--diffusion-model", "zeta": "--zeta",
            "early_exit": "--early-exit"}
#: Common options that still need a matching Config field (every backend has seed and device).
COMMON = {"steps": "--steps", "loss": "--loss", "seed": "--seed", "device": "--device"}
#: The shipped model trained on FFHQ-X's degradations (the WQI one, trained on photo degradations, is
#: transfer's default): on in-range targets it is the one whose re-degradation the true image wins.
DEFAULT_REDEGRADER = "ffhqx"
MIN_SIDE = 16  # the multiscale objectives stop at 16 px

EPILOG = """\b
Examples:
  python -m redegrade.restore face.png                      # blind RSG → face_restored.png
  python -m redegrade.restore face.png --mode naive --steps 50 -o naive.png
  python -m redegrade.restore photo.jpg --align --save-all  # crop the face like FFHQ first
  python -m redegrade.restore face.png --backend dps --zeta 0.5
  python -m redegrade.restore face.png --set optimise=e_g,e_l,n   # the seed paper's V→W→W+→W++
  python -m redegrade.restore --list-backends

\b
rsg settings for --set: optimise (default none: e = E(y) and n stay fixed and V is skipped;
e_g,e_l,n moves them from W on), phases (V,W,W+,W++), v_lr 0.08, w_lr 0.08, wplus_lr 0.02,
wpp_lr 0.005, variables_lr 0.01 (Adam; scaled with the latent lr after W).

\b
Every user error is one line on stderr and exit code 2; nothing is written unless the run succeeds.
"""


# ------------------------------------------------------------------------------------------ settings
def _convert(text: str, tp: typing.Any, key: str) -> typing.Any:
    """Typed value of ``--set key=text`` for a dataclass field annotated ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        for arg in (a for a in args if a is not type(None)):
            with contextlib.suppress(ConfigError):
                return _convert(text, arg, key)
        raise ConfigError(f"--set {key}={text}: expected {tp}")
    if tp is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {key}={text}: expected true or false")
    if tp in (int, float, str, Path):
        try:
            value = tp(text)
        except ValueError:
            raise ConfigError(f"--set {key}={text}: expected {tp.__name__}") from None
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"--set {key}={text}: expected a finite number")
        return value
    raise ConfigError(f"--set {key}: a field of type {tp} cannot be set from the command line")


def make_config(cls: type[registry.Backend], name: str, options: dict[str, typing.Any],
                assignments: tuple[str, ...]) -> typing.Any:
    """The backend's Config with ``options`` (Config field → value, ``None`` = not given) and then
    every ``KEY=VALUE`` of ``--set`` applied; an option whose field the Config lacks is an error."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    try:
        hints = typing.get_type_hints(cls.Config)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the raw ones
        hints = {k: f.type for k, f in fields.items()}
    changes = {}
    for key, value in options.items():
        if value is None:
            continue
        if key not in fields:
            flag = SPECIFIC.get(key) or COMMON.get(key) or key
            raise ConfigError(f"option {flag} does not apply to backend {name}")
        changes[key] = value
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in fields:
            raise ConfigError(f"--set {key}: backend {name} has no such setting; "
                              f"its settings are {', '.join(fields)}")
        changes[key] = _convert(text, hints.get(key, str), key)
    try:
        return dataclasses.replace(cls.Config(), **changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid settings for backend {name}: {exc}") from exc


def backend_lines() -> list[str]:
    """One line per installed backend: name, target, distribution and whether it can run here."""
    from redegrade import backend as registry

    lines = []
    for entry in registry.available():
        source = f"{entry.distribution or '?'} {entry.version or ''}".strip()
        try:
            cls = registry.load(entry.name)
            cls().check(settings.resolve_device("auto"))
            status = "ok"
        except RedegradeError as exc:
            status = f"unavailable: {exc}"
        lines.append(f"{entry.name:<10} {entry.target:<28} ({source})  {status}")
    return lines or ["no backends installed"]


# ------------------------------------------------------------------------------------------ outputs
def _output_paths(output: Path, save_all: bool) -> dict[str, Path]:
    from redegrade.image import output_format

    output_format(output)
    stem = output.with_suffix("")
    paths = {"restored": output}
    if save_all:
        paths.update(redegraded=Path(f"{stem}_redegraded.png"), grid=Path(f"{stem}_grid.png"),
                     state=Path(f"{stem}_state.pt"))
    return paths


def _grid(*images: torch.Tensor) -> torch.Tensor:
    """Side by side at the first image's size (area/bicubic resize where sizes differ)."""
    import torch

    from redegrade.image import resize

    size = tuple(images[0].shape[-2:])
    return torch.cat([resize(x.float().cpu(), size) for x in images], dim=-1)


def write_outputs(paths: dict[str, Path], y: torch.Tensor, result: registry.Restoration) -> None:
    """Write every output to a temp file first; rename them only when all were written."""
    import torch

    from redegrade.image import check_finite, output_format, tensor_to_pil

    check_finite(result.image, "the restored image",
                 "lower the step sizes (--zeta, --set w_lr=…) or the number of steps")

    images = {"restored": result.image, "redegraded": result.redegraded,
              "grid": _grid(y, result.image, result.redegraded)}
    try:
        with contextlib.ExitStack() as stack:
            for key, dest in paths.items():
                tmp = stack.enter_context(atomic_path(dest))
                if key == "state":
                    torch.save({k: v.detach().cpu().contiguous().clone() for k, v in result.state.items()}, tmp)
                else:
                    tensor_to_pil(images[key]).save(tmp, format=output_format(dest))
    except OSError as exc:
        raise InputError(f"cannot write outputs: {exc}") from exc


# ------------------------------------------------------------------------------------------ progress
class _Bars:
    """One tqdm bar per phase, fed by the backend's :class:`~redegrade.backend.StepInfo` callback."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.phase = enabled, None, None

    def __call__(self, info: registry.StepInfo) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if info.phase != self.phase:
            self.close()
            self.phase = info.phase
            self.bar = tqdm(total=info.total, desc=f"{info.phase:>4}", unit="step", leave=True, file=sys.stderr)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{info.loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------------------------------ the command
@click.command(cls=OneLineCommand, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                                     "max_content_width": 100})
@click.argument("input_path", metavar="INPUT", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Restored image (default: INPUT's folder, <stem>_restored.png).")
@click.option("--backend", "backend_name", default="rsg", show_default=True, metavar="NAME",
              help="Installed backend (entry-point group redegrade.backends); see --list-backends.")
@click.option("--list-backends", is_flag=True, help="List installed backends with their source and status, then exit.")
@click.option("--mode", type=click.Choice(["blind", "naive"]), default="blind", show_default=True,
              help="blind: the Redegrader models the degradation (e_g, e_l, n are optimised); "
                   "naive: identity forward model (pretend the input is clean).")
@click.option("--redegrader", metavar="NAME|PATH", default=None,
              help="Redegrader folder, checkpoint (ours, or a CDD trainer checkpoint such as model_latest.pt) or "
                   "name: ffhqx (default; trained on FFHQ-X's degradations), wqi (photo degradations) or a "
                   "registry name such as cdd.ffhq. Blind mode only.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Redegrader synthesis precision (autocast; bf16/fp16 save memory and time on CUDA, "
                   "ŷ changes by ~1%). Blind mode only.")
@click.option("--checkpoint", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Recompute the Redegrader's blocks in the backward instead of storing them (auto: at ≥ 512², "
                   "where the paper-size model would otherwise need tens of GB). Blind mode only.")
@click.option("--generator", metavar="NAME|PATH", default=None,
              help="[rsg] StyleGAN2 generator: registry name, NVIDIA .pkl or .safetensors export "
                   "(default: stylegan2.ffhq1024, downloaded once).")
@click.option("--diffusion-model", metavar="NAME|PATH", default=None, help="[dps] Diffusion model checkpoint.")
@click.option("--zeta", type=FINITE, default=None, help="[dps] Guidance step size ζ.")
@click.option("--early-exit/--no-early-exit", default=None,
              help="[dps] Stop once the objective has stopped improving over a window (reports the NFE used).")
@click.option("--loss", type=click.Choice(["lpips", "l1", "l2"]), default=None,
              help="Objective: multiscale LPIPS-VGG + 0.1·L1 (default; needs torchvision's VGG16 weights: "
                   "offline, put vgg16-397923af.pth into $TORCH_HOME/hub/checkpoints/) or weight-free multiscale "
                   "l1 / l2.")
@click.option("--steps", type=click.IntRange(min=0), default=None, metavar="N",
              help="Steps per phase (rsg: V, W, W+, W++ each; default 150) or sampler steps (dps).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds every random draw (noise maps n, ...).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]|mps",
              help="auto picks CUDA when present; others must be available here.")
@click.option("--save-all", is_flag=True,
              help="Also write <stem>_redegraded.png, <stem>_grid.png (input | restored | redegraded) and "
                   "<stem>_state.pt (final latent and forward-model variables).")
@click.option("--align", is_flag=True,
              help="Detect the face (dlib HOG + 68 landmarks, offline) and crop it like FFHQ before restoring.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Set any other field of the backend's Config (repeatable; typed from the field), "
                   "e.g. --set phases=W,W+,W++ --set w_lr=0.05.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@user_errors
def main(input_path: Path | None, output: Path | None, backend_name: str, list_backends: bool, mode: str,
         redegrader: str | None, precision: str, checkpoint: str, generator: str | None,
         diffusion_model: str | None, zeta: float | None,
         early_exit: bool | None, loss: str | None, steps: int | None, seed: int, device: str, save_all: bool,
         align: bool, assignments: tuple[str, ...], no_progress: bool, verbose: bool) -> None:
    """Restore a degraded face image INPUT by inverting a generative prior through a forward model.

    Blind mode explains the degradation with the universal degradation model (the Redegrader) and
    optimises its codes e_g, e_l and noise n together with the prior's latent; naive mode assumes the
    input is clean. Inputs of any size are centre-cropped to a square and resized to the prior's
    resolution, with a notice.
    """
    setup_logging(verbose)
    if list_backends:
        click.echo("\n".join(backend_lines()))
        return
    if input_path is None:
        raise InputError("missing INPUT image (see --help)")

    # 1. cheap checks, before torch is even imported: the outputs can be written and none of them is an
    #    input, the image decodes, the checkpoints named on the command line exist
    if mode == "naive" and redegrader is not None:
        raise InputError("--redegrader applies to --mode blind only")
    from redegrade.image import array_to_tensor, probe_image, read_image
    from redegrade.weights import check_checkpoint

    probe_image(input_path, min_size=MIN_SIDE)
    output = output or input_path.with_name(f"{input_path.stem}_restored.png")
    paths = _output_paths(output, save_all)
    inputs = [input_path, *(p for p in (redegrader, generator, diffusion_model) if p and os.path.exists(p))]
    for dest in paths.values():
        check_output(dest, inputs=inputs)
    pixels = read_image(input_path, min_size=MIN_SIDE)
    if mode == "blind" and redegrader is not None:
        check_checkpoint(redegrader, "--redegrader")

    # 2. options that need torch or the backend's Config; still no model loaded
    from redegrade import backend as registry

    cls = registry.load(backend_name)
    options = dict(generator=generator, diffusion_model=diffusion_model, zeta=zeta, early_exit=early_exit,
                   steps=steps, loss=loss, seed=seed, device=device)
    config = make_config(cls, backend_name, options, assignments)
    if not SEED.min <= getattr(config, "seed", 0) <= SEED.max:
        raise ConfigError(f"seed {config.seed} is out of range ({SEED.min}…{SEED.max})")
    dev = settings.resolve_device(getattr(config, "device", device))
    cls(config).check(dev)

    # 3. the models
    objective_name = getattr(config, "loss", None) or loss
    objective = None
    if objective_name is not None:
        from redegrade.objective import build

        objective = build(objective_name)
    backend = cls(config, objective=objective)
    from redegrade.forward import Identity
    from redegrade.image import fit_to_resolution

    if mode == "blind":
        from redegrade.redegrader import Redegrader

        fm = Redegrader.from_pretrained(redegrader or DEFAULT_REDEGRADER, checkpoint=checkpoint, precision=precision)
    else:
        fm = Identity()
    y = array_to_tensor(pixels)
    del pixels

    # 4. the observation at the prior's resolution
    resolution = backend.resolution
    if align:
        from redegrade.align import align_face

        y = align_face(y, resolution)
        log.info("aligned the face to %d×%d (FFHQ crop)", resolution, resolution)
    y = fit_to_resolution(y, resolution, name=str(input_path))

    # 5. the forward model, initialised from the observation
    fm.to(dev)
    fm.reset(y.to(dev), generator=settings.generator(seed))

    # 6. restore, then write everything at once
    bars = _Bars(enabled=not no_progress)
    try:
        result = backend.restore(y, fm, progress=bars)
    finally:
        bars.close()
    write_outputs(paths, y, result)
    final = result.info.get("final_loss")
    log.info("wrote %s%s", ", ".join(str(p) for p in paths.values()),
             f" (final loss {final:.4f})" if final is not None else "")


if __name__ == "__main__":
    main(prog_name="python -m redegrade.restore")
