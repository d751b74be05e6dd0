"""Reading CDD's trainer checkpoints (``model_<epoch>.pt`` / ``latest.pt``) into :class:`~redegrade.model.cdd.CDDModel`.

The file is ``torch.save({'model': {'netE', 'netE_loc', 'netG', 'netCprs', 'netCprs_loc', 'netP'},
'epoch', 'global_step'})`` (CDD ``trainer.py: save_model``), each part a state dict; it is read with
``torch.load(weights_only=True, map_location='cpu')``, so nothing in it is executed.

**What the shapes determine** (inferred, then checked against every other tensor):
e_g encoder ``dim``, kernel and output length (``netE``: ``LPE_p.0.conv.weight``, ``LPE_p.3.conv.weight``,
``last_mlp.2.weight``); e_l encoder ``dim``, kernel and c_l (``netE_loc``: ``LPE_p.0.conv.weight``,
``LPE_p.4.weight``, ``last_mlp.2.weight``); the fused-map channels (``net.map_head``), U-Net widths and
number of levels (``net.conv_first``, ``net.conv_down<l>``), blocks per level (``net.blocks<l>[_].<i>``);
each compressor's type (``model.quantiles`` → EntropyBottleneck, ``model.Encoder.*`` → ImageCompressor),
channels, density filters, head/tail MLP depth and width.

**What they cannot determine** (read from a sidecar or flags, see :class:`CDDOptions`):

- ``compress_g`` / ``compress_l`` — CDD's ``network.netCprs[_loc].enabled``: whether the synthesis was
  trained on the entropy-coded codes. Both compressors are saved whether enabled or not. Unstated, they
  are assumed ``True`` (logged): ``netCprs.enabled: true`` in CDD's released WQI configs, and every config
  sets a ``lambda_bpp_l`` that only exists with ``netCprs_loc`` enabled. They change only what
  :meth:`CDDModel.quantize` (hence the Redegrader's forward) does, never :meth:`encode`/:meth:`synthesize`.
- ``local_encoder`` — ``LPEL`` or ``LPELOri`` (``netE_loc.type``): the same keys and shapes, different
  padding, except for kernel 3 where they are the same network. For another kernel an unstated type is
  refused.

Which blocks use ReLU instead of LeakyReLU (the last of ``blocks1_``) is fixed in CDD's code, not read.

The sidecar is CDD's own training YAML/JSON (``network.netCprs.enabled``, ``network.netCprs_loc.enabled``,
``network.netE_loc.type``, also checked: ``network.netE.moco_enc``, ``network.netG.type``) or a flat
JSON/YAML/dict with the keys of :class:`CDDOptions`.

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

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Union

import torch

from redegrade.errors import CheckpointError, ConfigError
from redegrade.model.cdd import LOCAL_ENCODERS, CDDConfig, CDDModel, CompressorSpec

log = logging.getLogger(__name__)

PARTS = ("netE", "netE_loc", "netG", "netCprs", "netCprs_loc")
"""The parts of ``checkpoint['model']`` that the model needs."""
IGNORED_PARTS = ("netP",)
"""Saved by CDD, not needed at inference (the WGAN critic)."""
_CODER_TABLES = ("_offset", "_quantized_cdf", "_cdf_length")
_OPTIONAL = ("num_batches_tracked", "target", "likelihood_lower_bound.bound", "_reparam.pedestal",
             "_reparam.lower_bound.bound")


# ------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class CDDOptions:
    """What a CDD checkpoint does not say about its model. ``None`` = not stated."""

    compress_g: bool | None = None
    """``network.netCprs.enabled``: the synthesis was trained on e_g after its entropy model."""
    compress_l: bool | None = None
    """``network.netCprs_loc.enabled``: the same for e_l."""
    local_encoder: str | None = None
    """``network.netE_loc.type``: ``LPEL`` or ``LPELOri``."""
    moco_enc: str | None = None
    """``network.netE.moco_enc`` (checked: only ``LPE`` is supported)."""
    netg_type: str | None = None
    """``network.netG.type`` (checked against the number of levels: ``…pro…`` means 5)."""

    def __post_init__(self) -> None:
        for k in ("compress_g", "compress_l"):
            if getattr(self, k) is not None and not isinstance(getattr(self, k), bool):
                raise ConfigError(f"CDD option {k} must be true or false, got {getattr(self, k)!r}")
        if self.local_encoder is not None and self.local_encoder not in LOCAL_ENCODERS:
            raise ConfigError(f"CDD option local_encoder must be one of {', '.join(LOCAL_ENCODERS)}, "
                              f"got {self.local_encoder!r}")

    def updated(self, other: "CDDOptions") -> "CDDOptions":
        """These options with every value ``other`` states."""
        return replace(self, **{f.name: v for f in fields(other) if (v := getattr(other, f.name)) is not None})

    @classmethod
    def read(cls, src: "OptionsLike") -> "CDDOptions":
        """From ``None``, a :class:`CDDOptions`, a dict or a JSON/YAML file (flat keys or CDD's config layout)."""
        if src is None:
            return cls()
        if isinstance(src, CDDOptions):
            return src
        where = "CDD options"
        if isinstance(src, (str, os.PathLike)):
            where = str(src)
            src = _read_sidecar(Path(src).expanduser())
        if not isinstance(src, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(src).__name__}")
        if "network" in src:
            net = src["network"]
            if not isinstance(net, dict):
                raise ConfigError(f"{where}: 'network' must be a mapping")

            def get(part: str, key: str) -> Any:
                sub = net.get(part)
                return sub.get(key) if isinstance(sub, dict) else None

            return cls(compress_g=get("netCprs", "enabled"), compress_l=get("netCprs_loc", "enabled"),
                       local_encoder=get("netE_loc", "type"), moco_enc=get("netE", "moco_enc"),
                       netg_type=get("netG", "type"))
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(src) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown CDD option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
                              " (or give CDD's training config with its 'network' section)")
        return cls(**src)


