"""The training loop for the universal degradation model (tech-facts §1.9–§1.10, paper 000 eq. 7).

Per step::

    x, y, y_pos ← sampler.sample(step)                      (pure function of seed and step)
    e = encode(y);  ê, bits = quantize(e, "noise");  with pairs, ê ← ê[partner] (transfer)
    ŷ₁, ŷ₂ = synthesize(x, ê, n₁), synthesize(x, ê, n₂)     (two noise draws)
    L = λ_sim·d(y, ŷ₁) + λ_grid·grid(y, ŷ₁) + λ_q·quality(y, ŷ₁) + λ_color·rgbn(y, ŷ₁) + λ_clean·L1(y, ŷ₁)[clean]
        + λ_div·divSSIM(ŷ₁, ŷ₂) + λ_contra·MoCo(e_g, y_pos) + λ_g·bits_g + λ_l·bits_l/position + λ_aux·aux
        + λ_gan·(−D(x, ŷ₁))
    Adam step; MoCo momentum update + enqueue; optional WGAN-GP critic step on detached ŷ₁

Checkpoints (``checkpoint.pt``, atomic) hold config, model, step, optimiser, critic and MoCo state as
plain tensors/dicts, loadable with ``torch.load(weights_only=True)``; resuming reproduces an
uninterrupted run exactly on the same device and thread count.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from redegrade.degradations.wqi import WQIConfig
from redegrade.errors import CheckpointError, ConfigError
from redegrade.files import append_line, atomic_path
from redegrade.model.config import check_keys
from redegrade.model.network import DegradationCode
from redegrade.train import losses as L
from redegrade.train.data import PairSampler
from redegrade.train.moco import MoCo

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MIXES = ("wqi", "ffhqx")
LOG_FILE = "log.jsonl"


@dataclass
class TrainConfig:
    """Everything a run needs besides the data; saved in every checkpoint (``train`` key)."""

    preset: str = "small"
    steps: int = 1000
    batch: int = 8
    crop: int = 64
    lr: float = 1e-3
    lr_aux: float = 1e-3           # CDD lr_Cprs: the entropy models' quantiles
    adam_eps: float = 1e-8         # CDD used 1e-3, which all but freezes encoders whose gradients are ~1e-5
    perceptual: str = "stats"
    lambda_sim: float = 10.0       # CDD degrade_loss 10*dists
    lambda_grid: float = 1.0       # JPEG blocking pattern (GridLoss; not in CDD, whose DISTS sees blocks)
    lambda_quality: float = 1.0    # per-image noise/sharpness/blockiness match (QualityLoss; not in CDD)
    lambda_jpeg: float = 1.0       # JPEG head's step vs the sample's known quality (jpeg_step_loss; not in CDD)
    jpeg_steps_from_label: bool = False  # only jpeg_step_loss moves the JPEG head's steps (see Trainer)
    lambda_dist: float = 0.0       # residual distributions of y and ŷ (residual_distribution_loss; not in CDD)
    lambda_noise: float = 0.0      # noise head's level vs the sample's known noise (noise_level_loss; not in CDD)
    lambda_color: float = 10.0     # 10*rgbn
    lambda_diver: float = 1.0
    lambda_contra: float = 0.1     # CDD: 1e-4 (WQI) … 1.0 (FFHQ); short runs need a visible signal
    lambda_l: float = 0.001        # bits per e_l position (CDD: 0.05 film_grain … 1 WQI; short runs need less)
    lambda_g: float = 5e-5         # bits per e_g vector, λ_g = λ_l / 20
    lambda_aux: float = 1.0        # CDD lambda_cprs
    quant_warmup: int = 500        # steps without quantisation noise before "noise" mode (see Trainer.losses)
    gan: bool = False
    lambda_gan: float = 0.05       # CDD FFHQ lambda_gan_gen
    gp_weight: float = 10.0
    lr_critic: float = 1e-4
    queue: int = 120
    momentum: float = 0.999
    temperature: float = 0.07
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    max_side: int = 512
    clean_prob: float = 0.15       # share of undegraded samples (see PairSampler)
    lambda_clean: float = 50.0     # pixel L1 on those: with no noise in y, pixels are the right target
    noise_prob: float = 0.4        # WQI Gaussian-noise probability (CDD 0.4)
    noise_std: float = 0.03        # WQI mean noise std, [0,1] units (CDD 0.03)
    jpeg_prob: float = 0.7         # WQI mix: CDD always compresses; noise a test sees is often not JPEG'd
    jpeg_min: int = 30             # lowest WQI JPEG quality (CDD 30)
    blur_max_sigma: float = 30.0   # WQI Gaussian blur σ ~ U(0, this) (CDD 30: blur below σ 3 is rare)
    pairs: bool = True             # train on transfer: each sample synthesised from its partner's code
    mix: str = "wqi"               # degradations: "wqi" (CDD's WQI mix) or "ffhqx" (RSG's 31 tasks, CDD's FFHQ model)
    freeze_bn: bool = False        # encoders' BatchNorm: statistics re-estimated once, then fixed (see train)
    train_only: str = ""           # comma-separated parameter-name prefixes to train; "" = all
    init: str = ""                 # warm start: redegrader folder or checkpoint (see warm_start)
    init_skip: str = ""            # comma-separated parameter-name prefixes the warm start leaves fresh
    pretrained_backbone: bool = True  # for --perceptual lpips

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_keys(cls, d, "training config")
        return cls(**d)


def split_prefixes(text: str) -> tuple[str, ...]:
    """``"a.b, c"`` → ``("a.b", "c")`` (parameter-name prefixes from the command line)."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


