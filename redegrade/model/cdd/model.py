"""CDD's ``CombinedModel`` at inference, assembled from its encoders, entropy models and synthesis."""
from __future__ import annotations

import torch

from redegrade.errors import ConfigError
from redegrade.image import check_image
from redegrade.model.cdd.config import CDDConfig
from redegrade.model.cdd.encoders import CDDGlobalEncoder, CDDLocalEncoder
from redegrade.model.cdd.entropy import make_compressor
from redegrade.model.cdd.synthesis import CDDFusion, CDDSynthesis
from redegrade.model.entropy import MODES
from redegrade.model.network import CodedModel, DegradationCode


class CDDModel(CodedModel):
    """CDD's ``CombinedModel`` at inference, with the interface of
    :class:`~redegrade.model.UniversalDegradationModel` (so a :class:`~redegrade.redegrader.Redegrader`
    wraps either).

    - :meth:`encode` = CDD's ``model('latent', y, compress=False)`` and ``model('latent_local', y,
      compress=False)`` (the raw codes, as CDD's ``extract_latents`` saves them);
    - :meth:`entropy_coded` = the same with ``compress=True`` (CDD's default for those calls);
    - :meth:`synthesize` = ``netG(x, e_g, e_l)`` with the noise maps CDD would draw (see the module doc);
    - :meth:`quantize` = what CDD's training forward did to the codes before the synthesis: the entropy
      models of those ``enabled`` in its config, identity for the others.
    """

    def __init__(self, config: CDDConfig | None = None):
        super().__init__()
        self.config = config = config or CDDConfig()
        self.hden = CDDGlobalEncoder(config.enc_dim_g, config.dim_g, config.enc_kernel_g)
        self.iden = CDDLocalEncoder(config.enc_dim_l, config.c_l, config.enc_kernel_l, config.local_encoder)
        self.entropy_g = make_compressor(config.compressor_g)
        self.entropy_l = make_compressor(config.compressor_l)
        self.fusion = CDDFusion(config)
        self.synthesis = CDDSynthesis(config)

    @property
    def multiple(self) -> int:
        return self.config.multiple

    # -- encoders ---------------------------------------------------------------------------------
    def encode(self, y: torch.Tensor) -> DegradationCode:
        """y [B,3,H,W] in [-1,1] → raw DegradationCode(e_g [B,dim_g], e_l [B,c_l,H/2,W/2])."""
        check_image(y, "observation", multiple_of=self.multiple)
        return DegradationCode(self.hden(y), self.iden(y))

    def entropy_coded(self, code: DegradationCode) -> DegradationCode:
        """Both codes through their entropy models, rounded, whatever ``enabled`` says (CDD's
        ``model('latent', y)`` / ``model('latent_local', y)`` with their default ``compress=True``)."""
        self._check_code(code)
        e_g, _ = self.entropy_g(code.e_g, "round")
        e_l, _ = self.entropy_l(code.e_l, "round")
        return DegradationCode(e_g, e_l)

    def degradation_map(self, code: DegradationCode) -> torch.Tensor:
        self._check_code(code)
        return self.fusion(code)

    # -- noise ------------------------------------------------------------------------------------
    @property
    def num_noise(self) -> int:
        return len(self.config.noise_levels())

    def noise_shapes(self, height: int, width: int) -> list[tuple[int, int]]:
        return self.config.noise_shapes(height, width)

    def sample_noise(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """N(0,1) maps [B,1,h,w] in CDD's draw order; ``generator=None`` means one seeded with 0.

        Drawn as CDD draws them (float32, one ``randn`` per SFT layer in forward order), so a generator
        seeded with s reproduces ``torch.manual_seed(s); netG(x, e_g, e_l)`` on the generator's device.
        """
        check_image(x, "image", multiple_of=self.multiple)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        b = x.shape[0]
        return [torch.randn((b, 1, h, w), generator=generator, device=generator.device).to(x.device, x.dtype)
                for h, w in self.noise_shapes(*x.shape[-2:])]

    # -- synthesis --------------------------------------------------------------------------------
    def synthesize(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor], *,
                   checkpoint: bool = False, dither: torch.Generator | None = None) -> torch.Tensor:
        """ŷ = CDD ``netG(x, e_g, e_l)``: x [B,3,H,W] in [-1,1], the code as given, CDD's noise maps.
        ``checkpoint`` recomputes each block in the backward (same values, less memory). ``dither`` is
        the JPEG head's (see :meth:`UniversalDegradationModel.synthesize`): CDD has none, so it is unused."""
        self._check_synthesis_inputs(x, code, noise, multiple=self.multiple)
        return self.synthesis(x, self.fusion(code), noise, checkpoint=checkpoint)

    def forward(self, x: torch.Tensor, code: DegradationCode, noise: list[torch.Tensor]) -> torch.Tensor:
        return self.synthesize(x, code, noise)

    # -- entropy ----------------------------------------------------------------------------------
    def quantize(self, code: DegradationCode, mode: str, *, generator: torch.Generator | None = None,
                 rate: bool = True) -> tuple[DegradationCode, dict[str, torch.Tensor]]:
        """The code the synthesis saw in training: each code through its entropy model (``mode`` as in
        :meth:`UniversalDegradationModel.quantize`) if CDD's config had it enabled, unchanged (0 bits) if not."""
        self._check_code(code)
        if mode not in MODES:
            raise ConfigError(f"unknown quantisation mode {mode!r}; choose one of {', '.join(MODES)}")
        out, rate = [], {}
        for key, z, model, spec in (("g", code.e_g, self.entropy_g, self.config.compressor_g),
                                    ("l", code.e_l, self.entropy_l, self.config.compressor_l)):
            if spec.enabled:
                z, bits = model(z, mode, generator=generator, rate=rate)
            else:
                bits = z.new_zeros(z.shape[0])
            out.append(z)
            rate[key] = bits
        return DegradationCode(*out), rate
