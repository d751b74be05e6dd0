"""One training step of the universal degradation model (tech-facts §1.9–§1.10, paper 000 eq. 7).

Per step::

    x, y, y_pos ← sampler.sample(step)                      (pure function of seed and step)
    e = encode(y);  ê, bits = quantize(e, "noise");  with pairs, ê ← ê[partner] (transfer)
    ŷ₁, ŷ₂ = synthesize(x, ê, n₁), synthesize(x, ê, n₂)     (two noise draws)
    L = λ_sim·d(y, ŷ₁) + λ_grid·grid(y, ŷ₁) + λ_q·quality(y, ŷ₁) + λ_color·rgbn(y, ŷ₁) + λ_clean·L1(y, ŷ₁)[clean]
        + λ_div·divSSIM(ŷ₁, ŷ₂) + λ_contra·MoCo(e_g, y_pos) + λ_g·bits_g + λ_l·bits_l/position + λ_aux·aux
        + λ_gan·(−D(x, ŷ₁))
    Adam step; MoCo momentum update + enqueue; optional WGAN-GP critic step on detached ŷ₁

A :class:`Trainer`'s state (config, model, step, optimiser, critic and MoCo) is plain tensors and dicts,
saved atomically and loadable with ``torch.load(weights_only=True)``; resuming reproduces an
uninterrupted run exactly on the same device and thread count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from redegrade.errors import CheckpointError, ConfigError
from redegrade.files import atomic_path
from redegrade.train import gan
from redegrade.train import losses as L
from redegrade.train.config import TrainConfig, split_prefixes
from redegrade.train.data import PairSampler
from redegrade.train.moco import MoCo
from redegrade.train.similarity import perceptual


@dataclass
class Trainer:
    """Model, optimisers, MoCo and critic for one run; :meth:`step` does one training step."""

    model: nn.Module
    config: TrainConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    teacher: nn.Module | None = None
    """The frozen model ``lambda_teacher`` holds ŷ to (the warm start's weights; see :meth:`losses`)."""

    def __post_init__(self) -> None:
        c = self.config
        self.model.to(self.device).train()
        if c.lambda_teacher and self.teacher is None:
            raise ConfigError("--lambda-teacher needs a teacher: the --init model")
        if self.teacher is not None:
            self.teacher.to(self.device).eval().requires_grad_(False)
        self.perceptual = perceptual(c.perceptual, pretrained_backbone=c.pretrained_backbone, seed=c.seed
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
        self.critic = gan.Critic().to(self.device) if c.gan else None
        self.optim_critic = (torch.optim.Adam(self.critic.parameters(), lr=c.lr_critic, betas=(0.5, 0.9))
                             if self.critic is not None else None)
        self.step_count = 0

    def _dim_g(self) -> int:
        cfg = getattr(self.model, "config", None)
        return int(getattr(cfg, "dim_g", 256))

    # ----------------------------------------------------------------- one step
    def losses(self, x: torch.Tensor, y: torch.Tensor, y_pos: torch.Tensor, g: torch.Generator,
               partner: torch.Tensor | None = None, clean: torch.Tensor | None = None,
               jpeg_quality: torch.Tensor | None = None, noise_std: torch.Tensor | None = None,
               noisy: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Weighted total, the unweighted terms, ŷ₁ and the MoCo keys (None when λ_contra = 0).

        ``partner`` (pairs of samples degraded alike) makes each sample use its partner's code; ``clean``
        marks samples whose target is undegraded, which also get a pixel L1 (per batch sample, so its
        weight does not depend on how many clean samples a batch happens to hold); ``jpeg_quality``
        (0 = none) supervises a JPEG head's step, ``noise_std`` (0 = none) a noise head's level;
        ``noisy`` marks the samples whose y is random given x, the only ones the residual distribution
        term sees (all of them when None).
        """
        c, m = self.config, self.model
        code = m.encode(y)
        # An untrained encoder's codes (std ~0.15) are smaller than the U(±½) quantisation noise, so
        # the synthesis learns to shut them out (its fused map sits behind a ReLU) and never recovers;
        # a warm-up without noise lets the codes grow a usable spread first.
        mode = "none" if self.step_count < c.quant_warmup else "noise"
        code_hat, rate = m.quantize(code, mode, generator=g)
        if partner is not None:
            code_hat = code_hat.codes_of(partner)  # the loss compares to this y, so its own lost pixels
        # The image losses pushed the JPEG steps to 1.5-2x libjpeg's for noise JPEG'd afterwards, even at
        # --lambda-jpeg 10, so the head rounded the noise away; the steps have a label: learn from it alone.
        fixed = c.jpeg_steps_from_label
        noise = m.sample_noise(x, generator=g)
        y_hat, heads = m.synthesize_with_heads(x, code_hat, noise, fixed_jpeg_steps=fixed)
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
            # Only where y given x is random: for a deterministic degradation the pixel terms already
            # aim at the one right ŷ, and matching value histograms there only pulls the model off it.
            terms["dist"] = L.residual_distribution_loss(x, y, y_hat, noisy)
        if "jpeg_multipliers" in heads and jpeg_quality is not None and c.lambda_jpeg:
            steps = heads["jpeg_multipliers"]
            terms["jpeg"] = L.jpeg_step_loss(steps, jpeg_quality.to(steps.device))
        if "noise_std" in heads and noise_std is not None and c.lambda_noise:
            terms["noise"] = L.noise_level_loss(heads["noise_std"], noise_std)
        if self.teacher is not None and c.lambda_teacher:
            terms["teacher"] = self._teacher_loss(x, y, y_hat, noise, partner, noisy, code.factor)
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
            terms["gan"] = gan.generator_gan_loss(self.critic, x, y_hat)
        weights = {"sim": c.lambda_sim, "grid": c.lambda_grid, "quality": c.lambda_quality, "dist": c.lambda_dist,
                   "jpeg": c.lambda_jpeg,
                   "noise": c.lambda_noise, "teacher": c.lambda_teacher,
                   "color": c.lambda_color, "clean": c.lambda_clean,
                   "rate_g": c.lambda_g, "rate_l": c.lambda_l,
                   "aux": c.lambda_aux, "diver": c.lambda_diver, "contra": c.lambda_contra, "gan": c.lambda_gan}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, terms, y_hat, keys

    def _teacher_loss(self, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, noise: list[torch.Tensor],
                      partner: torch.Tensor | None, noisy: torch.Tensor | None,
                      factor: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel L1 between ŷ and what the teacher renders from its own rounded code of y and the same
        noise, per sample, averaged over the batch with the noisy samples (``noisy``) counted as 0, and
        those the student measured as upsampled (``factor`` > 1) too when the teacher cannot measure it:
        held there, a student that renders the resize exactly would be pulled back to a teacher that
        paints it.

        A fine-tune meant to change how noise is rendered moves the other degradations' renders too (more
        steps on the FFHQ-X mix darken U observations); held to the warm start's renders where y has no
        noise, the rest of the model keeps what it did.
        """
        t = self.teacher
        with torch.no_grad():
            code, _ = t.quantize(t.encode(y), "round", rate=False)
            if partner is not None:
                code = code.codes_of(partner)
            y_old = t.synthesize(x, code, noise)
        per_sample = (y_hat - y_old).abs().mean(dim=(1, 2, 3))
        weight = torch.ones_like(per_sample) if noisy is None else (~noisy.to(per_sample.device)).to(per_sample)
        if factor is not None and code.factor is None:
            weight = weight * (factor.to(weight.device) == 1).to(weight)
        return (per_sample * weight).mean()

    def step(self, sampler: PairSampler) -> dict[str, float]:
        """One generator step (+ critic step with ``gan``); returns the logged numbers."""
        t0 = time.perf_counter()
        batch = sampler.sample(self.step_count)
        # the model's own draws (quantisation noise, noise maps, GP mixing) get a stream per step too
        g = torch.Generator().manual_seed((self.config.seed * 7_919 + self.step_count + 1) % (2 ** 63))
        x, y, y_pos = (t.to(self.device) for t in (batch.x, batch.y, batch.y_pos))
        t_data = time.perf_counter() - t0
        partner, clean, quality, std, noisy = (
            t.to(self.device) if t is not None else None
            for t in (batch.partner, batch.clean, batch.jpeg_quality, batch.noise_std, batch.noisy))
        total, terms, y_hat, keys = self.losses(x, y, y_pos, g, partner, clean, quality, std, noisy)
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
            d_loss = gan.critic_loss(self.critic, x, y, y_hat, gp_weight=self.config.gp_weight, generator=g)
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