@dataclass
class Trainer:
    """Model, optimisers, MoCo and critic for one run; :meth:`step` does one training step."""

    model: nn.Module
    config: TrainConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        c = self.config
        self.model.to(self.device).train()
        self.perceptual = L.perceptual(c.perceptual, pretrained_backbone=c.pretrained_backbone, seed=c.seed
                                       ).to(self.device)
        self.grid = L.GridLoss()
        self.quality = L.QualityLoss()
        self.moco = MoCo(self.model.hden, dim=self._dim_g(), queue_size=c.queue, momentum=c.momentum,
                         temperature=c.temperature, seed=c.seed).to(self.device)
        prefixes = split_prefixes(c.train_only)
        main, aux = [], []
        for n, p in self.model.named_parameters():
            if prefixes and not n.startswith(prefixes):
                # a graft: the rest of the model keeps exactly what it computed, the entropy quantiles
                # included (their medians are the codes' rounding grid)
                p.requires_grad_(False)
            elif n.endswith("quantiles"):
                aux.append(p)
            else:
                main.append(p)
        if not main:
            raise ConfigError(f"--train-only {c.train_only!r} matches no parameter of the model")
        groups = [{"params": main, "lr": c.lr}] + ([{"params": aux, "lr": c.lr_aux}] if aux else [])
        self.optim = torch.optim.Adam(groups, eps=c.adam_eps)
        self.critic = L.Critic().to(self.device) if c.gan else None
        self.optim_critic = (torch.optim.Adam(self.critic.parameters(), lr=c.lr_critic, betas=(0.5, 0.9))
                             if self.critic is not None else None)
        self.step_count = 0

    def _dim_g(self) -> int:
        cfg = getattr(self.model, "config", None)
        return int(getattr(cfg, "dim_g", 256))

    # ----------------------------------------------------------------- one step
    def losses(self, x: torch.Tensor, y: torch.Tensor, y_pos: torch.Tensor, g: torch.Generator,
               partner: torch.Tensor | None = None, clean: torch.Tensor | None = None,
               jpeg_quality: torch.Tensor | None = None, noise_std: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Weighted total, the unweighted terms, ŷ₁ and the MoCo keys (None when λ_contra = 0).

        ``partner`` (pairs of samples degraded alike) makes each sample use its partner's code; ``clean``
        marks samples whose target is undegraded, which also get a pixel L1 (per batch sample, so its
        weight does not depend on how many clean samples a batch happens to hold); ``jpeg_quality``
        (0 = none) supervises a JPEG head's step, ``noise_std`` (0 = none) a noise head's level.
        """
        c, m = self.config, self.model
        code = m.encode(y)
        # An untrained encoder's codes (std ~0.15) are smaller than the U(±½) quantisation noise, so
        # the synthesis learns to shut them out (its fused map sits behind a ReLU) and never recovers;
        # a warm-up without noise lets the codes grow a usable spread first.
        mode = "none" if self.step_count < c.quant_warmup else "noise"
        code_hat, rate = m.quantize(code, mode, generator=g)
        if partner is not None:
            code_hat = DegradationCode(code_hat.e_g[partner], code_hat.e_l[partner])
        # The image losses pushed the JPEG steps to 1.5-2x libjpeg's for noise JPEG'd afterwards, even at
        # --lambda-jpeg 10, so the head rounded the noise away; the steps have a label: learn from it alone.
        fixed = c.jpeg_steps_from_label
        y_hat, heads = m.synthesize_with_heads(x, code_hat, m.sample_noise(x, generator=g), fixed_jpeg_steps=fixed)
        positions = max(1, code.e_l.shape[-1] * code.e_l.shape[-2])
        terms: dict[str, torch.Tensor] = {
            "sim": self.perceptual(y, y_hat),
            "grid": self.grid(y, y_hat),
            "color": L.color_loss(y, y_hat),
            "rate_g": L.rate_per_position(rate["g"]),
            "rate_l": L.rate_per_position(rate["l"], positions),
            "aux": m.aux_loss(),
        }
        if c.lambda_quality:
            terms["quality"] = self.quality(y, y_hat)
        if c.lambda_dist:
            terms["dist"] = L.residual_distribution_loss(x, y, y_hat)
        if "jpeg_multipliers" in heads and jpeg_quality is not None and c.lambda_jpeg:
            steps = heads["jpeg_multipliers"]
            terms["jpeg"] = L.jpeg_step_loss(steps, jpeg_quality.to(steps.device))
        if "noise_std" in heads and noise_std is not None and c.lambda_noise:
            terms["noise"] = L.noise_level_loss(heads["noise_std"], noise_std)
        if clean is not None and c.lambda_clean:
            per_sample = (y - y_hat).abs().mean(dim=(1, 2, 3))
            terms["clean"] = (per_sample * clean.to(per_sample)).mean()
        if c.lambda_diver:
            y_hat2 = m.synthesize_with_heads(x, code_hat, m.sample_noise(x, generator=g), fixed_jpeg_steps=fixed)[0]
            terms["diver"] = L.diversity_loss(y_hat, y_hat2)
        keys = None
        if c.lambda_contra:
            terms["contra"], keys = self.moco.loss(code.e_g, y_pos)
        if self.critic is not None:
            terms["gan"] = L.generator_gan_loss(self.critic, x, y_hat)
        weights = {"sim": c.lambda_sim, "grid": c.lambda_grid, "quality": c.lambda_quality, "dist": c.lambda_dist,
                   "jpeg": c.lambda_jpeg,
                   "noise": c.lambda_noise,
                   "color": c.lambda_color, "clean": c.lambda_clean,
                   "rate_g": c.lambda_g, "rate_l": c.lambda_l,
                   "aux": c.lambda_aux, "diver": c.lambda_diver, "contra": c.lambda_contra, "gan": c.lambda_gan}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms, y_hat, keys

    def step(self, sampler: PairSampler) -> dict[str, float]:
        """One generator step (+ critic step with ``gan``); returns the logged numbers."""
        t0 = time.perf_counter()
        batch = sampler.sample(self.step_count)
        # the model's own draws (quantisation noise, noise maps, GP mixing) get a stream per step too
        g = torch.Generator().manual_seed((self.config.seed * 7_919 + self.step_count + 1) % (2 ** 63))
        x, y, y_pos = (t.to(self.device) for t in (batch.x, batch.y, batch.y_pos))
        t_data = time.perf_counter() - t0
        partner, clean, quality, std = (t.to(self.device) if t is not None else None
                                        for t in (batch.partner, batch.clean, batch.jpeg_quality, batch.noise_std))
        total, terms, y_hat, keys = self.losses(x, y, y_pos, g, partner, clean, quality, std)
        if not torch.isfinite(total):
            raise ConfigError(f"training diverged at step {self.step_count} (loss {float(total)}; terms "
                              f"{ {k: float(v) for k, v in terms.items()} }); lower --lr or a --lambda-*")
        self.optim.zero_grad(set_to_none=True)
        total.backward()
        self.optim.step()
        self.moco.update(self.model.hden)
        if keys is not None:
            self.moco.enqueue(keys)
        out = {k: float(v.detach()) for k, v in terms.items()}
        if self.critic is not None:
            d_loss = L.critic_loss(self.critic, x, y, y_hat, gp_weight=self.config.gp_weight, generator=g)
            self.optim_critic.zero_grad(set_to_none=True)
            d_loss.backward()
            self.optim_critic.step()
            out["critic"] = float(d_loss.detach())
        self.step_count += 1
        # the quantile (aux) loss only moves the entropy models' quantiles; leave it out of the headline
        main = float(total.detach()) - self.config.lambda_aux * out["aux"]
        out.update(total=main, step=self.step_count, sec=time.perf_counter() - t0, data_sec=t_data)
        return out

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "config": cfg.to_dict(),
            "model": self.model.state_dict(),
            "step": int(self.step_count),
            "optim": self.optim.state_dict(),
            "critic": ({"model": self.critic.state_dict(), "optim": self.optim_critic.state_dict()}
                       if self.critic is not None else {}),
            "moco": self.moco.state_dict(),
            "train": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        # the learning rates of this run win over the saved ones, so a resume can change --lr
        self.optim.param_groups[0]["lr"] = self.config.lr
        if len(self.optim.param_groups) > 1:
            self.optim.param_groups[1]["lr"] = self.config.lr_aux
        self.moco.load_state_dict(state["moco"])
        if self.critic is not None:
            if not state.get("critic"):
                raise CheckpointError("the checkpoint has no critic state but --gan was asked for; resume with --no-gan")
            self.critic.load_state_dict(state["critic"]["model"])
            self.optim_critic.load_state_dict(state["critic"]["optim"])
        self.step_count = int(state["step"])

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint atomically (a killed run never leaves a half-written file)."""
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return Path(path)


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
    trainer = Trainer(model, config, device)
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


BN_BATCHES = 100


def _batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def recalibrate_bn(model: nn.Module, sampler: PairSampler, *, batches: int = BN_BATCHES,
                   device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over ``batches`` batches.

    Why: with the default momentum (0.1) the saved statistics are those of the last ~10 batches, and
    which 80 crops those were decided whether a checkpoint transferred noise (median fraction 0.06 or
    0.49 for the same weights). Returns the number of layers.
    """
    norms = _batch_norms(model)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    with torch.no_grad():
        for i in range(batches):
            model.encode(sampler.sample(i).y.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


def freeze_bn(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics, no updates), so that training computes
    the codes exactly as inference will. Call after ``model.train()``."""
    for m in _batch_norms(model):
        m.eval()


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


__all__ = ["TrainConfig", "Trainer", "train", "sampler_for", "recalibrate_bn", "freeze_bn", "build_model", "load_checkpoint", "export",
           "steps_per_second", "CHECKPOINT", "LOG_FILE"]
