"""``python -m redegrade.restore``: restore one image with any installed backend.

Flow: cheap checks first, without torch (the image decodes, every output can be written and is not an
input, checkpoints exist) → the restore session (:mod:`redegrade.session`: settings → the backend's
Config, device) → only then the models → optional FFHQ alignment → bring the image to the prior's
resolution → restore under the mode's forward model (blind: the Redegrader; naive: identity; the backend
resets it on the image) with a progress bar per phase → write the outputs, all at once and only after
success. A backend's own flags (``--generator``, ``--zeta``, …) are its declared options, added by
:class:`RestoreCommand` when the command line names them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from redegrade import settings
from redegrade.cli import FINITE, SEED, OneLineCommand, setup_logging, user_errors
from redegrade.errors import InputError, RedegradeError
from redegrade.files import atomic_path, check_output

if TYPE_CHECKING:
    import torch

    from redegrade import backend as registry

log = logging.getLogger("redegrade.restore")

DECLARED = "redegrade.backend_options"
"""``ctx.meta`` key: the chosen backend's declared options by Config field (see :class:`RestoreCommand`)."""
CLICK_PARAMS = "redegrade.backend_params"
"""``ctx.meta`` key: those options as click options, added to the command's own."""
PREFIX = "backend__"
"""Parameter-name prefix of a backend's options, so they never clash with the core's."""
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
Backend options: each backend declares its own flags, listed by --backend NAME --help
(rsg: --generator NAME|PATH; dps: --diffusion-model NAME|PATH, --zeta, --early-exit/--no-early-exit).
Naming one loads that backend while the command line is read.

\b
rsg settings for --set: optimise (default none: e = E(y) and n stay fixed and V is skipped;
e_g,e_l,n moves them from W on), phases (V,W,W+,W++), v_lr 0.08, w_lr 0.08, wplus_lr 0.02,
wpp_lr 0.005, variables_lr 0.01 (Adam; scaled with the latent lr after W).

\b
Every user error is one line on stderr and exit code 2; nothing is written unless the run succeeds.
"""


# ------------------------------------------------------------------------------------------ settings
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
def _click_option(opt: registry.Option, backend: str) -> click.Option:
    """A backend's declared :class:`~redegrade.backend.Option` as a click option (unset = ``None``)."""
    name = PREFIX + opt.field
    help_text = f"[{backend}] {opt.help}".strip()
    if opt.type is bool:
        return click.Option([f"{opt.flag}/--no-{opt.flag.lstrip('-')}", name], default=None, help=help_text)
    kind = {float: FINITE, int: int, str: str}.get(opt.type, opt.type)
    return click.Option([opt.flag, name], type=kind, default=None, metavar=opt.metavar, help=help_text)


class RestoreCommand(OneLineCommand):
    """The restore command plus the options of the backend named by ``--backend``.

    The command line is scanned before click parses it: only when it holds a long option the core does
    not know (or asks for ``--help`` with ``--backend``) is the backend imported and its options added;
    a bare command line stays torch-free until its inputs are checked.
    """

    def _known(self) -> dict[str, bool]:
        """Core flags → whether they take a value."""
        known = {"-h": False, "--help": False}
        for param in self.params:
            if isinstance(param, click.Option):
                for flag in (*param.opts, *param.secondary_opts):
                    known[flag] = not (param.is_flag or param.count)
        return known

    def _scan(self, args: list[str]) -> tuple[str | None, list[str], bool]:
        """The ``--backend`` value (``None``: not given), the long options the core does not know and
        whether help was asked for."""
        known, name, unknown, wants_help = self._known(), None, [], False
        it = iter(args)
        for token in it:
            if token == "--":
                break
            flag, eq, value = token.partition("=")
            if flag in ("-h", "--help"):
                wants_help = True
            elif flag == "--backend":
                name = value if eq else next(it, None)
            elif flag in known:
                if known[flag] and not eq:
                    next(it, None)  # its value, whatever it looks like
            elif flag.startswith("--"):
                unknown.append(flag)
        return name, unknown, wants_help

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        name, unknown, wants_help = self._scan(args)
        if unknown or (wants_help and name):
            from redegrade import backend as registry

            name = name or next(p.default for p in self.params if p.name == "backend_name")
            try:
                cls = registry.load(name)
            except RedegradeError as exc:
                raise click.UsageError(str(exc), ctx) from None
            ctx.meta[DECLARED] = {opt.field: opt for opt in cls.options}
            options = [_click_option(opt, name) for opt in cls.options]
            flags = {f for o in options for f in (*o.opts, *o.secondary_opts)}
            for flag in unknown:
                if flag not in flags:
                    own = f" (its options: {', '.join(o.flag for o in cls.options)})" if cls.options else ""
                    raise click.UsageError(f"option {flag} does not apply to backend {name}{own}", ctx)
            ctx.meta[CLICK_PARAMS] = options
        return super().parse_args(ctx, args)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        n = len(self.params)
        return [*params[:n], *ctx.meta.get(CLICK_PARAMS, []), *params[n:]]


