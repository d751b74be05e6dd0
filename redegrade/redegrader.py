"""The Redegrader: the frozen universal degradation model as a :class:`~redegrade.forward.ForwardModel`.

θ = (e_g, e_l, n). :meth:`Redegrader.reset` initialises them from the observation (e_g, e_l = E(y);
n ~ N(0, I), seeded); :meth:`Redegrader.forward` renders ŷ = f̂(x, Q(e_g), Q(e_l), n) where Q is the
entropy models' quantiser in ``"ste"`` mode by default (rounded values forward, identity gradient), so
gradients reach x and every variable while the network weights stay frozen. Where a gradient is
taken, the JPEG head's rounding is dithered (uniform noise half a step wide, seeded at reset): hard
rounding makes the objective flat inside each quantisation bin, and an inversion through it stops
anywhere in the bin; dithered, it is pulled to the bin's centre, where JPEG's decoder puts y.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from redegrade import settings
from redegrade.errors import InputError, MissingCheckpointError, ShapeError
from redegrade.forward import ForwardModel
from redegrade.image import check_image
from redegrade.model import DegradationCode, UniversalDegradationModel, load_state, save_state
from redegrade.model.cdd import CDDModel
from redegrade.model.extras import lost_pixels
from redegrade.model.io import CONFIG_NAME, WEIGHTS_NAME
from redegrade.pixels import MULTIPLE

log = logging.getLogger(__name__)

_LOGIT_EPS = 1e-4  # e_l is clamped to [eps, 1-eps] before the logit so saturated values stay finite

CHECKPOINT_MODES = ("auto", "on", "off")
#: Synthesis precision: autocast dtype (``None`` = no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: ``checkpoint="auto"`` checkpoints from this image size on (512²): at 256² the paper-size U-Net's
#: backward fits in a few GB and recomputing would only cost time.
AUTO_CHECKPOINT_PIXELS = 512 * 512


def default_dir() -> Path:
    """Where the shipped default checkpoint (``wqi``) lives: ``redegrade/data/redegrader/``."""
    return settings.bundled_redegrader("wqi")


class Redegrader(ForwardModel):
    """Blind forward model ŷ = f̂(x, e_g, e_l, n) with a frozen universal degradation model.

    Variables (see :meth:`named_variables`):

    - ``e_g`` [B, dim_g]: the global code before the entropy head;
    - ``e_l`` [B, c_l, H/2, W/2]: stored as an **unconstrained logit**; the model sees ``sigmoid(e_l)``,
      so any optimiser step keeps the local map inside (0, 1);
    - ``n.0`` … ``n.{K-1}`` [B, 1, h, w]: one noise map per SFT layer (K = 32 for the paper preset).

    ``quantizer`` ("ste", "round" or "none") is applied to the codes on every forward.

    Memory and speed (same maths; see ``benchmarks/blind_memory.py``):

    - ``checkpoint``: ``"auto"`` (default) recomputes each SFT block in the backward instead of storing
      its activations whenever a gradient is needed and the image has ≥ 512² pixels; ``"on"`` always
      when a gradient is needed, ``"off"`` never. Values and gradients are the same either way.
    - ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` runs the synthesis U-Net under
      ``torch.autocast`` (codes, quantisation and the JPEG head stay float32; ŷ is returned as float32).
      Half precision changes ŷ by ≈1e-2 (see ``tests/test_memory.py``); fp16 is meant for CUDA.

    The wrapped model is frozen **in place** (eval mode, ``requires_grad=False``): wrap a copy of a
    model you are still training.
    """

    def __init__(self, model: UniversalDegradationModel | CDDModel, *, quantizer: str = "ste",
                 checkpoint: str = "auto", precision: str = "fp32"):
        super().__init__()
        if quantizer not in ("ste", "round", "none"):
            raise InputError(f"Redegrader quantizer must be 'ste', 'round' or 'none', got {quantizer!r}")
        if checkpoint not in CHECKPOINT_MODES:
            raise InputError(f"Redegrader checkpoint must be one of {', '.join(CHECKPOINT_MODES)}, got {checkpoint!r}")
        if precision not in PRECISIONS:
            raise InputError(f"Redegrader precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.quantizer = quantizer
        self.checkpoint = checkpoint
        self.precision = precision
        self.e_g: torch.Tensor | None = None
        self.e_l_logit: torch.Tensor | None = None
        self.noise: list[torch.Tensor] = []
        self.keep: torch.Tensor | None = None
        self.factor: torch.Tensor | None = None
        self._dither_seed = 0
        self._dither: torch.Generator | None = None
        self.freeze()

    def _apply(self, fn, recurse: bool = True):
        # the lost pixels are no variable but move with them (a reset on CPU, then .to("cuda")); the resize
        # factor stays on the CPU (see redegrade.model.extras.resized.measure)
        super()._apply(fn, recurse)
        if self.keep is not None:
            self.keep = fn(self.keep)
        return self

    def train(self, mode: bool = True) -> "Redegrader":
        """The network stays in eval mode (BatchNorm uses running statistics) whatever ``mode`` says."""
        return super().train(False)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: UniversalDegradationModel | CDDModel, *, quantizer: str = "ste",
                   checkpoint: str = "auto", precision: str = "fp32") -> "Redegrader":
        """Wrap (and freeze) an existing model."""
        return cls(model, quantizer=quantizer, checkpoint=checkpoint, precision=precision)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, device: str | torch.device = "cpu",
                        quantizer: str = "ste", cdd_options=None, checkpoint: str = "auto",
                        precision: str = "fp32") -> "Redegrader":
        """Load a folder (config.json + model.safetensors), a training checkpoint file, a CDD trainer
        checkpoint (e.g. CDD's ``model_latest.pt``), a registry name (``cdd.ffhq``, ``cdd.wm``, …), a shipped
        model's name (``wqi``, ``ffhqx``: :data:`redegrade.settings.BUNDLED_REDEGRADERS`) or — with ``None``
        — ``wqi``.

        ``cdd_options`` (a dict, a JSON/YAML file such as CDD's training config, or
        :class:`~redegrade.model.cdd.options.CDDOptions`) says what a CDD checkpoint cannot: see
        :mod:`redegrade.model.cdd.checkpoint`. A converted CDD model gives CDD's outputs: its
        :meth:`synthesize` takes x in [-1, 1] and applies CDD's ``2x−1`` itself.
        """
        record = None
        bundled = settings.bundled_redegrader("wqi" if name_or_path is None else str(name_or_path))
        if bundled is not None:
            path = bundled
            if not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
                raise MissingCheckpointError(
                    f"shipped redegrader {name_or_path or 'wqi'} is not installed ({path} has no {CONFIG_NAME} + "
                    f"{WEIGHTS_NAME}); train one with `python -m redegrade.train` and pass its folder")
        else:
            path = Path(name_or_path).expanduser()
            if not path.exists():
                from redegrade.weights import REGISTRY, resolve  # a registry name, e.g. a published checkpoint

                path = resolve(str(name_or_path))
                ckpt = REGISTRY.get(str(name_or_path))
                if ckpt is not None and ckpt.loader == "redegrade.model.cdd.checkpoint.load_cdd":
                    from redegrade.model.cdd.options import CDDOptions

                    cdd_options = CDDOptions.read(dict(ckpt.options)).updated(CDDOptions.read(cdd_options))
                    record = ckpt
        model = load_state(path, device=device, cdd_options=cdd_options)
        if record is not None:
            from redegrade.weights import record_first_use

            record_first_use(record, path)  # it loaded: remember its sha256 to catch a changed file later
        log.info("loaded redegrader from %s", path)
        return cls(model, quantizer=quantizer, checkpoint=checkpoint, precision=precision)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically) into ``directory``."""
        return save_state(self.model, directory)

    # -- direct use -------------------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> DegradationCode:
        """y [B,3,H,W] in [-1,1] → DegradationCode(e_g [B,dim_g], e_l [B,c_l,H/2,W/2])."""
        check_image(y, "observation", multiple_of=MULTIPLE)
        return self.model.encode(y)

    def synthesize(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor]) -> torch.Tensor:
        """ŷ = f̂(x, code, noise) without quantisation (the code is used as given)."""
        return self.model.synthesize(x, code, noise)

    def sample_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """N(0,1) maps for image ``x``; ``None`` means a generator seeded with 0."""
        return self.model.sample_noise(x, generator)

    # -- ForwardModel -----------------------------------------------------------------------------
    def reset(self, y: torch.Tensor, *, generator: torch.Generator | None = None) -> None:
        """e_g, e_l = E(y) (detached leaves), n = fresh N(0,1) maps from ``generator`` (seed 0 if None),
        and the JPEG dither's seed drawn from it next."""
        check_image(y, "observation", multiple_of=MULTIPLE)
        with torch.no_grad():
            code = self.model.encode(y)
        generator = torch.Generator().manual_seed(0) if generator is None else generator
        self.set_code(code, self.sample_noise(y, generator))
        self._dither_seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        self._dither = None

    def set_code(self, code: DegradationCode, noise: list[torch.Tensor] | None = None) -> None:
        """Replace the variables by ``code`` (e.g. e_g of one image with e_l of another) and ``noise``;
        What the code measured of y (``keep``, ``factor``; see :class:`~redegrade.model.DegradationCode`) is
        kept as it is, not optimised.

        Without ``noise`` the current maps are kept when their sizes fit e_l, else fresh seed-0 maps
        are drawn.
        """
        self.model._check_code(code)
        e_l = code.e_l.detach().clamp(_LOGIT_EPS, 1 - _LOGIT_EPS)
        self.e_g = code.e_g.detach().clone().requires_grad_(True)
        self.e_l_logit = torch.logit(e_l).requires_grad_(True)
        self.keep = None if code.keep is None else code.keep.detach()
        self.factor = code.factor
        b, _, h, w = code.e_l.shape
        shapes = [(b, 1, *s) for s in self.model.noise_shapes(2 * h, 2 * w)]
        if noise is None:
            if [tuple(n.shape) for n in self.noise] == shapes:
                return
            ref = torch.empty(b, 3, 2 * h, 2 * w, device=e_l.device, dtype=e_l.dtype)
            noise = self.sample_noise(ref)
        if [tuple(n.shape) for n in noise] != shapes:
            raise ShapeError(f"noise maps must have shapes {shapes}, got {[tuple(n.shape) for n in noise]}")
        self.noise = [n.detach().clone().requires_grad_(True) for n in noise]

    def code(self) -> DegradationCode:
        """The current (unquantised) code: e_g and sigmoid(e_l logit)."""
        self._require_reset()
        return DegradationCode(self.e_g, torch.sigmoid(self.e_l_logit), self.keep, self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ŷ = f̂(x, Q(e_g), Q(sigmoid(e_l)), n) with Q the ``quantizer`` (STE by default).

        If x is not twice e_l's size (it should be: reset with a y of x's size), e_l is resized
        bilinearly to x's half size, the noise maps by nearest neighbour (which keeps them N(0,1)) and
        so are the lost pixels.
        """
        check_image(x, "image", multiple_of=MULTIPLE)
        code = self.code()
        h, w = x.shape[-2:]
        noise = self.noise
        if tuple(code.e_l.shape[-2:]) != (h // 2, w // 2):
            e_l = F.interpolate(code.e_l, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
            code = dataclasses.replace(code, e_l=e_l, keep=lost_pixels.resize(code.keep, (h, w)))
            noise = [F.interpolate(n, size=s, mode="nearest") for n, s in zip(noise, self.model.noise_shapes(h, w))]
        code_hat, _ = self.model.quantize(code, self.quantizer, rate=False)  # the rate is never read here
        dtype = PRECISIONS[self.precision]
        dither = self._dither_generator(x.device) if self._needs_gradient(x) else None
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            y_hat = self.model.synthesize(x, code_hat, noise, checkpoint=self._checkpointing(x), dither=dither)
        return y_hat.float()

    def _needs_gradient(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(v.requires_grad for v in self.variables()))

    def _checkpointing(self, x: torch.Tensor) -> bool:
        """Whether this forward checkpoints: a gradient is needed and ``checkpoint`` (and size) say so."""
        if self.checkpoint == "off" or not self._needs_gradient(x):
            return False
        return self.checkpoint == "on" or x.shape[-2] * x.shape[-1] >= AUTO_CHECKPOINT_PIXELS

    def _dither_generator(self, device: torch.device) -> torch.Generator:
        """The JPEG dither's generator on ``device``, seeded at :meth:`reset`; it advances every forward."""
        if self._dither is None or self._dither.device != device:
            self._dither = torch.Generator(device).manual_seed(self._dither_seed)
        return self._dither

    def named_variables(self) -> dict[str, torch.Tensor]:
        """{"e_g", "e_l" (a logit: the model sees its sigmoid), "n.0", …}; empty before :meth:`reset`."""
        if self.e_g is None:
            return {}
        return {"e_g": self.e_g, "e_l": self.e_l_logit, **{f"n.{i}": n for i, n in enumerate(self.noise)}}

    def _require_reset(self) -> None:
        if self.e_g is None:
            raise InputError("the Redegrader has no variables yet: call reset(y) (or set_code) before forward(x)")
