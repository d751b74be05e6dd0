"""Cost of one backend step with each forward model, as ratios to the naive (identity) step.

    python benchmarks/step_cost.py --resolutions 256,1024 --steps 3 --device cuda     # the issue's table
    python benchmarks/step_cost.py --resolutions 256 --steps 3 --redegrader ffhqx      # CPU, shipped model

Each mode runs in its own child process (one run of this script starts them one after the other), so
peak memory is not hidden by what an earlier mode left in the allocator. The prior is a random-weight
StyleGAN2 of NVIDIA's config-f size at ``--resolution`` unless ``--generator`` names a checkpoint; the
blind forward model is a random-weight paper-size universal degradation model unless ``--redegrader``
is given; the objective is LPIPS-VGG with a random backbone (same cost as the real one, no download).
Step time is the median interval between consecutive progress callbacks of one phase (wall time, and
the process's CPU time, which a busy shared machine distorts less); peak memory is
the CUDA allocator's peak, or on CPU the peak resident set size sampled during the steps, both above
what was in use when the restore began.

The blind child also breaks the Redegrader's share down, outside the loop on the step's own image
size: the encoders (run once per restore, in ``reset``), the synthesis forward and its backward to x
(median of 3 each, after a warm-up), with the Redegrader's ``--checkpoint``/``--precision`` settings.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time

import click
import torch

from redegrade import settings
from redegrade.cli import setup_logging, user_errors
from redegrade.errors import ConfigError

log = logging.getLogger("step_cost")
MODES = ("naive", "blind", "nonblind")


def random_stylegan2(resolution: int, seed: int = 0) -> torch.nn.Module:
    """A random-weight StyleGAN2 generator with config-f sizes (512-d W, 8 mapping layers, ≤ 512 channels)."""
    from redegrade_stylegan2.networks import Generator

    with torch.random.fork_rng(devices=[]):  # module initialisers use the global RNG: keep it private
        torch.manual_seed(seed)
        G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
                      mapping_kwargs=dict(num_layers=8),
                      synthesis_kwargs=dict(channel_base=32768, channel_max=512, conv_clamp=256, num_fp16_res=0))
    return G.eval().requires_grad_(False)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Sample the resident set size every few milliseconds while a block runs (CPU peak memory)."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def __enter__(self):
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def measure(mode: str, args: dict) -> dict:
    """Run one restore in ``mode`` and return per-phase median step times and peak memory."""
    from redegrade import backend as backends
    from redegrade.degradations import ffhqx
    from redegrade.forward import Identity, KnownDegradation
    from redegrade.image import resize
    from redegrade.objective import build

    device = settings.resolve_device(args["device"])
    cls = backends.load(args["backend"])
    cfg = cls.Config()
    names = {f.name for f in dataclasses.fields(cfg)}
    updates = {"steps": args["steps"], "seed": 0, "device": str(device)}
    if args["generator"]:
        updates["generator" if "generator" in names else "diffusion_model"] = args["generator"]
    for item in args["options"]:
        key, _, value = item.partition("=")
        if key not in names:
            raise ConfigError(f"--option {item!r}: unknown setting; known: {', '.join(sorted(names))}")
        like = getattr(cfg, key)
        updates[key] = type(like)(value) if isinstance(like, (int, float)) and not isinstance(like, bool) else value
    cfg = dataclasses.replace(cfg, **updates)
    prior = None
    if not args["generator"]:
        if args["backend"] != "rsg":
            raise ConfigError("without --generator only the rsg backend has a random prior here")
        prior = random_stylegan2(args["resolution"])
    backend = cls(cfg, prior=prior, objective=build(args["loss"], pretrained_backbone=False))
    R = int(backend.resolution)
    g = settings.generator(0)
    gt = torch.rand(1, 3, R, R, generator=g) * 2 - 1
    task = ffhqx.task(args["task"], args["level"], resolution=R, seed=0)
    y = task.apply(gt)
    if mode == "blind":
        from redegrade.redegrader import Redegrader

        opts = {"checkpoint": args["checkpoint"], "precision": args["precision"]}
        if args["redegrader"]:
            fm = Redegrader.from_pretrained(args["redegrader"], device=device, **opts)
        else:
            from redegrade.model import ModelConfig, UniversalDegradationModel

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                fm = Redegrader(UniversalDegradationModel(ModelConfig.preset("paper")), **opts)
    elif mode == "naive":
        fm = Identity()
    else:
        fm = KnownDegradation(task, resolution=R)
    y_obs = y if mode == "nonblind" else resize(y, R)
    fm.reset(y_obs, generator=settings.generator(0))

    stamps: list[tuple[str, float, float]] = []

    def progress(info) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        # wall time, and CPU time of the whole process (all threads): the latter is what a busy
        # shared machine distorts least
        stamps.append((info.phase, time.perf_counter(), time.process_time()))

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        backend.restore(y_obs, fm, progress=progress)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with _PeakRSS() as watch:
            base = watch.peak
            backend.restore(y_obs, fm, progress=progress)
        peak = watch.peak - base
    phases: dict[str, list[float]] = {}
    cpu: list[float] = []
    for (p0, t0, c0), (p1, t1, c1) in zip(stamps, stamps[1:]):
        if p0 == p1:  # the first step of a phase also pays for setting the phase up
            phases.setdefault(p1, []).append(t1 - t0)
            cpu.append(c1 - c0)
    if not phases:
        raise ConfigError("need at least 2 steps per phase to time a step (use --steps 2 or more)")
    per_phase = {p: statistics.median(v) for p, v in phases.items()}
    out = {"mode": mode, "resolution": R, "device": str(device), "threads": torch.get_num_threads(),
           "seconds_per_step": per_phase, "all_steps": statistics.median([t for v in phases.values() for t in v]),
           "cpu_seconds_per_step": statistics.median(cpu), "peak_bytes": int(peak)}
    if mode == "blind":
        out["breakdown"] = breakdown(fm, y_obs, device)
    return out


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def breakdown(fm, y: torch.Tensor, device: torch.device, reps: int = 3) -> dict[str, float]:
    """Seconds of the Redegrader's parts: encoders (``reset``), synthesis forward, its backward to x."""
    y = y.to(device)
    encoder = _seconds(lambda: fm.reset(y, generator=settings.generator(0)), device)
    for v in fm.variables():  # as in the default RSG schedule: e and n fixed, the gradient goes to x
        v.requires_grad_(False)
    x = y.detach().clone().requires_grad_(True)
    fwd, bwd = [], []
    for _ in range(reps + 1):
        x.grad = None
        box = {}
        fwd.append(_seconds(lambda: box.update(out=fm(x)), device))
        bwd.append(_seconds(lambda: box["out"].sum().backward(), device))
    return {"encoder": encoder, "forward": statistics.median(fwd[1:]), "backward": statistics.median(bwd[1:])}