OptionsLike = Union[None, CDDOptions, dict, str, os.PathLike]


def _read_sidecar(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"no CDD config at {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml comes with huggingface-hub
            raise ConfigError(f"reading {path} needs PyYAML (pip install pyyaml), or give the options as JSON") from exc
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


# ------------------------------------------------------------------------------------------ reading
def is_cdd_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (a loaded file) has the layout of CDD's trainer checkpoints."""
    return (isinstance(obj, dict) and isinstance(obj.get("model"), dict)
            and all(isinstance(obj["model"].get(p), dict) for p in ("netE", "netG")))


def read_trainer_file(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a CDD trainer checkpoint safely (CPU tensors, no code) and check its layout."""
    from redegrade.weights.safe import torch_load

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"no CDD checkpoint at {path}")
    obj = torch_load(path, what=f"CDD checkpoint {path}")
    if not is_cdd_checkpoint(obj):
        raise CheckpointError(f"{path} is not a CDD trainer checkpoint: expected {{'model': {{'netE', 'netE_loc', "
                              f"'netG', 'netCprs', 'netCprs_loc', 'netP'}}, 'epoch', 'global_step'}}, got "
                              f"{_describe(obj)}")
    return obj


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return type(obj).__name__
    inner = obj.get("model")
    if isinstance(inner, dict):
        return f"'model' with {sorted(map(str, inner))[:8]}"
    return f"keys {sorted(map(str, obj))[:8]}"


def _parts(obj: dict[str, Any], source: str) -> dict[str, dict[str, torch.Tensor]]:
    model = obj["model"]
    missing = [p for p in PARTS if p not in model]
    if missing:
        raise CheckpointError(f"{source}: CDD checkpoint lacks part(s) {', '.join(missing)} "
                              f"(has {', '.join(sorted(map(str, model)))})")
    extra = sorted(set(map(str, model)) - set(PARTS) - set(IGNORED_PARTS))
    if extra:
        raise CheckpointError(f"{source}: unexpected part(s) {', '.join(extra)} in the CDD checkpoint's 'model'")
    parts = {}
    for p in PARTS:
        sd = model[p]
        if not isinstance(sd, dict):
            raise CheckpointError(f"{source}: {p} must be a state dict, got {type(sd).__name__}")
        bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{source}: {p} holds non-tensor entries: {', '.join(bad[:5])}")
        if sd and all(k.startswith("module.") for k in sd):  # saved from a DataParallel-wrapped part
            sd = {k[len("module."):]: v for k, v in sd.items()}
        parts[p] = sd
    return parts


# ------------------------------------------------------------------------------------------ config
def _tensor(parts: dict, part: str, key: str, source: str, what: str) -> torch.Tensor:
    t = parts[part].get(key)
    if t is None:
        raise CheckpointError(f"{source}: cannot infer {what}: {part} has no {key!r}")
    return t


def _count(keys, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) in ``keys``."""
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in keys if (m := rx.match(k))})


