"""``python -m redegrade.train``: train the universal degradation model on a folder of photos."""
from __future__ import annotations

import logging
from pathlib import Path

import click
import torch

from redegrade.cli import setup_logging, user_errors
from redegrade.settings import resolve_device
from redegrade.train.config import MIXES, TrainConfig
from redegrade.train.loop import sampler_for, train
from redegrade.train.similarity import PERCEPTUAL

log = logging.getLogger("redegrade.train")
D = TrainConfig()


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of clean photos (jpg/png, searched recursively). Degraded copies are made on the fly "
                   "with the WQI mix. Get photos with `python -m redegrade.train.photos --out DIR`.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoint.pt (resumable), log.jsonl (one line per step), redegrader/ (inference).")
@click.option("--preset", type=click.Choice(["tiny", "small", "small-ffhqx", "paper"]), default=D.preset,
              help="Model size: tiny (tests), small (CPU), small-ffhqx (small with a 4:2:0 JPEG head), paper "
                   "(CDD sizes, for CUDA).")
@click.option("--steps", type=click.IntRange(1), default=D.steps, help="Total steps (a resumed run counts earlier ones).")
@click.option("--batch", type=click.IntRange(1), default=D.batch, help="Crops per step.")
@click.option("--crop", type=click.IntRange(16), default=D.crop, help="Crop side in pixels (multiple of 8; CDD WQI: 128).")
@click.option("--max-side", type=click.IntRange(32), default=D.max_side,
              help="Photos are downscaled once so their short side is at most this.")
@click.option("--lr", type=float, default=D.lr, help="Adam learning rate (encoders and synthesis).")
@click.option("--lr-aux", type=float, default=D.lr_aux, help="Adam learning rate of the entropy models' quantiles.")
@click.option("--adam-eps", type=float, default=D.adam_eps, help="Adam epsilon (CDD: 1e-3).")
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="Stop cleanly (checkpoint + export) after this much wall time, even before --steps.")
@click.option("--perceptual", type=click.Choice(PERCEPTUAL), default=D.perceptual,
              help="Similarity loss d(y, ŷ): stats (fixed random filter bank, DISTS-style local mean/std; "
                   "offline default), gram (same bank, Gram matrices), lpips (needs VGG16 ImageNet weights), "
                   "l1 (pixels; punishes a different noise random state).")
@click.option("--lambda-sim", type=float, default=D.lambda_sim, help="Weight of d(y, ŷ).")
@click.option("--lambda-grid", type=float, default=D.lambda_grid,
              help="Weight of the JPEG block-grid pattern loss (0 = off).")
@click.option("--lambda-quality", type=float, default=D.lambda_quality,
              help="Weight of the per-image noise/sharpness/blockiness match (QualityLoss; 0 = off).")
@click.option("--lambda-dist", type=float, default=D.lambda_dist,
              help="Weight of the 1-D Wasserstein distance between the values of y − x and ŷ − x, on the "
                   "images whose degradation adds noise (its randomness at its true strength; 0 = off).")
@click.option("--lambda-jpeg", type=float, default=D.lambda_jpeg,
              help="Weight of the JPEG head's step against each sample's known JPEG quality (0 = off).")
@click.option("--jpeg-steps-from-label/--no-jpeg-steps-from-label", default=D.jpeg_steps_from_label,
              help="The JPEG head's steps learn from --lambda-jpeg's label loss only; the image losses see them "
                   "as fixed (they otherwise push the steps up for noisy JPEGs).")
@click.option("--lambda-noise", type=float, default=D.lambda_noise,
              help="Weight of the noise head's level vs each sample's known Gaussian noise (0 = off).")
@click.option("--lambda-teacher", type=float, default=D.lambda_teacher,
              help="Pixel L1 between ŷ and the --init model's ŷ (same noise) on samples whose task adds no noise: "
                   "a fine-tune of the noise keeps the rest as --init rendered it.")
@click.option("--clean-prob", type=click.FloatRange(0, 1), default=D.clean_prob,
              help="Share of samples left undegraded, so a clean source maps to (nearly) the identity.")
@click.option("--lambda-clean", type=float, default=D.lambda_clean,
              help="Weight of the pixel L1 on undegraded samples (they hold no noise, so pixels are fair).")
