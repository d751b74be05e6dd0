"""The :class:`~redegrade.model.cdd.config.CDDConfig` that a CDD trainer checkpoint's tensor shapes describe."""
from __future__ import annotations

import re

import torch

from redegrade.errors import CheckpointError, ConfigError
from redegrade.model.cdd.config import CDDConfig, CompressorSpec
from redegrade.model.cdd.options import CDDOptions


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
    g, net = parts["netE"], parts["netG"]
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