def _contiguous(found: list[int], what: str, source: str) -> int:
    if found != list(range(len(found))):
        raise CheckpointError(f"{source}: {what} are numbered {found}, not 0…{len(found) - 1}")
    return len(found)


def _mlp(sd: dict, name: str, channels: int, part: str, source: str) -> tuple[int, int]:
    n = _contiguous(_count(sd, rf"^{name}\.layers\.(\d+)\."), f"{part}'s {name} blocks", source)
    if not n:
        return 0, 0
    widths = {int(sd[f"{name}.layers.{i}.block.0.weight"].shape[0]) for i in range(n)
              if f"{name}.layers.{i}.block.0.weight" in sd}
    if len(widths) != 1:
        raise CheckpointError(f"{source}: {part}'s {name} MLP blocks have hidden widths {sorted(widths)} "
                              "(CDD builds them with one)")
    return n, widths.pop()


def _compressor(sd: dict, part: str, enabled: bool, source: str) -> CompressorSpec:
    if "model.quantiles" in sd:
        channels = int(sd["model.quantiles"].shape[0])
        mats = [sd.get(f"model.matrices.{i}", sd.get(f"model._matrix{i}")) for i in range(64)]
        mats = mats[:next((i for i, m in enumerate(mats) if m is None), len(mats))]
        if len(mats) < 2:
            raise CheckpointError(f"{source}: {part} is an EntropyBottleneck without its density matrices")
        filters = tuple(int(m.shape[1]) for m in mats[:-1])
        head, tail = _mlp(sd, "head", channels, part, source), _mlp(sd, "tail", channels, part, source)
        return CompressorSpec("EntropyBottleneck", channels, head, tail, filters, 0, enabled)
    if "model.Encoder.conv1.weight" in sd:
        w = sd["model.Encoder.conv1.weight"]
        if any(k.startswith(("head.", "tail.")) for k in sd):
            raise CheckpointError(f"{source}: {part} is an ImageCompressor with a head/tail MLP, which CDD "
                                  "cannot run (the MLPs act on a vector's channels)")
        return CompressorSpec("ImageCompressor", int(w.shape[1]), latent=int(w.shape[0]), enabled=enabled)
    raise CheckpointError(f"{source}: {part} is neither an EntropyBottleneck (model.quantiles) nor an "
                          f"ImageCompressor (model.Encoder.*): keys {sorted(sd)[:6]}")