@click.option("--jpeg-min", type=click.IntRange(1, 96), default=D.jpeg_min,
              help="Lowest JPEG quality of the WQI mix (CDD 30; lower shows heavier blocking).")
@click.option("--blur-max-sigma", type=click.FloatRange(0, min_open=True), default=D.blur_max_sigma,
              help="Largest Gaussian blur σ of the WQI mix, drawn uniformly below it (CDD 30; smaller "
                   "makes weak blur common).")
@click.option("--jpeg-prob", type=click.FloatRange(0, 1), default=D.jpeg_prob,
              help="Share of WQI samples that end with JPEG (CDD: 1); the rest end as 8-bit images.")
@click.option("--noise-prob", type=click.FloatRange(0, 1), default=D.noise_prob,
              help="WQI: probability of Gaussian noise (CDD 0.4; few of its samples end visibly noisy).")
@click.option("--noise-std", type=click.FloatRange(0, min_open=True), default=D.noise_std,
              help="WQI: mean of the exponentially distributed noise std, in [0,1] units (CDD 0.03).")
@click.option("--mix", type=click.Choice(MIXES), default=D.mix, show_default=True,
              help="Degradations: wqi (CDD's Wikimedia-quality mix) or ffhqx (RSG's 31 FFHQ-X tasks, each "
                   "equally likely, as CDD trained its model for GAN inversion).")
@click.option("--pairs/--no-pairs", default=D.pairs,
              help="Batch of photo pairs degraded alike, each synthesised from its partner's code (trains "
                   "transfer, keeps content out of the code); off: CDD's own-code reproduction.")
@click.option("--freeze-bn/--no-freeze-bn", default=D.freeze_bn,
              help="Re-estimate the encoders' BatchNorm statistics over 100 batches, then keep them fixed, so "
                   "training computes codes as inference does (for fine-tunes of a trained model).")
@click.option("--train-only", default=D.train_only,
              help="Comma-separated parameter-name prefixes to train, the rest frozen (e.g. "
                   "'extras.signatures,extras.jpeg_head' grafts the JPEG parts onto a trained model); default all. The "
                   "rest keeps what it computed: its entropy quantiles and (with --freeze-bn) BatchNorm "
                   "statistics stay as --init had them.")
@click.option("--init", "init", type=click.Path(exists=True, path_type=Path), default=None,
              help="Warm start a new run from this redegrader folder or checkpoint: weights whose names "
                   "match are copied, new input channels start at zero, new layers fresh.")
@click.option("--init-skip", default=D.init_skip,
              help="Comma-separated parameter-name prefixes that --init leaves at their fresh initialisation "
                   "(e.g. 'extras.noise_head' re-grows a noise head whose level had saturated at zero).")
@click.option("--lambda-color", type=float, default=D.lambda_color, help="Weight of the blurred-colour L1 (rgbn).")
@click.option("--lambda-diver", type=float, default=D.lambda_diver, help="Weight of the SSIM diversity loss (0 = off).")
@click.option("--lambda-contra", type=float, default=D.lambda_contra, help="Weight of the MoCo loss on e_g (0 = off).")
@click.option("--lambda-l", type=float, default=D.lambda_l, help="Rate weight λ_l (bits per e_l position).")
@click.option("--lambda-g", type=float, default=D.lambda_g, help="Rate weight λ_g (bits per e_g; ≈ λ_l/20).")
@click.option("--lambda-aux", type=float, default=D.lambda_aux, help="Weight of the entropy models' quantile loss.")
@click.option("--quant-warmup", type=click.IntRange(0), default=D.quant_warmup,
              help="First N steps use the codes unquantised (no U(±½) noise), so they grow a spread the "
                   "synthesis can use before the noise is switched on.")
@click.option("--gan/--no-gan", default=D.gan, help="Add a WGAN-GP critic on (x, ŷ) pairs (≈ doubles step time).")
@click.option("--lambda-gan", type=float, default=D.lambda_gan, help="Weight of the adversarial term.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=D.checkpoint_every,
              help="Write checkpoint.pt every N steps (and at the end).")
