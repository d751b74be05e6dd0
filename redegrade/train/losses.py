"""Training losses for the universal degradation model (tech-facts §1.8–§1.9, paper 000 §3.4).

Every loss takes and compares images in ``[-1,1]`` ``[B,3,H,W]`` and returns a scalar.

* the similarity d(y, ŷ) by name — :mod:`redegrade.train.similarity`;
* :class:`GridLoss` — how edge strength varies across JPEG's 8×8 block grid (blocking), which the
  windowed statistics of the similarity losses average away.
* :class:`QualityLoss` — the three no-reference statistics transfer is judged by (noise level, sharpness,
  blockiness; :mod:`redegrade.quality`), matched per image on a log scale. They are first order in
  an added noise's amplitude where the similarity losses are second order (see the class).
* :func:`residual_distribution_loss` — the distribution of y − x against that of ŷ − x (1-D Wasserstein
  per image and channel), so the model renders a degradation's randomness at its true strength.
* :func:`color_loss` (``rgbn``), :func:`diversity_loss`, :func:`contrastive_loss`, :func:`rate_per_position`;
* the heads' labels: :func:`jpeg_step_loss`, :func:`noise_level_loss`;
* the WGAN-GP pair — :mod:`redegrade.train.gan`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from redegrade.errors import ShapeError
from redegrade.pixels.scale import to_unit
from redegrade.pixels.stats import haar_hh
from redegrade.quality import blockiness, sharpness


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
    check_pair(y, y_hat)

    def norm(t: torch.Tensor) -> torch.Tensor:
        t = (t + 1) / 2
        flat = t.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
        return (t - lo) / (hi - lo).clamp_min(1e-6)

    return (gaussian_blur(norm(y), kernel, sigma) - gaussian_blur(norm(y_hat), kernel, sigma)).abs().mean()


def residual_distribution_loss(x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor,
                               weight: torch.Tensor | None = None) -> torch.Tensor:
    """1-D Wasserstein distance between the values of ``y − x`` and of ``ŷ − x``, per image and channel.

    ``weight`` ([B]) weighs each image's distance before the batch mean (default: all 1).

    Why: the pixel objectives compare y and ŷ pixel by pixel, and the best pixel-wise prediction of a
    noisy y is (nearly) noise-free: trained on them, the model rendered half of N's noise and few of its
    dropped pixels, and an inversion through a forward model that is too clean fits the rest of y's noise
    into x. Sorted residuals compare distributions, not positions, so a right noise with another random
    state costs nothing, and too little noise (or too few dropped pixels) costs in proportion.
    """
    check_pair(y, y_hat)
    check_pair(x, y)
    r = (y - x).flatten(2).sort(dim=-1).values
    r_hat = (y_hat - x).flatten(2).sort(dim=-1).values
    per_image = (r - r_hat).abs().mean(dim=(1, 2))
    if weight is None:
        return per_image.mean()
    return (per_image * weight.to(per_image)).mean()


def diversity_loss(a: torch.Tensor, b: torch.Tensor, *, c2: float = 0.12, window: int = 11,
                   sigma: float = 1.5) -> torch.Tensor:
    """SSIM contrast-structure term between two samples: mean of ``(2|σ_ab| + C2) / (σ_aa + σ_bb + C2)``.

    Local statistics use a Gaussian window (11, σ=1.5) with reflect padding, on the ``[-1,1]`` images
    as given. It is 1 for identical samples and falls as the two random states decorrelate, so
    minimising it keeps the synthesis from ignoring its noise input.
    """
    check_pair(a, b)
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
        check_pair(y, y_hat)
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
        check_pair(y, y_hat)
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


def check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise :class:`ShapeError` unless ``a`` and ``b`` are [B,C,H,W] images of one shape."""
    if a.shape != b.shape or a.dim() != 4:
        raise ShapeError(f"losses compare two [B,C,H,W] images of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


__all__ = ["gaussian_blur", "color_loss", "residual_distribution_loss", "diversity_loss", "contrastive_loss",
           "rate_per_position", "GridLoss", "QualityLoss", "libjpeg_scale", "jpeg_step_loss", "noise_level_loss",
           "check_pair"]
