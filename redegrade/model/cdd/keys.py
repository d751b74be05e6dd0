"""Our state-dict keys ↔ CDD's (part, key) names, and our state dict from CDD's parts.

Key mapping (CDD → ours; ``<l>`` is 1-based in CDD, 0-based here):

=====================================================  ==============================================
``netE.LPE_p.<i>.conv|norm.*``                          ``hden.long.<i>.0|1.*``
``netE.LPE_l.<i>.conv|norm.*``                          ``hden.short.<i>.0|1.*``
``netE.last_mlp.<0|2>.*``                               ``hden.head.<0|2>.*``
``netE_loc.LPE_p.<0-3>.conv|norm.*``, ``LPE_p.4.*``     ``iden.long.<i>.0|1.*``, ``iden.long.4.*``
``netE_loc.LPE_l.*``, ``netE_loc.last_mlp.<0|2>.*``     ``iden.short.*``, ``iden.fuse.<0|2>.*``
``netG.conv.*``                                         ``fusion.proj.*``
``netG.net.map_head.conv2d.weight``                     ``fusion.head.1.weight``
``netG.net.conv_first.conv2d.weight``                   ``synthesis.conv_first.0.weight``
``netG.net.conv_down<l>.conv2d.weight``                 ``synthesis.downsample.<l-1>.0.weight``
``netG.net.conv_up<l>.tconv2d.weight``                  ``synthesis.upsample.<l-1>.0.weight``
``netG.net.conv_skip<l>.conv2d.weight``                 ``synthesis.skip.<l-1>.1.weight``
``netG.net.blocks<l>.<i>.*`` / ``blocks<l>_.<i>.*``     ``synthesis.down_blocks|up_blocks.<l-1>.<i>.*``
  ``sft<j>.convs_gamma|convs_beta.<0|1>.conv2d.weight``   ``sft<j>.gamma|beta.<0|2>.weight``
  ``sft<j>.spatial_gamma.transform_map.0|2.weight``       ``sft<j>.ida.map_up|map_down.weight``
  ``sft<j>.spatial_gamma.transform_x.weight``             ``sft<j>.ida.feat_down.weight``
  ``sft<j>.spatial_gamma.deconv.weight|bias``             ``sft<j>.ida.out_up.weight|bias``
  ``conv<j>.conv2d.weight``                               ``conv<j>.1.weight``
``netG.net.conv_last.conv2d.weight``                    ``synthesis.conv_last.1.weight``
``netCprs[_loc].head|tail.layers.<i>.block.<0|2>.*``    ``entropy_g|l.head|tail.blocks.<i>.<0|2>.*``
``netCprs[_loc].model.*`` (EntropyBottleneck)           ``entropy_g|l.bottleneck.*`` (compressai <1.2
                                                        ``_matrix<i>``/``_bias<i>``/``_factor<i>`` too)
``netCprs_loc.model.Encoder.conv1|gdn1|conv2|gdn2|conv3``  ``entropy_l.encoder.0|1|2|3|4``
``netCprs_loc.model.Decoder.deconv1|igdn1|…|deconv3``    ``entropy_l.decoder.0|1|2|3|4``
``netCprs_loc.model.bitEstimator.f<k>.*``               ``entropy_l.bit_estimator.f<k>.*``
=====================================================  ==============================================

Not mapped: ``netP`` (the discriminator) and compressai's coder tables (``_offset``, ``_quantized_cdf``,
``_cdf_length``: CDD never calls ``update()``, they are empty). Constants a file may lack
(BatchNorm ``num_batches_tracked``, compressai's ``target``/``likelihood_lower_bound.bound`` and GDN
reparametrisation buffers) keep their defaults. Anything else missing, extra or mis-shaped is refused.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

from redegrade.errors import CheckpointError
from redegrade.model.cdd.model import CDDModel

PARTS = ("netE", "netE_loc", "netG", "netCprs", "netCprs_loc")
"""The parts of ``checkpoint['model']`` that the model needs."""
_CODER_TABLES = ("_offset", "_quantized_cdf", "_cdf_length")
_OPTIONAL = ("num_batches_tracked", "target", "likelihood_lower_bound.bound", "_reparam.pedestal",
             "_reparam.lower_bound.bound")


_BLOCK_RULES: list[tuple[str, str]] = [
    (r"sft(\d)\.gamma\.0\.weight", r"sft\1.convs_gamma.0.conv2d.weight"),
    (r"sft(\d)\.gamma\.2\.weight", r"sft\1.convs_gamma.1.conv2d.weight"),
    (r"sft(\d)\.beta\.0\.weight", r"sft\1.convs_beta.0.conv2d.weight"),
    (r"sft(\d)\.beta\.2\.weight", r"sft\1.convs_beta.1.conv2d.weight"),
    (r"sft(\d)\.ida\.map_up\.(\w+)", r"sft\1.spatial_gamma.transform_map.0.\2"),
    (r"sft(\d)\.ida\.map_down\.(\w+)", r"sft\1.spatial_gamma.transform_map.2.\2"),
    (r"sft(\d)\.ida\.feat_down\.(\w+)", r"sft\1.spatial_gamma.transform_x.\2"),
    (r"sft(\d)\.ida\.out_up\.(\w+)", r"sft\1.spatial_gamma.deconv.\2"),
    (r"conv(\d)\.1\.weight", r"conv\1.conv2d.weight"),
]


def _block_key(rest: str) -> str:
    for pat, rep in _BLOCK_RULES:
        if re.fullmatch(pat, rest):
            return re.sub(pat, rep, rest)
    raise KeyError(rest)


def _up(m: re.Match, fmt: str) -> str:
    return fmt.format(int(m[1]) + 1)


_IC = {"encoder": ("Encoder", ("conv1", "gdn1", "conv2", "gdn2", "conv3")),
       "decoder": ("Decoder", ("deconv1", "igdn1", "deconv2", "igdn2", "deconv3"))}

_RULES: list[tuple[str, str, Callable[[re.Match], str]]] = [
    (r"hden\.(long|short)\.(\d+)\.([01])\.(.+)", "netE",
     lambda m: f"LPE_{'p' if m[1] == 'long' else 'l'}.{m[2]}.{'conv' if m[3] == '0' else 'norm'}.{m[4]}"),
    (r"hden\.head\.(\d+)\.(.+)", "netE", lambda m: f"last_mlp.{m[1]}.{m[2]}"),
    (r"iden\.long\.4\.(.+)", "netE_loc", lambda m: f"LPE_p.4.{m[1]}"),
    (r"iden\.(long|short)\.(\d+)\.([01])\.(.+)", "netE_loc",
     lambda m: f"LPE_{'p' if m[1] == 'long' else 'l'}.{m[2]}.{'conv' if m[3] == '0' else 'norm'}.{m[4]}"),
    (r"iden\.fuse\.(\d+)\.(.+)", "netE_loc", lambda m: f"last_mlp.{m[1]}.{m[2]}"),
    (r"fusion\.proj\.(.+)", "netG", lambda m: f"conv.{m[1]}"),
    (r"fusion\.head\.1\.weight", "netG", lambda m: "net.map_head.conv2d.weight"),
    (r"synthesis\.conv_first\.0\.weight", "netG", lambda m: "net.conv_first.conv2d.weight"),
    (r"synthesis\.conv_last\.1\.weight", "netG", lambda m: "net.conv_last.conv2d.weight"),
    (r"synthesis\.downsample\.(\d+)\.0\.weight", "netG", lambda m: _up(m, "net.conv_down{}.conv2d.weight")),
    (r"synthesis\.upsample\.(\d+)\.0\.weight", "netG", lambda m: _up(m, "net.conv_up{}.tconv2d.weight")),
    (r"synthesis\.skip\.(\d+)\.1\.weight", "netG", lambda m: _up(m, "net.conv_skip{}.conv2d.weight")),
    (r"synthesis\.(down|up)_blocks\.(\d+)\.(\d+)\.(.+)", "netG",
     lambda m: f"net.blocks{int(m[2]) + 1}{'_' if m[1] == 'up' else ''}.{m[3]}.{_block_key(m[4])}"),
    (r"entropy_[gl]\.(head|tail)\.blocks\.(\d+)\.(\d+)\.(.+)", "",
     lambda m: f"{m[1]}.layers.{m[2]}.block.{m[3]}.{m[4]}"),
    (r"entropy_[gl]\.bottleneck\.(.+)", "", lambda m: f"model.{m[1]}"),
    (r"entropy_l\.(encoder|decoder)\.(\d)\.(.+)", "netCprs_loc",
     lambda m: f"model.{_IC[m[1]][0]}.{_IC[m[1]][1][int(m[2])]}.{m[3]}"),
    (r"entropy_l\.bit_estimator\.(.+)", "netCprs_loc", lambda m: f"model.bitEstimator.{m[1]}"),
]


def cdd_key(ours: str) -> tuple[str, str]:
    """(CDD part, key in that part's state dict) of our state-dict key ``ours``."""
    for pat, part, fn in _RULES:
        m = re.fullmatch(pat, ours)
        if m:
            try:
                key = fn(m)
            except KeyError:
                break
            if not part:
                part = "netCprs" if ours.startswith("entropy_g.") else "netCprs_loc"
            return part, key
    raise KeyError(f"no CDD key for {ours!r}")


def _alternatives(key: str) -> list[str]:
    """Older compressai (< 1.2) names of the EntropyBottleneck's density parameters."""
    m = re.fullmatch(r"model\.(matrices|biases|factors)\.(\d+)", key)
    if not m:
        return []
    old = {"matrices": "matrix", "biases": "bias", "factors": "factor"}[m[1]]
    return [f"model._{old}{m[2]}"]


def _ignorable(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _CODER_TABLES


def map_state(parts: dict[str, dict[str, torch.Tensor]], model: CDDModel, source: str = "checkpoint"
              ) -> dict[str, torch.Tensor]:
    """Our state dict from CDD's parts, strictly: every CDD key used, every one of ours filled, shapes equal."""
    from redegrade.model.io import weights_state

    own = weights_state(model)
    state: dict[str, torch.Tensor] = {}
    used: dict[str, set[str]] = {p: set() for p in PARTS}
    missing, bad_shape = [], []
    for k, ref in own.items():
        part, ck = cdd_key(k)
        found = next((c for c in [ck, *_alternatives(ck)] if c in parts[part]), None)
        if found is None:
            if k.endswith(_OPTIONAL):
                state[k] = ref  # a constant this file's torch/compressai version did not save
            else:
                missing.append(f"{part}.{ck}")
            continue
        t = parts[part][found]
        used[part].add(found)
        if tuple(t.shape) != tuple(ref.shape):
            bad_shape.append(f"{part}.{found} {tuple(t.shape)} vs {tuple(ref.shape)}")
        state[k] = t
    extra = [f"{p}.{k}" for p in PARTS for k in parts[p] if k not in used[p] and not _ignorable(k)]
    problems = []
    for what, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", bad_shape)):
        if items:
            problems.append(f"{len(items)} {what}: {', '.join(items[:6])}{' …' if len(items) > 6 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not fit the CDD model its shapes describe: " + "; ".join(problems))
    return state