@click.option("--log-every", type=click.IntRange(1), default=D.log_every, help="Log running losses every N steps.")
@click.option("--resume/--no-resume", default=False, help="Continue from OUT/checkpoint.pt if it exists.")
@click.option("--seed", type=int, default=D.seed, help="Seeds every draw: crops, degradations, noise, init.")
@click.option("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N].")
@click.option("--threads", type=click.IntRange(0), default=0, help="torch CPU threads (0 = torch's default).")
@click.option("--progress/--no-progress", default=True, help="Show a tqdm progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@user_errors
def main(data: Path, out: Path, preset: str, steps: int, batch: int, crop: int, max_side: int, lr: float,
         lr_aux: float, adam_eps: float, max_minutes: float | None, perceptual: str, lambda_sim: float,
         lambda_grid: float, lambda_quality: float, lambda_dist: float, lambda_jpeg: float, jpeg_steps_from_label: bool, lambda_noise: float,
         lambda_teacher: float, clean_prob: float, lambda_clean: float, noise_prob: float, noise_std: float,
         jpeg_prob: float, jpeg_min: int, blur_max_sigma: float, mix: str, pairs: bool, freeze_bn: bool, train_only: str, init: Path | None, init_skip: str,
         lambda_color: float, lambda_diver: float,
         lambda_contra: float, lambda_l: float, lambda_g: float, lambda_aux: float, quant_warmup: int, gan: bool,
         lambda_gan: float,
         checkpoint_every: int, log_every: int, resume: bool, seed: int, device: str, threads: int,
         progress: bool, verbose: bool) -> None:
    """Train the universal degradation model (encoders e_g/e_l, entropy models, IDA-SFT synthesis).

    Every step takes BATCH random CROP×CROP crops of the photos in DATA, degrades them with the WQI
    mix (blur, motion blur, exposure, noise, JPEG), encodes the degraded crop and re-synthesises it
    from the clean crop. Losses (paper eq. 7): perceptual similarity, blurred-colour L1, SSIM diversity
    between two noise draws, MoCo contrastive loss on e_g, the rates of e_g and e_l, the entropy
    models' auxiliary loss, and optionally WGAN-GP. Load the result with
    ``Redegrader.from_pretrained("OUT/checkpoint.pt")`` or ``"OUT/redegrader"``.

    \b
    Example (CPU, small preset):
      python -m redegrade.train.photos --out photos
      python -m redegrade.train --data photos/train --out runs/small --steps 2000 --crop 64 --batch 8
    """
    setup_logging(verbose)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    config = TrainConfig(preset=preset, steps=steps, batch=batch, crop=crop, lr=lr, lr_aux=lr_aux, adam_eps=adam_eps,
                         perceptual=perceptual, lambda_sim=lambda_sim, lambda_grid=lambda_grid,
                         lambda_quality=lambda_quality, lambda_dist=lambda_dist, lambda_jpeg=lambda_jpeg,
                         jpeg_steps_from_label=jpeg_steps_from_label, lambda_noise=lambda_noise,
                         lambda_teacher=lambda_teacher,
                         clean_prob=clean_prob, lambda_clean=lambda_clean, noise_prob=noise_prob, noise_std=noise_std,
                         jpeg_prob=jpeg_prob, jpeg_min=jpeg_min, blur_max_sigma=blur_max_sigma,
                         mix=mix, pairs=pairs, freeze_bn=freeze_bn, train_only=train_only, init=str(init or ""),
                         init_skip=init_skip,
                         lambda_color=lambda_color,
                         lambda_diver=lambda_diver, lambda_contra=lambda_contra, lambda_l=lambda_l, lambda_g=lambda_g,
                         lambda_aux=lambda_aux, quant_warmup=quant_warmup, gan=gan, lambda_gan=lambda_gan, seed=seed,
                         checkpoint_every=checkpoint_every, log_every=log_every, max_side=max_side)
    sampler = sampler_for(data, config)
    trainer = train(sampler, config, out, resume=resume, device=dev, progress=progress,
                    max_minutes=max_minutes)
    log.info("done: %d steps; checkpoint %s, inference folder %s", trainer.step_count, out / "checkpoint.pt",
             out / "redegrader")


if __name__ == "__main__":
    main()