def infer_config(parts: dict[str, dict[str, torch.Tensor]], options: CDDOptions, source: str = "checkpoint"
                 ) -> CDDConfig:
    """The :class:`CDDConfig` the state dicts describe, with ``options`` for what they cannot say."""
    g, gl, net = parts["netE"], parts["netE_loc"], parts["netG"]
    if "E.0.weight" in g and "LPE_p.0.conv.weight" not in g or (options.moco_enc not in (None, "LPE")):
        raise CheckpointError(f"{source}: netE is CDD's {options.moco_enc or 'Encoder'}, not LPE; only LPE "
                              "(every released config's moco_enc) is supported")
    k_g = int(_tensor(parts, "netE", "LPE_p.0.conv.weight", source, "the e_g encoder's kernel").shape[-1])
    dim_g_enc = int(_tensor(parts, "netE", "LPE_p.3.conv.weight", source, "the e_g encoder's dim").shape[0])
    dim_g = int(_tensor(parts, "netE", "last_mlp.2.weight", source, "the length of e_g").shape[0])
    k_l = int(_tensor(parts, "netE_loc", "LPE_p.0.conv.weight", source, "the e_l encoder's kernel").shape[-1])
    dim_l_enc = int(_tensor(parts, "netE_loc", "LPE_p.4.weight", source, "the e_l encoder's dim").shape[1])
    c_l = int(_tensor(parts, "netE_loc", "last_mlp.2.weight", source, "c_l").shape[0])
    local = options.local_encoder
    if local is None:
        if k_l != 3:
            raise CheckpointError(
                f"{source}: netE_loc has kernel {k_l}, for which CDD's LPEL and LPELOri have the same keys and "
                "shapes but different padding; say which (local_encoder: LPEL|LPELOri in a sidecar, or "
                "--local-encoder)")
        local = "LPEL"  # for kernel 3 LPELOri is the same network

    m = int(_tensor(parts, "netG", "net.map_head.conv2d.weight", source, "the map channels").shape[0])
    fuse_in = int(_tensor(parts, "netG", "conv.weight", source, "the fusion conv").shape[1])
    if fuse_in != c_l + dim_g:
        raise CheckpointError(f"{source}: netG's fusion conv reads {fuse_in} channels, but e_l has {c_l} and "
                              f"e_g {dim_g} (netE_loc and netE do not belong to this netG)")
    downs = _contiguous([i - 1 for i in _count(net, r"^net\.conv_down(\d+)\.")], "netG's conv_down<l>", source)
    levels = downs + 1
    widths = [int(_tensor(parts, "netG", "net.conv_first.conv2d.weight", source, "the U-Net width").shape[0])]
    widths += [int(net[f"net.conv_down{lv}.conv2d.weight"].shape[0]) for lv in range(1, levels)
               if f"net.conv_down{lv}.conv2d.weight" in net]
    if len(widths) != levels:
        raise CheckpointError(f"{source}: netG's conv_down<l> layers lack their conv2d.weight")
    blocks = [_contiguous(_count(net, rf"^net\.blocks{lv}\.(\d+)\."), f"netG's blocks{lv}", source)
              for lv in range(1, levels + 1)]
    blocks_up = [_contiguous(_count(net, rf"^net\.blocks{lv}_\.(\d+)\."), f"netG's blocks{lv}_", source)
                 for lv in range(1, levels)]
    if options.netg_type is not None:
        want = 5 if "pro" in options.netg_type.lower() else 3
        if not options.netg_type.lower().startswith("sft-1-wrapper") or want != levels:
            raise CheckpointError(f"{source}: the config's netG type {options.netg_type!r} does not describe this "
                                  f"{levels}-level netG (supported: sft-1-wrapper[-pro])")

    comp_g = _compressor(parts["netCprs"], "netCprs", options.compress_g is not False, source)
    comp_l = _compressor(parts["netCprs_loc"], "netCprs_loc", options.compress_l is not False, source)
    try:
        return CDDConfig(enc_dim_g=dim_g_enc, enc_kernel_g=k_g, dim_g=dim_g, local_encoder=local, enc_dim_l=dim_l_enc,
                         enc_kernel_l=k_l, c_l=c_l, map_channels=m, widths=tuple(widths), blocks=tuple(blocks),
                         blocks_up=tuple(blocks_up), compressor_g=comp_g, compressor_l=comp_l)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: the CDD checkpoint describes no model we can build: {exc}") from exc


# ------------------------------------------------------------------------------------------ key map
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


# ------------------------------------------------------------------------------------------ public
def from_trainer_checkpoint(obj: dict[str, Any], options: OptionsLike = None, source: str = "checkpoint"
                            ) -> tuple[CDDConfig, dict[str, torch.Tensor]]:
    """(config, our state dict) from a loaded CDD trainer checkpoint."""
    try:
        opts = CDDOptions.read(options)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    parts = _parts(obj, source)
    config = infer_config(parts, opts, source)
    with torch.device("cpu"):
        model = CDDModel(config)
    state = map_state(parts, model, source)
    assumed = [k for k in ("compress_g", "compress_l") if getattr(opts, k) is None]
    if assumed:
        log.warning("%s: %s not stated (CDD's netCprs[_loc].enabled is not saved in checkpoints); assumed true. "
                    "Give CDD's training config as a sidecar, or --compress-g/--no-compress-g etc., to change it.",
                    source, " and ".join(assumed))
    return config, state


def load_cdd(path: str | os.PathLike, options: OptionsLike = None) -> CDDModel:
    """A :class:`CDDModel` (eval mode) from a CDD trainer checkpoint file."""
    config, state = from_trainer_checkpoint(read_trainer_file(path), options, str(path))
    from redegrade.model.io import load_weights

    model = CDDModel(config)
    load_weights(model, state, source=str(path))
    return model.eval()


def convert(src: str | os.PathLike, dst: str | os.PathLike, options: OptionsLike = None) -> Path:
    """Convert a CDD trainer checkpoint into a redegrader folder (``config.json`` + ``model.safetensors``)."""
    from redegrade.model.io import save_state

    model = load_cdd(src, options)
    out = save_state(model, dst)
    log.info("converted CDD checkpoint %s into %s (%d levels, widths %s, c_l %d)", src, out, model.config.levels,
             list(model.config.widths), model.config.c_l)
    return out