def report(results: dict[str, dict]) -> str:
    """A table of per-step time and peak memory per mode, with ratios to naive."""
    naive = results["naive"]
    lines = [f"resolution {naive['resolution']}², device {naive['device']}, {naive['threads']} threads",
             "| mode | phase | s/step | × naive | peak MiB | × naive |", "|---|---|---:|---:|---:|---:|"]
    for mode, r in results.items():
        rows = list(r["seconds_per_step"].items()) + [("all", r["all_steps"])]
        if naive.get("cpu_seconds_per_step") and r.get("cpu_seconds_per_step"):
            rows.append(("CPU s (all)", r["cpu_seconds_per_step"]))
        for phase, sec in rows:
            ref = {"all": naive["all_steps"], "CPU s (all)": naive.get("cpu_seconds_per_step")}.get(
                phase, naive["seconds_per_step"].get(phase))
            ratio = f"{sec / ref:.2f}" if ref else ""
            mem = r["peak_bytes"] / 2 ** 20 if phase == "all" else None
            mem_ratio = f"{r['peak_bytes'] / naive['peak_bytes']:.2f}" if phase == "all" and naive["peak_bytes"] > 0 else ""
            lines.append(f"| {mode} | {phase} | {sec:.3f} | {ratio} | {'' if mem is None else f'{mem:.0f}'} | {mem_ratio} |")
    blind = results.get("blind")
    if blind and "breakdown" in blind:
        b, over = blind["breakdown"], blind["all_steps"] - naive["all_steps"]
        lines.append(f"redegrader share: encoders {b['encoder']:.3f} s once per restore; synthesis forward "
                     f"{b['forward']:.3f} s + backward {b['backward']:.3f} s = {b['forward'] + b['backward']:.3f} s "
                     f"per step (blind − naive: {over:.3f} s; the rest is the larger graph's bookkeeping or noise)")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--resolutions", default="256,1024", show_default=True,
              help="Comma-separated sides of the random-weight generator's output, each measured in turn.")
