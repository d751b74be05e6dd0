"""The adversarial terms of training (WGAN-GP on (x, y) pairs): :class:`Critic`, :func:`critic_loss`,
:func:`generator_gan_loss`."""
from __future__ import annotations

import torch
from torch import nn


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
