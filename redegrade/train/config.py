"""What a training run is: :class:`TrainConfig` (everything besides the data)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from redegrade.model.config import check_keys

MIXES = ("wqi", "ffhqx")


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
    lambda_dist: float = 0.0       # residual distributions of y and ŷ on noisy samples (residual_distribution_loss; not in CDD)
    lambda_noise: float = 0.0      # noise head's level vs the sample's known noise (noise_level_loss; not in CDD)
    lambda_teacher: float = 0.0    # L1 to the --init model's ŷ on samples without noise (see Trainer.losses; not in CDD)
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
