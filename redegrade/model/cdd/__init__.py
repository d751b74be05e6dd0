"""The exact architecture of CDD's released degradation models (content-degradation-disentanglement,
ICCV 2025), so that their trainer checkpoints load and give CDD's outputs.

Our own presets (``paper``/``small``/``tiny`` in :mod:`redegrade.model.config`) are *our* reading of
CDD and differ from it on purpose; this module is CDD as its code computes, read from
``model/combined_model.py``, ``model/blindsr.py`` (LPE), ``model/blindsrlocal.py`` (LPEL, LPELOri,
IDADepthwiseConv), ``model/vunet_conv.py`` (SFTLayer, SFTResBlock, VUNet, VUNetPro, BasicWrapper),
``model/modules.py`` (pre-activation convs), ``model/compressors.py`` and ``model/iclr_compression``
at commit 47cd584. Where it differs from our ``paper`` preset:

- **input convention**: ``VUNet.forward`` maps the clean image through ``2x−1`` although it is already in
  [-1, 1] (the network sees [-3, 1]); :class:`CDDSynthesis` does the same, so callers pass x in [-1, 1]
  exactly as to every other redegrade model;
- the SFT layer's γ and β branches are bias-free and use the *block's* activation (``LeakyReLU(0.01)``,
  or ``ReLU`` in the last block of the last level, including inside its two SFT layers);
- e_g's MLP head keeps CDD's hidden width (LPE ``dim``) apart from its output width (MoCo ``out_dim``);
- the entropy models are used only when CDD's config had them ``enabled`` (the synthesis was trained on
  whichever code it saw), see :class:`CompressorSpec`;
- any number of U-Net levels (``VUNet``: 3, ``VUNetPro``: 5), block counts as in the checkpoint.

Noise: CDD's ``SFTLayer`` draws ``torch.randn([B,1,h,w])`` inside every call. Here the maps are an
argument, in CDD's draw order (SFT layers in forward order: the encoder levels top-down, then the
decoder levels bottom-up; ``sft1`` before ``sft2`` in a block). Their shapes form a palindrome
(H, H/2, H/4, H/2, H), so a reversed list has the right shapes and gives a wrong result.
:meth:`CDDModel.sample_noise` with ``torch.Generator().manual_seed(s)`` draws exactly the numbers
that ``torch.manual_seed(s)`` followed by CDD's ``netG(x, e_g, e_l)`` draws on CPU (nothing else in
CDD's eval-mode forward uses the random generator).

Entropy models: ``EntropyBottleneck`` is compressai's own class (CDD imports it), so eval-mode coding is
exact: values are rounded (``torch.round``, half to even) around the medians read from ``quantiles``.
The rate differs only in layout: CDD sums bits over channels per position, we per item.
``ImageCompressor`` (CDD's copy of liujiaheng/iclr_17_compression) is rebuilt with compressai's
``GDN``, whose reparametrisation (β, γ stored as √(· + 2⁻³⁶), lower bounds √(1e-6 + 2⁻³⁶) and 2⁻¹⁸) is
the upstream one; CDD's own ``model/iclr_compression/GDN.py`` and ``bitEstimator.py`` could not be read,
so that path is exact only if CDD kept them unchanged (and compressai divides by √ as ``x·rsqrt``).

Modules: :mod:`~redegrade.model.cdd.config` (what a network is), :mod:`~redegrade.model.cdd.encoders`,
:mod:`~redegrade.model.cdd.synthesis`, :mod:`~redegrade.model.cdd.entropy`, :mod:`~redegrade.model.cdd.model`
(the assembled :class:`CDDModel`); reading CDD's trainer checkpoints: :mod:`~redegrade.model.cdd.checkpoint`
(the file), :mod:`~redegrade.model.cdd.options` (what it cannot say), :mod:`~redegrade.model.cdd.infer`
(the config its shapes describe), :mod:`~redegrade.model.cdd.keys` (its key names → ours).
"""
from redegrade.model.cdd.config import ARCHITECTURE, CDDConfig, CompressorSpec
from redegrade.model.cdd.model import CDDModel

__all__ = ["ARCHITECTURE", "CDDConfig", "CDDModel", "CompressorSpec"]
