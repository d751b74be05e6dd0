"""One function runs one phase; latent-space conversions are one-liners beside it."""
from __future__ import annotations

from collections.abc import Callable

import torch

from redegrade.backend import Progress, StepInfo
from redegrade.forward import ForwardModel
from redegrade.optim import NGD
from redegrade_rsg.config import SPACES, Phase

Objective = Callable[..., torch.Tensor]

#: Losses stay on the device and reach the history and ``progress`` in batches of this many steps (and at
#: the phase's end): reading a loss back is a device sync, which every step would stall a GPU's queue.
REPORT_EVERY = 10


def convert(latent: torch.Tensor, src: str, dst: str, num_ws: int) -> torch.Tensor:
    """Re-express a latent of space ``src`` in the richer space ``dst`` without changing the image.

    w ``[B,1,512]`` → w+ ``[B,num_ws,512]`` (repeat per layer) → w++ ``[B,num_ws·512,512]``
    (``repeat_interleave(512, dim=1)``: every filter of a layer starts from that layer's vector).
    """
    if SPACES.index(dst) < SPACES.index(src):
        raise ValueError(f"cannot go back from latent space {src} to {dst}")
    if src == "w" and dst != "w":
        latent, src = latent.repeat(1, num_ws, 1), "w+"
    if src == "w+" and dst == "w++":
        latent = latent.repeat_interleave(latent.shape[-1], dim=1)
    return latent


def to_ws(latent: torch.Tensor, space: str, num_ws: int) -> torch.Tensor:
    """What ``G.synthesis`` takes: w is broadcast to every layer; w+ and w++ go in as they are."""
    return latent.expand(-1, num_ws, -1) if space == "w" else latent


def render(G: torch.nn.Module, latent: torch.Tensor, space: str) -> torch.Tensor:
    """The generator's image ``[B,3,R,R]`` in ``[-1,1]`` for a latent (stored noise, no randomness)."""
    return G.synthesis(to_ws(latent, space, G.num_ws), noise_mode="const")


def score(objective: Objective, y: torch.Tensor, y_hat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # Plain callables ``loss(y, y_hat)`` are allowed as objectives; only pass a mask when there is one.
    return objective(y, y_hat) if mask is None else objective(y, y_hat, mask)


def run_phase(G: torch.nn.Module, forward_model: ForwardModel, objective: Objective, y: torch.Tensor,
              latent: torch.Tensor, phase: Phase, *, mask: torch.Tensor | None = None,
              progress: Progress | None = None, movable: list[torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, list[StepInfo]]:
    """Minimise ``objective(y, A_θ(G(latent)))`` for ``phase.steps`` steps.

    The latent (already in ``phase.space``) moves by NGD at ``phase.lr``; the forward model's variables
    in ``movable`` (default: all of them) move by Adam at ``phase.variables_lr``, the others and all of
    them when it is ``None`` stay fixed (no gradient is even computed). The loss reported for a step is
    the one its gradient came from; steps are reported :data:`REPORT_EVERY` at a time. Returns the final
    latent (detached) and the steps' :class:`StepInfo`.
    """
    latent = latent.detach().clone().requires_grad_(True)
    variables = forward_model.variables()
    moving = [] if phase.variables_lr is None else (variables if movable is None else movable)
    flags = [v.requires_grad for v in variables]
    opt_latent = NGD([latent], lr=phase.lr)
    opt_vars = torch.optim.Adam(moving, lr=phase.variables_lr) if moving else None
    history: list[StepInfo] = []
    pending: list[torch.Tensor] = []  # the losses of steps not yet reported, on the device

    def report() -> None:
        first = len(history) + 1
        for step, value in enumerate(torch.stack(pending).reshape(-1).tolist() if pending else [], start=first):
            info = StepInfo(phase.name, step, phase.steps, value, phase.lr)
            history.append(info)
            if progress is not None:
                progress(info)
        pending.clear()

    try:
        for v in variables:
            v.requires_grad_(False)
        for v in moving:
            v.requires_grad_(True)
        for step in range(phase.steps):
            loss = score(objective, y, forward_model(render(G, latent, phase.space)), mask)
            opt_latent.zero_grad(set_to_none=True)
            if opt_vars is not None:
                opt_vars.zero_grad(set_to_none=True)
            loss.backward()
            opt_latent.step()
            if opt_vars is not None:
                opt_vars.step()
            pending.append(loss.detach())
            if len(pending) == REPORT_EVERY:
                report()
        report()
    finally:
        for v, flag in zip(variables, flags):
            v.grad = None
            v.requires_grad_(flag)
    return latent.detach(), history
