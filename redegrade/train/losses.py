"""Training losses for the universal degradation model (tech-facts §1.8–§1.9, paper 000 §3.4).

Every loss takes and compares images in ``[-1,1]`` ``[B,3,H,W]`` and returns a scalar.

* ``stats`` — the offline default perceptual loss: statistics of a FIXED, seeded random filter bank
  at several scales, compared DISTS-style (means and standard deviations over local windows). It
  compares distributions, not pixels, so a re-degraded image whose noise has a different random
  state is not punished (seed 001 §1.2); no pretrained backbone is needed.
* ``gram`` — the same filter bank compared through per-scale Gram matrices (global texture statistics).
* ``lpips`` — the ``lpips`` package's VGG LPIPS (needs torchvision's ImageNet VGG16 weights).
* ``l1`` — plain pixel L1 (punishes a different noise random state; kept as a baseline).
* :class:`GridLoss` — how edge strength varies across JPEG's 8×8 block grid (blocking), which the
  windowed statistics above average away.
* :class:`QualityLoss` — the three no-reference statistics transfer is judged by (noise level, sharpness,
  blockiness; :mod:`redegrade.quality`), matched per image on a log scale. They are first order in
  an added noise's amplitude where the similarity losses are second order (see the class).
* :func:`residual_distribution_loss` — the distribution of y − x against that of ŷ − x (1-D Wasserstein
  per image and channel), so the model renders a degradation's randomness at its true strength.
* :func:`color_loss` (``rgbn``), :func:`diversity_loss`, :func:`contrastive_loss`, the WGAN-GP pair
  :func:`critic_loss` / :func:`generator_gan_loss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.errors import ConfigError, ShapeError
from redegrade.pixels.scale import to_unit
from redegrade.pixels.stats import haar_hh
from redegrade.quality import blockiness, sharpness

PERCEPTUAL = ("stats", "gram", "lpips", "l1", "msl1")


def _gaussian_kernel1d(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    k = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, size: int, sigma: float, *, mode: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur per channel with ``mode`` padding (the kernel shrinks to fit small inputs).

    Reflect padding needs pad < side, so on inputs smaller than the kernel the kernel is cut to the
    largest odd size that fits; on the paper's 128 px crops the full 45 px kernel is used.
    """
    side = min(x.shape[-2:])
    size = min(size, 2 * (side - 1) - 1 if side > 1 else 1)
    size = max(1, size - (1 - size % 2))  # odd
    if size == 1:
        return x
    k = _gaussian_kernel1d(size, sigma, x.device, x.dtype)
    c = x.shape[1]
    pad = size // 2
    x = F.pad(x, (pad, pad, 0, 0), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    x = F.pad(x, (0, 0, pad, pad), mode=mode)
    return F.conv2d(x, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def color_loss(y: torch.Tensor, y_hat: torch.Tensor, *, kernel: int = 45, sigma: float = 50.0) -> torch.Tensor:
    """``rgbn`` colour loss: to [0,1], per-image min-max normalise, Gaussian blur (45, σ=50, reflect), L1."""
    _check_pair(y, y_hat)

    def norm(t: torch.Tensor) -> torch.Tensor:
        t = (t + 1) / 2
        flat = t.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
        return (t - lo) / (hi - lo).clamp_min(1e-6)

    return (gaussian_blur(norm(y), kernel, sigma) - gaussian_blur(norm(y_hat), kernel, sigma)).abs().mean()


def residual_distribution_loss(x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """1-D Wasserstein distance between the values of ``y − x`` and of ``ŷ − x``, per image and channel.

    Why: the pixel objectives compare y and ŷ pixel by pixel, and the best pixel-wise prediction of a
    noisy y is (nearly) noise-free: trained on them, the model rendered half of N's noise and few of its
    dropped pixels, and an inversion through a forward model that is too clean fits the rest of y's noise
    into x. Sorted residuals compare distributions, not positions, so a right noise with another random
    state costs nothing, and too little noise (or too few dropped pixels) costs in proportion.
    """
    _check_pair(y, y_hat)
    _check_pair(x, y)
    r = (y - x).flatten(2).sort(dim=-1).values
    r_hat = (y_hat - x).flatten(2).sort(dim=-1).values
    return (r - r_hat).abs().mean()


def diversity_loss(a: torch.Tensor, b: torch.Tensor, *, c2: float = 0.12, window: int = 11,
                   sigma: float = 1.5) -> torch.Tensor:
    """SSIM contrast-structure term between two samples: mean of ``(2|σ_ab| + C2) / (σ_aa + σ_bb + C2)``.

    Local statistics use a Gaussian window (11, σ=1.5) with reflect padding, on the ``[-1,1]`` images
    as given. It is 1 for identical samples and falls as the two random states decorrelate, so
    minimising it keeps the synthesis from ignoring its noise input.
    """
    _check_pair(a, b)
    blur = lambda t: gaussian_blur(t, window, sigma)  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    s_aa = (blur(a * a) - mu_a ** 2).clamp_min(0)
    s_bb = (blur(b * b) - mu_b ** 2).clamp_min(0)
    s_ab = blur(a * b) - mu_a * mu_b
    return ((2 * s_ab.abs() + c2) / (s_aa + s_bb + c2)).mean()


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """MoCo InfoNCE with cosine similarity: positive ``k`` per query, negatives from ``queue`` [K, D]."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ F.normalize(queue, dim=1).t()
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def rate_per_position(bits: torch.Tensor, positions: int = 1) -> torch.Tensor:
    """Mean bits per code position (e_g: one position per image; e_l: H/2·W/2 positions)."""
    return bits.float().mean() / positions


class FilterBank(nn.Module):
    """A fixed, seeded bank of zero-mean random filters applied at several scales.

    Features per scale: the image itself (mapped to [0,1], so colour and brightness count) and the
    rectified responses ``|w * x|`` of ``channels`` random ``kernel``×``kernel`` filters. Zero-mean
    filters respond to structure (edges, noise, blockiness) rather than brightness; rectification
    makes the local mean of a response its energy, which blur lowers and noise raises.
    """

    def __init__(self, channels: int = 24, kernel: int = 5, scales: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(scales, channels, 3, kernel, kernel, generator=g)
        w = w - w.mean(dim=(2, 3, 4), keepdim=True)
        w = w / w.flatten(2).norm(dim=2).view(scales, channels, 1, 1, 1)
        self.register_buffer("weight", w, persistent=False)
        self.scales = scales

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in range(self.scales):
            if s:
                if min(x.shape[-2:]) < 2 * self.weight.shape[-1]:
                    break
                x = F.avg_pool2d(x, 2)
            r = F.conv2d(x, self.weight[s].to(x), padding=self.weight.shape[-1] // 2)
            feats.append(torch.cat([(x + 1) / 2, r.abs()], dim=1))
        return feats


class StatsLoss(nn.Module):
    """DISTS-style comparison of filter-bank statistics over local windows (weight-free).

    For every feature channel and ``window``×``window`` cell: a mean term
    ``(2μ_yμ_ŷ + c)/(μ_y² + μ_ŷ² + c)`` and a spread term ``(2σ_yσ_ŷ + c)/(σ_y² + σ_ŷ² + c)``;
    ``cov_weight`` adds DISTS's structure term ``(2σ_yŷ + c)/(σ_y² + σ_ŷ² + c)``, which is sensitive to
    the noise's random state and therefore off by default. Loss = ``scale``·(1 − mean similarity), 0
    when equal; ``scale`` = 10 puts visible distortions at ≈0.1–0.5, DISTS's range, so CDD's loss
    weights carry over.
    """

    def __init__(self, *, channels: int = 24, kernel: int = 5, scales: int = 4, window: int = 8,
                 cov_weight: float = 0.0, c: float = 1e-4, scale: float = 10.0, seed: int = 0):
        super().__init__()
        self.bank = FilterBank(channels, kernel, scales, seed)
        self.window, self.cov_weight, self.c, self.scale = window, cov_weight, c, scale

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        w = min(self.window, *t.shape[-2:])
        return F.avg_pool2d(t, w, stride=max(1, w // 2), ceil_mode=True) if w > 1 else t

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        _check_pair(y, y_hat)
        c = self.c
        total = y.new_zeros(())
        fy, fh = self.bank(y), self.bank(y_hat)
        for a, b in zip(fy, fh):
            mu_a, mu_b = self._pool(a), self._pool(b)
            var_a = (self._pool(a * a) - mu_a ** 2).clamp_min(0)
            var_b = (self._pool(b * b) - mu_b ** 2).clamp_min(0)
            sd_a, sd_b = (var_a + 1e-12).sqrt(), (var_b + 1e-12).sqrt()
            mean_sim = (2 * mu_a * mu_b + c) / (mu_a ** 2 + mu_b ** 2 + c)
            spread_sim = (2 * sd_a * sd_b + c) / (var_a + var_b + c)
            sim = (mean_sim + spread_sim) / 2
            if self.cov_weight:
                cov = self._pool(a * b) - mu_a * mu_b
                struct = (2 * cov + c) / (var_a + var_b + c)
                sim = (sim + self.cov_weight * struct) / (1 + self.cov_weight)
            total = total + (1 - sim).mean()
        return self.scale * total / len(fy)


class GramLoss(nn.Module):
    """Per-scale Gram matrices of the filter-bank features, compared by a relative L1 distance."""

    def __init__(self, *, channels: int = 24, kernel: int = 5, scales: int = 4, seed: int = 0):
        super().__init__()
        self.bank = FilterBank(channels, kernel, scales, seed)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        _check_pair(y, y_hat)
        total = y.new_zeros(())
        fy, fh = self.bank(y), self.bank(y_hat)
        for a, b in zip(fy, fh):
            ga = torch.einsum("bchw,bdhw->bcd", a, a) / a[0, 0].numel()
            gb = torch.einsum("bchw,bdhw->bcd", b, b) / b[0, 0].numel()
            total = total + (ga - gb).abs().mean() / (ga.abs().mean() + 1e-3)
        return total / len(fy)


class GridLoss(nn.Module):
    """Blocking as a distribution: |horizontal step| averaged per column phase (col mod 8) and
    |vertical step| per row phase, per RGB channel, logged and centred over the 8 phases.

    Only the pattern over the grid counts (the overall edge level is the similarity loss's job), so
    noise and blur leave it flat and JPEG makes the 7|0 boundary stand out. Squared error, because the
    pattern of a small crop is noisy and a squared error's gradient is unbiased in expectation.
    Images need H, W multiples of ``period``; the grid is anchored at pixel (0, 0) like JPEG's.
    """

    def __init__(self, *, period: int = 8, eps: float = 1e-3, scale: float = 10.0):
        super().__init__()
        self.period, self.eps, self.scale = period, eps, scale

    def pattern(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 6, period]: centred log mean step per phase (3 channels × horizontal, vertical)."""
        p = self.period
        b, c, h, w = x.shape
        if h % p or w % p:
            raise ShapeError(f"GridLoss needs H and W multiples of {p}, got {h}×{w}")
        # the step between phase k and k+1 is credited to phase k; the last column wraps onto zeros
        dx = F.pad((x[..., 1:] - x[..., :-1]).abs(), (0, 1))
        dy = F.pad((x[..., 1:, :] - x[..., :-1, :]).abs(), (0, 0, 0, 1))
        cols = dx.view(b, c, h, w // p, p).mean(dim=(2, 3))
        rows = dy.view(b, c, h // p, p, w).mean(dim=(2, 4))
        lg = torch.cat([cols, rows], dim=1).add(self.eps).log()
        return lg - lg.mean(dim=2, keepdim=True)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        _check_pair(y, y_hat)
        return self.scale * (self.pattern(y) - self.pattern(y_hat)).pow(2).mean()


class QualityLoss(nn.Module):
    """Squared log-ratios of per-image noise level, sharpness and blockiness (``quality``'s statistics).

    Why: adding noise σ·z to an output changes a windowed mean/variance comparison only at second
    order in σ, so at σ ≈ 0 those losses give the noise amplitude no gradient and a model never starts
    to synthesise noise. The noise statistic here is the mean of the smaller half of |HH| (finest Haar
    diagonal band, per channel): in flat regions |HH(x + σz)| = σ|HH(z)|, first order in σ, and, like
    Donoho's median it trims, edges do not count as noise. Sharpness is the Laplacian variance of the
    luma; blockiness the boundary/interior step ratio on the grid anchored at (0, 0) (crops are
    aligned to it). Each term is ``(log s(y) − log s(ŷ))²``, averaged over images.
    """

    def __init__(self, *, eps: float = 1e-4):
        super().__init__()
        self.eps = eps

    @staticmethod
    def noise(x: torch.Tensor) -> torch.Tensor:
        """Per-image robust noise statistic ``[B]``: mean of the smaller half of |HH| per channel."""
        hh = haar_hh(to_unit(x)).abs().flatten(2)
        low = hh.topk(hh.shape[-1] // 2, dim=-1, largest=False).values
        return low.mean(dim=(1, 2))

    def terms(self, y: torch.Tensor, y_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three squared log-ratios, each averaged over the batch."""
        _check_pair(y, y_hat)
        out = {}
        for name, stat in (("noise", self.noise), ("sharpness", sharpness),
                           ("blockiness", lambda t: blockiness(t, any_phase=False))):
            out[name] = ((stat(y) + self.eps).log() - (stat(y_hat) + self.eps).log()).pow(2).mean()
        return out

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(y, y_hat).values()) / 3


def libjpeg_scale(quality: torch.Tensor) -> torch.Tensor:
    """libjpeg's multiplier of its quality-50 tables: 50/q below 50, 2 − q/50 above (0 at q = 100)."""
    q = quality.float().clamp(1, 100)
    return torch.where(q < 50, 50 / q, 2 - q / 50)


#: Target multiplier for samples without JPEG: below any quality's (q=96 gives 0.08), near identity.
NO_JPEG_SCALE = 0.02


def jpeg_step_loss(multipliers: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Squared log-ratio of a JPEG head's per-block multipliers ``[B,2,h,w]`` to libjpeg's scale for each
    sample's known ``quality`` ``[B]`` (0 = no JPEG → :data:`NO_JPEG_SCALE`), averaged.

    Why: the image losses do pull the step towards a JPEG target's (see ``round_to_step``), but per
    sample weakly, and fine-tunes without this term gave q=20 and clean inputs nearly the same step
    after 1000 steps. The training data knows each sample's quality, so the code is told it.
    """
    want = torch.where(quality > 0, libjpeg_scale(quality), torch.zeros_like(quality, dtype=torch.float))
    want = want.clamp_min(NO_JPEG_SCALE)
    return (multipliers.clamp_min(1e-4).log() - want.log().view(-1, 1, 1, 1)).square().mean()


#: Offset of :func:`noise_level_loss`'s log ([-1,1] units, ≈ 0.6 of an 8-bit level).
NOISE_LOG_OFFSET = 0.005


def noise_level_loss(sigma: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Squared difference of log(s + ε) between a noise head's mean output std per sample (``sigma``
    ``[B,3,H,W]``, ``[-1,1]`` units, :meth:`~redegrade.model.extras.noise_head.NoiseHead.output_std`) and the Gaussian noise each sample's
    target carries (``std`` ``[B]``, ``[0,1]`` units, 0 for none), averaged; ε = :data:`NOISE_LOG_OFFSET`.

    Why: in the WQI mix most noise is JPEG-compressed afterwards, where rounding passes the head no
    gradient, and clean or blurred samples pull its level down; a grafted head trained on the image
    losses alone turned itself down for every code, weak noise included (σ = 0.03 moved 0.13 of the
    way). The training data knows each sample's noise, so the head is told it, as the JPEG head is
    told the quality (:func:`jpeg_step_loss`). The offset lets samples without noise pull the level
    towards 0: a floor at ε instead left 0.0022 ([0,1] units) of noise on blurred sources, which is as
    much high-frequency energy as a σ = 1.5 blur leaves, and weak blur moved 0.30 of the way, not 0.57.
    """
    want = 2 * std.float().to(sigma.device)
    got = sigma.mean(dim=(1, 2, 3))
    return ((got + NOISE_LOG_OFFSET).log() - (want + NOISE_LOG_OFFSET).log()).square().mean()


class L1Loss(nn.Module):
    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        _check_pair(y, y_hat)
        return (y - y_hat).abs().mean()


class LpipsLoss(nn.Module):
    """VGG LPIPS from ``redegrade.objective.lpips_vgg`` (frozen; ``[-1,1]`` inputs)."""

    def __init__(self, *, pretrained_backbone: bool = True):
        super().__init__()
        from redegrade.objective import lpips_vgg

        self.net = lpips_vgg(pretrained_backbone=pretrained_backbone)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        _check_pair(y, y_hat)
        return self.net(y_hat, y).mean()


def perceptual(name: str, *, pretrained_backbone: bool = True, seed: int = 0) -> nn.Module:
    """Build the similarity loss ``d(y, ŷ)``: ``stats`` (default offline), ``gram``, ``lpips``, ``l1`` or
    ``msl1`` (the multiscale L1 objective of ``restore --loss l1``)."""
    if name == "stats":
        return StatsLoss(seed=seed)
    if name == "gram":
        return GramLoss(seed=seed)
    if name == "lpips":
        return LpipsLoss(pretrained_backbone=pretrained_backbone)
    if name == "l1":
        return L1Loss()
    if name == "msl1":
        from redegrade.objective import build

        return build("l1")  # the inversion's own multiscale L1: the model becomes its best predictor of y
    raise ConfigError(f"unknown perceptual loss {name!r}; choose one of {', '.join(PERCEPTUAL)}")


class Critic(nn.Module):
    """WGAN critic on (x, y) pairs, after the paper's ``DiscriminatorLinear`` (conditioned variant).

    Strided 4×4 convs (3×3 stride 1 once the map is small) with widths ndf·{1,2,4,8}, then a global
    average and a linear head; no normalisation (WGAN-GP penalises per-sample gradients).
    """

    def __init__(self, ndf: int = 32, in_chn: int = 6, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chn
        for i in range(depth):
            out = ndf * 2 ** i
            layers += [nn.Conv2d(c, out, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
            c = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(torch.cat([x, y], dim=1))
        return self.head(h.mean(dim=(2, 3))).squeeze(1)


def critic_loss(critic: Critic, x: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, *,
                gp_weight: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP critic loss ``D(fake) − D(real) + λ_gp (‖∇D(interp)‖ − 1)²`` (fake is detached)."""
    fake = fake.detach()
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device="cpu").to(real)
    interp = (eps * real + (1 - eps) * fake).requires_grad_(True)
    d_interp = critic(x, interp)
    grad, = torch.autograd.grad(d_interp.sum(), interp, create_graph=True)
    gp = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return critic(x, fake).mean() - critic(x, real).mean() + gp_weight * gp


def generator_gan_loss(critic: Critic, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The synthesis network's adversarial term ``−mean D(fake)``."""
    return -critic(x, fake).mean()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(f"losses compare two [B,C,H,W] images of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


__all__ = ["PERCEPTUAL", "gaussian_blur", "color_loss", "diversity_loss", "contrastive_loss", "rate_per_position",
           "FilterBank", "StatsLoss", "GramLoss", "GridLoss", "QualityLoss", "L1Loss", "LpipsLoss", "perceptual", "Critic",
           "critic_loss", "generator_gan_loss"]