@click.option("--steps", default=3, show_default=True, help="Steps per phase (≥ 2; the first of each phase is not timed).")
@click.option("--backend", default="rsg", show_default=True)
@click.option("--generator", help="A real prior checkpoint instead of the random one (its resolution wins).")
@click.option("--redegrader", help="A trained universal degradation model (e.g. ffhqx, the shipped one) instead of "
                                   "the random paper-size one.")
@click.option("--checkpoint", default="auto", show_default=True, help="Redegrader checkpoint: auto, on or off.")
@click.option("--precision", default="fp32", show_default=True, help="Redegrader precision: fp32, bf16 or fp16.")
@click.option("--task", default="UNAP", show_default=True, help="FFHQ-X task of the non-blind forward model.")
@click.option("--level", default="M", show_default=True)
@click.option("--loss", default="lpips", show_default=True, help="lpips (random backbone: same cost), l1 or l2.")
@click.option("--modes", default="naive,blind,nonblind", show_default=True)
@click.option("--option", "-o", "options", multiple=True, help="Backend setting KEY=VALUE, e.g. phases=W++.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the measurements here.")
@click.option("--child", hidden=True)
@click.option("--verbose", "-v", is_flag=True)
@user_errors
def main(resolutions, steps, backend, generator, redegrader, checkpoint, precision, task, level, loss, modes, options,
         device, json_out, child, verbose):
    """Per-step wall time and peak memory of one backend step in each mode, as ratios to naive."""
    setup_logging(verbose)
    args = dict(steps=steps, backend=backend, generator=generator, redegrader=redegrader, checkpoint=checkpoint,
                precision=precision, task=task, level=level, loss=loss, options=list(options), device=device)
    if child:
        mode, _, res = child.partition("@")
        click.echo(json.dumps(measure(mode, {**args, "resolution": int(res)})))
        return
    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    if "naive" not in wanted or any(m not in MODES for m in wanted):
        raise ConfigError(f"--modes {modes!r}: choose from {', '.join(MODES)}, naive included (the reference)")
    everything: dict[int, dict[str, dict]] = {}
    for res in (int(r) for r in resolutions.split(",")):
        results = everything[res] = {}
        for mode in ["naive"] + [m for m in wanted if m != "naive"]:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{mode}@{res}", *sys.argv[1:]]
            log.info("measuring %s at %d² …", mode, res)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                why = (f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0
                       else f"exit code {proc.returncode}")
                raise ConfigError(f"measuring {mode} at {res}² failed ({why}):\n{proc.stderr[-2000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        click.echo(report(results), nl=True)
        click.echo("")
    if len(everything) > 1 and all("blind" in r for r in everything.values()):
        ratios = ", ".join(f"{res}²: {r['blind']['all_steps'] / r['naive']['all_steps']:.2f} wall, "
                           f"{r['blind']['cpu_seconds_per_step'] / r['naive']['cpu_seconds_per_step']:.2f} CPU time"
                           for res, r in everything.items())
        click.echo(f"blind/naive step time — {ratios}")
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in everything.items()}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
