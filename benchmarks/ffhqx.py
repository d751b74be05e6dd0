"""FFHQ-X benchmark: blind, naive and non-blind restoration on one backend, side by side.

Reproduces the protocol of RSG (``benchmark/``) and of the seed paper (Table 4; Table 1 of its
report): each ground-truth face is degraded by an FFHQ-X task (U, N, A, P at levels XS…XL, and the 11
combinations at level M), restored by one backend with three forward models —

* **blind**: the universal degradation model (:class:`redegrade.redegrader.Redegrader`),
* **naive**: :class:`redegrade.forward.Identity` (pretend the observation is clean),
* **non-blind**: :class:`redegrade.forward.KnownDegradation` (the true differentiable degradation),

and scored for accuracy (LPIPS-VGG, PSNR vs. ground truth), fidelity (LPIPS of the *truly* re-degraded
restoration vs. the observation) and realism (pFID over random 128² crops). See
:mod:`redegrade.metrics`.

Results survive: one JSON line per (image, task, level, mode), fsynced when it finishes; a rerun
skips every key already present. ``torchrun --nproc_per_node=K benchmarks/ffhqx.py …`` shards the
images across ranks (rank r takes images i with i % K == r and appends to ``results.rank{r}.jsonl``);
whoever finishes last merges every result file into ``table.md`` / ``table.csv`` and ``grids/``.

    python benchmarks/ffhqx.py --tiny --out /tmp/ffhqx-smoke          # CPU smoke run, minutes
    python benchmarks/ffhqx.py --data ffhq/ --limit 100 --redegrader model/ --out runs/ffhqx

This file is the command line and the run; the parts are in ``benchmarks/ffhqx_parts/`` (protocol, data,
results, engine, report), and each restore goes through :mod:`redegrade.session`, as the restore CLI's.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the parts sit beside this script, however it is started or loaded
    sys.path.insert(0, str(HERE))

from ffhqx_parts.data import list_images, tiny_images  # noqa: E402
from ffhqx_parts.engine import Runner, open_bench_session, tiny_prior  # noqa: E402
from ffhqx_parts.protocol import (MIN_IMAGE_SIDE, TINY_IMAGES, TINY_RESOLUTION, Bench, Shard,  # noqa: E402
                                  parse_modes, row_key, work_units)
from ffhqx_parts.report import aggregate  # noqa: E402
from ffhqx_parts.results import ResultStore, check_run_file  # noqa: E402
from redegrade import settings  # noqa: E402
from redegrade.cli import SEED, OneLineCommand, setup_logging, user_errors  # noqa: E402
from redegrade.errors import ConfigError, InputError  # noqa: E402
from redegrade.files import check_output  # noqa: E402

log = logging.getLogger("ffhqx")
__all__ = ["Bench", "Runner", "aggregate", "check_bench", "main", "run"]


# ------------------------------------------------------------------------------------------------ run

def run(bench: Bench, shard: Shard | None = None, *, aggregate_only: bool = False) -> int:
    """Run (or resume) this rank's share; the last rank to finish writes the tables. Returns new rows."""
    shard = shard or Shard.from_env()
    out = bench.out
    out.mkdir(parents=True, exist_ok=True)
    modes = parse_modes(bench.modes)
    if bench.tiny and bench.data is None:
        bench = dataclasses.replace(bench, data=tiny_images(out / "tiny_data", bench.limit or TINY_IMAGES,
                                                            TINY_RESOLUTION, bench.seed))
    if bench.data is None:
        raise ConfigError("--data DIR is required (or --tiny for the smoke run)")
    if aggregate_only:
        aggregate(bench)
        return 0
    check_run_file(out, bench)
    images = [im for im in list_images(bench.data, bench.limit) if shard.take(im.index)]
    units = work_units(bench.tasks, bench.levels)
    marker = out / f".done.rank{shard.rank}"
    marker.unlink(missing_ok=True)
    store = ResultStore(out, shard.rank)
    store.repair()
    done = store.keys()
    todo = sum(1 for im in images for t, lv in units for m in modes if row_key(im.id, t, lv, m) not in done)
    log.info("rank %d/%d: %d images, %d (task, level) pairs, modes %s; %d rows to do, %d already done",
             shard.rank, shard.world, len(images), len(units), ",".join(modes), todo,
             len(images) * len(units) * len(modes) - todo)
    budget = [bench.max_rows if bench.max_rows is not None else -1]
    if todo:
        runner = Runner(bench, shard, modes)
        from tqdm import tqdm

        with tqdm(total=todo, desc=f"ffhqx rank {shard.rank}", disable=None, position=shard.rank) as bar:
            for im in images:
                runner.run_image(im, units, done, store, budget, bar)
                if budget[0] == 0:
                    log.warning("stopping after --max-rows %d new rows (resume by running again)", bench.max_rows)
                    return bench.max_rows
    marker.write_text(f"{shard.world}\n", encoding="utf-8")
    finished = [out / f".done.rank{r}" for r in range(shard.world)]
    if all(p.exists() for p in finished):  # whoever finishes last merges everyone's rows
        aggregate(bench)
    else:
        log.info("rank %d done; the last rank to finish writes the table", shard.rank)
    return todo