@click.command(cls=RestoreCommand, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"],
                                                                     "max_content_width": 100})
@click.argument("input_path", metavar="INPUT", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Restored image (default: INPUT's folder, <stem>_restored.png).")
@click.option("--backend", "backend_name", default="rsg", show_default=True, metavar="NAME",
              help="Installed backend (entry-point group redegrade.backends); see --list-backends.")
@click.option("--list-backends", is_flag=True, help="List installed backends with their source and status, then exit.")
@click.option("--mode", type=click.Choice(["blind", "naive"]), default="blind", show_default=True,
              help="blind: the Redegrader models the degradation, from its code e = E(input) (rsg keeps e and "
                   "n fixed unless --set optimise=e_g,e_l,n); "
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
         redegrader: str | None, precision: str, checkpoint: str, loss: str | None, steps: int | None, seed: int,
         device: str, save_all: bool, align: bool, assignments: tuple[str, ...], no_progress: bool, verbose: bool,
         **backend_options: Any) -> None:
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

    # 1. cheap checks, before torch is imported (unless a backend's own flag had its backend loaded to
    #    read the command line): the outputs can be written and none of them is an input (nor a checkpoint
    #    the backend's options name), the image decodes, the checkpoints named on the command line exist
    if mode == "naive" and redegrader is not None:
        raise InputError("--redegrader applies to --mode blind only")
    from redegrade.image import array_to_tensor, fit_to_resolution, probe_image, read_image
    from redegrade.weights import check_checkpoint

    own = {key[len(PREFIX):]: value for key, value in backend_options.items()}
    declared = click.get_current_context().meta.get(DECLARED, {})
    read = [own[f] for f, opt in declared.items() if opt.checkpoint and isinstance(own.get(f), str)]
    probe_image(input_path, min_size=MIN_SIDE)
    output = output or input_path.with_name(f"{input_path.stem}_restored.png")
    paths = _output_paths(output, save_all)
    inputs = [input_path, *(p for p in (redegrader, *read) if p and os.path.exists(p))]
    for dest in paths.values():
        check_output(dest, inputs=inputs)
    pixels = read_image(input_path, min_size=MIN_SIDE)
    if mode == "blind" and redegrader is not None:
        check_checkpoint(redegrader, "--redegrader")

    # 2. the session: the settings become the backend's Config, which checks it can run here; the
    #    objective is built now so that its missing weights are said before any model loads
    from redegrade.session import open_session

    session = open_session(backend_name, dict(own, steps=steps, loss=loss, seed=seed, device=device), assignments)
    if hasattr(session.config, "loss"):
        session.backend.objective()

    # 3. the models
    if mode == "blind":
        session.load_blind(redegrader, checkpoint=checkpoint, precision=precision)
    y = array_to_tensor(pixels)
    del pixels

    # 4. the observation at the prior's resolution
    resolution = session.resolution
    if align:
        from redegrade.align import align_face

        y = align_face(y, resolution)
        log.info("aligned the face to %d×%d (FFHQ crop)", resolution, resolution)
    y = fit_to_resolution(y, resolution, name=str(input_path))

    # 5. restore (the backend resets the forward model on y first), then write everything at once
    bars = _Bars(enabled=not no_progress)
    try:
        result = session.restore(y, mode, progress=bars)
    finally:
        bars.close()
    write_outputs(paths, y, result)
    final = result.info.get("final_loss")
    log.info("wrote %s%s", ", ".join(str(p) for p in paths.values()),
             f" (final loss {final:.4f})" if final is not None else "")


if __name__ == "__main__":
    main(prog_name="python -m redegrade.restore")
