"""The RSG backend: StyleGAN2 inversion V → W → W+ → W++ through any forward model."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from redegrade import settings
from redegrade.backend import Backend, Option, Progress, Restoration
from redegrade.errors import MissingCheckpointError
from redegrade.forward import ForwardModel
from redegrade.image import check_shape
from redegrade_rsg.config import RSGConfig
from redegrade_rsg.phases import convert, render, run_phase, score

log = logging.getLogger(__name__)


class RSG(Backend):
    """Robust unsupervised StyleGAN restoration (Poirier-Ginter & Lalonde, CVPR 2023) with the seed
    paper's V phase and optimised forward-model variables (seed 001 §5.3).

    ``prior`` is a StyleGAN2 generator (``mapping.w_avg``, ``num_ws``, ``img_resolution``,
    ``synthesis(ws, noise_mode="const")``); without one, ``config.generator`` is loaded on first use.
    ``objective`` defaults to ``config.loss`` built by :meth:`~redegrade.backend.Backend.objective`. The
    backend never asks which forward model it got: blind (Redegrader), naive (Identity) and non-blind
    (KnownDegradation) differ only in what :meth:`restore` receives.
    """

    Config = RSGConfig
    options = (Option("--generator", "generator", metavar="NAME|PATH", checkpoint=True,
                      help="StyleGAN2 generator: registry name, NVIDIA .pkl or .safetensors export "
                           "(default: stylegan2.ffhq1024, downloaded once)."),)

    @property
    def generator(self) -> torch.nn.Module:
        """The frozen generator (loaded on the CPU on first use)."""
        if self._prior is None:
            from redegrade_stylegan2 import load_generator  # heavy; only when needed

            log.info("loading generator %s", self.config.generator)
            self._prior = load_generator(self.config.generator, device="cpu")
        self._prior.eval()
        for p in self._prior.parameters():
            p.requires_grad_(False)
        return self._prior

    @property
    def resolution(self) -> int:
        return int(self.generator.img_resolution)

    def check(self, device: torch.device) -> None:
        """Cheap viability check: the generator is given, cached, downloadable or an existing file."""
        self.config.schedule()  # raises ConfigError on a bad phase list
        if self._prior is not None:
            return
        from redegrade.weights import registry, store

        name = str(self.config.generator)
        if name in registry.REGISTRY:
            if settings.offline() and not store.cache_path(name).exists():
                store.resolve(name, download_missing=False)  # raises the error naming file, URL and place
        elif not Path(name).expanduser().is_file():
            raise MissingCheckpointError(
                f"generator {name!r} is neither an existing file nor a known checkpoint "
                f"(known: {', '.join(sorted(registry.REGISTRY))})")

    def restore(self, y: torch.Tensor, forward_model: ForwardModel, *,
                progress: Progress | None = None) -> Restoration:
        """Invert ``y`` ([1,3,H,W] in [-1,1]); ``forward_model`` has been ``reset`` on ``y`` (:meth:`run`)."""
        # 1. validate and place everything on one device
        check_shape(y, (1, 3, None, None), "observation")
        device = settings.resolve_device(self.config.device)
        self.check(device)
        schedule = self.config.schedule()
        G = self.generator.to(device)
        objective = self.objective(device)
        forward_model.to(device)  # its variables too (a forward model reset on another device)
        y = y.to(device=device, dtype=torch.float32)
        mask = forward_model.mask()
        mask = None if mask is None else mask.to(device)

        # 2. start from the average latent, as RSG does (no sampling, no truncation)
        latent = G.mapping.w_avg.detach().to(device, torch.float32).reshape(1, 1, -1)
        space = "w"
        history, images, losses = [], {}, {}
        with torch.no_grad():
            start = float(score(objective, y, forward_model(render(G, latent, space)), mask))

        # 3. the schedule, one phase at a time; keep each phase's image and closing loss. V holds the
        # forward model's variables while w settles: with none to move it would only be a second W.
        named = forward_model.named_variables()
        movable = [named[k] for k in self.config.optimised(list(named))]
        if not movable:
            schedule = tuple(p for p in schedule if p.name != "V") or schedule
        for phase in schedule:
            latent, space = convert(latent, space, phase.space, G.num_ws), phase.space
            latent, steps = run_phase(G, forward_model, objective, y, latent, phase, mask=mask, progress=progress,
                                      movable=movable)
            history += steps
            with torch.no_grad():
                image = render(G, latent, space)
                end = float(score(objective, y, forward_model(image), mask))
            losses[phase.name] = (steps[0].loss if steps else end, end)
            images[phase.name] = image.detach().cpu().clamp(-1, 1)
            log.debug("phase %s: loss %.4f → %.4f", phase.name, *losses[phase.name])

        # 4. the result: final image, its re-degradation, latent and variables
        with torch.no_grad():
            image = render(G, latent, space)
            redegraded = forward_model(image)
            final = float(score(objective, y, redegraded, mask))
        state = {"latent": latent.detach().cpu()}
        state.update({k: v.detach().cpu().clone() for k, v in forward_model.named_variables().items()})
        info = {"latent_space": space, "initial_loss": start, "final_loss": final, "phase_losses": losses,
                "nfe": len(history)}
        return Restoration(image=image.detach().cpu().clamp(-1, 1), redegraded=redegraded.detach().cpu(),
                           state=state, history=history, phases=images, info=info)