def check_bench(bench: Bench, *, aggregate_only: bool = False) -> None:
    """Every check that needs no model, before anything is written: flags, the results folder (writable,
    not inside the data), the data (every image's header), the backend's settings, the device and the
    checkpoints named. A bad flag or input is then one line and no work, never a failure hours in."""
    parse_modes(bench.modes)
    work_units(bench.tasks, bench.levels)
    check_output(bench.out, folder=True)
    if bench.data is not None:
        data, out = bench.data.resolve(), bench.out.resolve()
        if out == data or data in out.parents:
            raise InputError(f"--out {bench.out} is inside --data {bench.data}: results would be read back as "
                             "ground truth; choose a results folder outside the data")
        if not aggregate_only:
            from redegrade.image import probe_image

            for item in list_images(bench.data, bench.limit):
                probe_image(item.path, min_size=MIN_IMAGE_SIDE, verify=True)
    elif not bench.tiny and not aggregate_only:
        raise ConfigError("--data DIR is required (or --tiny for the smoke run)")
    if aggregate_only:
        if not any(bench.out.glob("results.rank*.jsonl")):
            raise InputError(f"--aggregate-only: {bench.out} holds no results to aggregate")
        return
    from redegrade.weights import check_checkpoint

    device = settings.resolve_device(bench.device)
    open_bench_session(bench, device, check=not bench.tiny)  # the settings; the backend can run here
    if bench.tiny:
        tiny_prior(bench.backend)  # only rsg takes the tiny prior
    if bench.redegrader is not None and "blind" in parse_modes(bench.modes):
        check_checkpoint(bench.redegrader, "--redegrader")


@click.command(cls=OneLineCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Folder of aligned face images (e.g. FFHQ 1024²).")
@click.option("--limit", type=click.IntRange(min=1), help="Use the first N images (sorted by path).")
@click.option("--backend", default="rsg", show_default=True, help="Registered backend (redegrade.backends entry point).")
@click.option("--tasks", default="all", show_default=True, help="U,N,A,P, combinations such as UNAP, or single/composed/all.")
@click.option("--levels", default="XS,S,M,L,XL", show_default=True, help="Levels of the single tasks (combinations use M).")
@click.option("--modes", default="blind,naive,nonblind", show_default=True, help="Forward models to compare.")
@click.option("--steps", type=click.IntRange(min=0), help="Backend steps (RSG: per phase). Default: the backend's.")
@click.option("--loss", default="lpips", show_default=True, help="Objective: lpips, l1 or l2 (as in restore).")
@click.option("--generator", help="The backend's own --generator (rsg: StyleGAN2 registry name or file); other "
              "priors by --option, e.g. --option diffusion_model=… for dps.")
@click.option("--redegrader", help="Universal degradation model for the blind mode: folder, file, registry name "
              "or shipped name (default: ffhqx, trained on FFHQ-X's degradations).")
@click.option("--option", "-o", "options", multiple=True,
              help="Any field of the backend's Config, KEY=VALUE (repeatable; as restore's --set).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds every degradation, initialisation and crop.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (torchrun: cuda:LOCAL_RANK).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Results folder (resumable).")
@click.option("--tiny", is_flag=True, help="CPU smoke run: tiny generator and model, 4 generated 32² images, l1 loss.")
@click.option("--crop-size", type=click.IntRange(min=1), default=128, show_default=True, help="pFID crop side.")
@click.option("--crops", type=click.IntRange(min=1), default=1000, show_default=True, help="pFID crops per image.")
@click.option("--grid-images", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per level in each grid.")
@click.option("--max-rows", type=click.IntRange(min=1), hidden=True, help="Stop after N new rows (tests resume).")
@click.option("--aggregate-only", is_flag=True, help="Only merge existing results into the table and grids.")
@click.option("--verbose", "-v", is_flag=True)
@user_errors
def main(data, limit, backend, tasks, levels, modes, steps, loss, generator, redegrader, options, seed, device,
         out, tiny, crop_size, crops, grid_images, max_rows, aggregate_only, verbose):
    """Run the FFHQ-X benchmark: blind, naive and non-blind restoration side by side.

    Every error, usage errors included, is one line on stderr (exit code 2); flags, data and the results
    folder are checked before anything is written or any model loads.
    """
    setup_logging(verbose)
    if tiny:
        # smoke-run defaults; any flag given explicitly still wins
        steps = 2 if steps is None else steps
        loss = "l1" if loss == "lpips" else loss
        crop_size = min(crop_size, 16)
        crops = min(crops, 16)
    bench = Bench(out=out, data=data, limit=limit, backend=backend, tasks=tasks, levels=levels, modes=modes,
                  steps=steps, loss=loss, generator=generator, redegrader=redegrader, options=tuple(options),
                  seed=seed, device=device, tiny=tiny, crop_size=crop_size, crops=crops, grid_images=grid_images,
                  max_rows=max_rows)
    check_bench(bench, aggregate_only=aggregate_only)
    run(bench, aggregate_only=aggregate_only)


if __name__ == "__main__":
    sys.exit(main())
