"""The training run: :func:`train` drives a :class:`~redegrade.train.trainer.Trainer` over a sampler,
checkpointing into a folder (``checkpoint.pt``, atomic; ``log.jsonl``, one line a step) and exporting the
inference folder at the end; resuming continues where the checkpoint stopped.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from redegrade.degradations.wqi import WQIConfig
from redegrade.errors import CheckpointError, ConfigError
from redegrade.files import append_line
from redegrade.train.batchnorm import BN_BATCHES, freeze_bn, recalibrate_bn
from redegrade.train.config import MIXES, TrainConfig, split_prefixes
from redegrade.train.data import PairSampler
from redegrade.train.trainer import Trainer

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOG_FILE = "log.jsonl"


def sampler_for(data: str | Path, config: TrainConfig) -> PairSampler:
    """The training-pair sampler ``config`` describes, over the photos under ``data``."""
    if config.mix not in MIXES:
        raise ConfigError(f"unknown degradation mix {config.mix!r}; choose one of {', '.join(MIXES)}")
    degrade = None
    if config.mix == "ffhqx":
        from redegrade.degradations.ffhqx import FFHQXMix

        degrade = FFHQXMix()
    wqi = WQIConfig(jpeg_prob=config.jpeg_prob, jpeg_min=config.jpeg_min, noise_prob=config.noise_prob,
                    noise_mean_std=config.noise_std, blur_max_sigma=config.blur_max_sigma)
    return PairSampler.from_folder(data, crop=config.crop, batch=config.batch, max_side=config.max_side,
                                   seed=config.seed, clean_prob=config.clean_prob, pairs=config.pairs, wqi=wqi,
                                   degrade=degrade)


def build_model(preset: str) -> nn.Module:
    from redegrade.model import ModelConfig, UniversalDegradationModel

    return UniversalDegradationModel(ModelConfig.preset(preset))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read training checkpoint {path}: {exc}") from exc


def train(sampler: PairSampler, config: TrainConfig, out: str | Path, *, resume: bool = False,
          device: torch.device | str = "cpu", progress: bool = True, model: nn.Module | None = None,
          max_minutes: float | None = None) -> Trainer:
    """Train for ``config.steps`` steps (in total, counting resumed ones); checkpoint into ``out``.

    ``max_minutes`` stops early (cleanly: checkpoint + export) once that much wall time has passed,
    so a run can be fitted to a deadline without guessing the step rate.

    Writes ``out/checkpoint.pt`` every ``checkpoint_every`` steps and at the end, one JSON line per
    step in ``out/log.jsonl``, and finally the inference folder ``out/redegrader`` (config.json +
    model.safetensors).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    ckpt = out / CHECKPOINT
    state = None
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        saved = TrainConfig.from_dict(state["train"])
        if saved.preset != config.preset:
            raise ConfigError(f"{ckpt} was trained with --preset {saved.preset}, not {config.preset}")
    elif resume:
        log.info("--resume: no %s yet, starting from scratch", ckpt)
    if model is None:
        if state is not None:
            from redegrade.model import ModelConfig, UniversalDegradationModel

            model = UniversalDegradationModel(ModelConfig.from_dict(state["config"]))
        else:
            model = build_model(config.preset)
            if config.init:
                from redegrade.model.io import warm_start

                fresh = warm_start(model, config.init, skip=split_prefixes(config.init_skip))
                log.info("warm start from %s; fresh: %s", config.init, ", ".join(fresh) or "none")
    teacher = None
    if config.lambda_teacher:
        if not config.init:
            raise ConfigError("--lambda-teacher holds the model to its --init: give --init")
        from redegrade.model.io import warm_start

        # built from --init again (not copied from the model), so a resumed run has the same teacher
        teacher = build_model(config.preset)
        warm_start(teacher, config.init)
    trainer = Trainer(model, config, device, teacher=teacher)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d", ckpt, trainer.step_count)
    if config.freeze_bn:
        if state is None and config.train_only:
            # Re-estimated statistics (3-10 % off the init's) made a head-only graft's frozen encoders
            # give other codes: weak blur moved 0.2 of the way instead of 0.71.
            log.info("--freeze-bn with --train-only: the init's BatchNorm statistics are kept")
        elif state is None:
            n = recalibrate_bn(model, sampler, device=device)
            log.info("--freeze-bn: re-estimated %d BatchNorm layers over %d batches", n, BN_BATCHES)
        freeze_bn(model)
        freeze_bn(trainer.moco)  # MoCo's key encoder too, or keys and queries are normalised differently
    n_params = sum(p.numel() for p in model.parameters())
    log.info("training preset %s (%.2f M parameters) for %d steps, batch %d, crop %d, perceptual %s%s on %s",
             config.preset, n_params / 1e6, config.steps, config.batch, config.crop, config.perceptual,
             ", WGAN-GP" if config.gan else "", device)
    bar = tqdm(total=config.steps, initial=trainer.step_count, disable=not progress, unit="step", dynamic_ncols=True)
    running: dict[str, float] = {}
    deadline = time.monotonic() + 60 * max_minutes if max_minutes else None
    while trainer.step_count < config.steps:
        if deadline is not None and time.monotonic() > deadline:
            log.info("--max-minutes %.1f reached at step %d; stopping", max_minutes, trainer.step_count)
            trainer.save(ckpt)
            break
        rec = trainer.step(sampler)
        append_line(out / LOG_FILE, json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                                                for k, v in rec.items()}))
        for k, v in rec.items():
            running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
        bar.update(1)
        bar.set_postfix({k: f"{running[k]:.4g}" for k in ("total", "sim", "diver", "contra") if k in running})
        s = trainer.step_count
        if s % config.log_every == 0:
            log.info("step %d: %s", s, " ".join(f"{k}={running[k]:.4g}" for k in running
                                                 if k not in ("step", "data_sec")))
        if s % config.checkpoint_every == 0 or s == config.steps:
            trainer.save(ckpt)
    bar.close()
    if not ckpt.exists():
        trainer.save(ckpt)
    export(trainer.model, out / "redegrader")
    return trainer


def export(model: nn.Module, folder: str | Path) -> Path:
    """Write the inference folder (config.json + model.safetensors) via the Redegrader API."""
    from redegrade.redegrader import Redegrader

    # Redegrader freezes the model it wraps: hand it a copy so the trainer can go on
    Redegrader.from_model(copy.deepcopy(model)).save_pretrained(folder)
    return Path(folder)


def steps_per_second(trainer: Trainer, sampler: PairSampler, n: int = 3) -> float:
    """Measure training speed over ``n`` steps after one warm-up step (changes the trainer's state)."""
    trainer.step(sampler)
    t0 = time.perf_counter()
    for _ in range(n):
        trainer.step(sampler)
    return n / (time.perf_counter() - t0)


__all__ = ["train", "sampler_for", "build_model", "load_checkpoint", "export", "steps_per_second", "CHECKPOINT",
           "LOG_FILE"]
