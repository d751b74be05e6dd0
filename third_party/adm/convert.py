"""Loading ADM ``.pt`` state dicts and converting them into a diffusers ``UNet2DModel`` folder.

The one non-trivial rename is attention: ADM's ``qkv`` (Conv1d [3C, C, 1], legacy rows ordered
(heads, 3, head_dim)) becomes diffusers' ``to_q``/``to_k``/``to_v`` (Linear [C, C], head h = rows
h·d…(h+1)·d). Everything else is a name map plus these diffusers settings: positional time embedding
with cos first and no frequency shift, ``resnet_time_scale_shift="scale_shift"``, ``resnet`` up/down
blocks, ``attn_norm_num_groups=32`` (else the middle attention has no GroupNorm), GroupNorm eps 1e-5.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from redegrade.errors import CheckpointError, ConfigError
from redegrade_adm.config import ADMConfig
from redegrade_adm.unet import ADMUNet

log = logging.getLogger(__name__)

# DPS's configs/diffusion_config.yaml expressed as a diffusers DDPMScheduler config.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
    "beta_start": 0.0001, "beta_end": 0.02, "clip_sample": True, "prediction_type": "epsilon",
}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``.pt`` state dict read with ``weights_only=True`` (``module.`` prefixes stripped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ADM checkpoint {path} does not exist")
    from redegrade.weights.safe import torch_load

    sd = torch_load(path, what=f"ADM checkpoint {path}")
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _load_strict(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or bad:
        parts = [f"{name}: {', '.join(keys[:6])}{' …' if len(keys) > 6 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", bad)) if keys]
        raise CheckpointError(f"{what} does not match the architecture ({'; '.join(parts)})")
    module.load_state_dict(sd, strict=True)


def sidecar_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """``create_model`` arguments from ``<stem>.yaml``/``.yml``/``.json`` next to a checkpoint, if one exists."""
    path = Path(path)
    for suffix in (".yaml", ".yml", ".json"):
        side = path.with_suffix(suffix)
        if side.is_file():
            if suffix == ".json":
                return json.loads(side.read_text())
            import yaml

            return yaml.safe_load(side.read_text())
    return None


def config_for(path: str | os.PathLike, sd: Mapping[str, torch.Tensor]) -> ADMConfig:
    """The architecture of checkpoint ``path``: from a sidecar config (DPS's ``model_config.yaml`` keys) when
    present, else read off the tensors with DPS's 64-channel attention heads."""
    side = sidecar_config(path)
    if side is not None:
        return ADMConfig.from_create_model(**side)
    config = ADMConfig.from_state_dict(sd)
    try:
        config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{exc}; the head split is not stored in the tensors: put the model's create_model "
                          f"arguments (num_head_channels or num_heads, …) in {Path(path).with_suffix('.yaml')}") from None
    return config


def load_adm(path: str | os.PathLike, config: ADMConfig | None = None) -> ADMUNet:
    """Build the reference :class:`ADMUNet` from a ``.pt`` file, in eval mode.

    The architecture comes from ``config``, else from a sidecar ``<stem>.yaml``/``.json`` holding
    ``create_model`` arguments, else from the tensors (with DPS's 64-channel heads).
    """
    sd = read_state_dict(path)
    config = config or config_for(path, sd)
    net = ADMUNet(config)
    _load_strict(net, sd, f"ADM checkpoint {path}")
    return net.eval()


def diffusers_config(config: ADMConfig) -> dict[str, Any]:
    """The ``UNet2DModel`` constructor arguments equivalent to ``config``."""
    config.validate()
    widths = config.widths()
    head_dims = {config.head_dim(ch, up=up) for ch, up in config._attention_widths()}
    if len(head_dims) != 1:
        raise ConfigError(f"diffusers' UNet2DModel needs one attention head width, this ADM uses {sorted(head_dims)} "
                          "(num_heads fixed across widths); run it through redegrade_adm.load_adm instead")
    if widths[0] != config.model_channels:
        raise ConfigError(f"diffusers' UNet2DModel ties the time embedding to the first level's width; this ADM has "
                          f"channel_mult[0]={config.channel_mult[0]}; run it through redegrade_adm.load_adm instead")
    attn = [2 ** lvl in config.attention_ds for lvl in range(len(widths))]
    plain_down = "ResnetDownsampleBlock2D" if config.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if config.resblock_updown else "UpBlock2D"
    return {
        "sample_size": config.image_size, "in_channels": config.in_channels, "out_channels": config.out_channels,
        "block_out_channels": widths, "layers_per_block": config.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if a else plain_down for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else plain_up for a in reversed(attn)],
        "downsample_type": "resnet" if config.resblock_updown else "conv",
        "upsample_type": "resnet" if config.resblock_updown else "conv",
        "downsample_padding": 1, "attention_head_dim": head_dims.pop(), "norm_num_groups": 32,
        "attn_norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "time_embedding_type": "positional",
        "flip_sin_to_cos": True, "freq_shift": 0, "dropout": 0.0, "add_attention": True,
        "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1.0,
        "resnet_time_scale_shift": "scale_shift" if config.use_scale_shift_norm else "default",
    }


def _resblock(src: str, dst: str, sd: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    names = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
             "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
    for a, b in names.items():
        for p in ("weight", "bias"):
            if f"{src}.{a}.{p}" in sd:
                out[f"{dst}.{b}.{p}"] = sd[f"{src}.{a}.{p}"]


def _attention(src: str, dst: str, sd: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor],
               heads: int, new_order: bool) -> None:
    w = sd[f"{src}.qkv.weight"][..., 0]                                          # [3C, C]
    b = sd[f"{src}.qkv.bias"]                                                    # [3C]
    c = w.shape[1]
    d = c // heads
    if new_order:                                                               # q | k | v, each (heads, d)
        w, b = w.reshape(3, c, c), b.reshape(3, c)
    else:                                                                       # legacy: (heads, 3, d)
        w = w.reshape(heads, 3, d, c).transpose(0, 1).reshape(3, c, c)
        b = b.reshape(heads, 3, d).transpose(0, 1).reshape(3, c)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        out[f"{dst}.{name}.weight"] = w[i].contiguous()
        out[f"{dst}.{name}.bias"] = b[i].contiguous()
    out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj_out.weight"][..., 0].contiguous()
    out[f"{dst}.to_out.0.bias"] = sd[f"{src}.proj_out.bias"]
    out[f"{dst}.group_norm.weight"] = sd[f"{src}.norm.weight"]
    out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.bias"]


def _resampler(src: str, dst: str, sd: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    if f"{src}.in_layers.0.weight" in sd:                                      # resblock_updown
        _resblock(src, dst, sd, out)
    else:                                                                       # conv resample: op (down) / conv (up)
        for p in ("weight", "bias"):
            key = f"{src}.op.{p}" if f"{src}.op.{p}" in sd else f"{src}.conv.{p}"
            out[f"{dst}.conv.{p}"] = sd[key]


def to_diffusers_state_dict(sd: Mapping[str, torch.Tensor], config: ADMConfig) -> dict[str, torch.Tensor]:
    """Rename (and split qkv of) an ADM state dict into ``UNet2DModel`` keys."""
    out: dict[str, torch.Tensor] = {}

    def copy(src: str, dst: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def attn(src: str, dst: str, ch: int, up: bool = False) -> None:
        _attention(src, dst, sd, out, config.heads(ch, up=up), config.use_new_attention_order)

    widths, nrb, levels = config.widths(), config.num_res_blocks, len(config.channel_mult)
    copy("input_blocks.0.0", "conv_in")
    copy("time_embed.0", "time_embedding.linear_1")
    copy("time_embed.2", "time_embedding.linear_2")
    for lvl, width in enumerate(widths):
        first = 1 + lvl * (nrb + 1)
        for j in range(nrb):
            _resblock(f"input_blocks.{first + j}.0", f"down_blocks.{lvl}.resnets.{j}", sd, out)
            if 2 ** lvl in config.attention_ds:
                attn(f"input_blocks.{first + j}.1", f"down_blocks.{lvl}.attentions.{j}", width)
        if lvl != levels - 1:
            _resampler(f"input_blocks.{first + nrb}.0", f"down_blocks.{lvl}.downsamplers.0", sd, out)
    top = widths[-1]
    _resblock("middle_block.0", "mid_block.resnets.0", sd, out)
    attn("middle_block.1", "mid_block.attentions.0", top)
    _resblock("middle_block.2", "mid_block.resnets.1", sd, out)
    for u, lvl in enumerate(reversed(range(levels))):
        has_attn = 2 ** lvl in config.attention_ds
        for j in range(nrb + 1):
            i = u * (nrb + 1) + j
            _resblock(f"output_blocks.{i}.0", f"up_blocks.{u}.resnets.{j}", sd, out)
            if has_attn:
                attn(f"output_blocks.{i}.1", f"up_blocks.{u}.attentions.{j}", widths[lvl], up=True)
            if lvl and j == nrb:
                _resampler(f"output_blocks.{i}.{2 if has_attn else 1}", f"up_blocks.{u}.upsamplers.0", sd, out)
    copy("out.0", "conv_norm_out")
    copy("out.2", "conv_out")
    return out


def to_diffusers(net_or_sd: ADMUNet | Mapping[str, torch.Tensor], config: ADMConfig | None = None):
    """An in-memory diffusers ``UNet2DModel`` with the same weights (eval mode)."""
    from redegrade import _compat  # noqa: F401  (diffusers imports torchvision)
    from diffusers import UNet2DModel

    if isinstance(net_or_sd, ADMUNet):
        config, sd = net_or_sd.config, net_or_sd.state_dict()
    else:
        sd = dict(net_or_sd)
        config = config or ADMConfig.from_state_dict(sd)
    unet = UNet2DModel(**diffusers_config(config))
    _load_strict(unet, to_diffusers_state_dict(sd, config), "converted ADM state dict")
    return unet.eval()


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, config: ADMConfig | None = None) -> Path:
    """Convert an ADM ``.pt`` (e.g. DPS's ``ffhq_10m.pt``) into a diffusers folder ``dst``.

    The architecture is found as in :func:`load_adm`. ``dst`` gets ``config.json`` + ``diffusion_pytorch_model.safetensors`` (a ``UNet2DModel``),
    ``scheduler_config.json`` (DPS's linear 1000-step schedule, learned-range variance when the model
    predicts one) and ``adm_config.json`` (the source architecture). Written to a temporary folder
    and renamed, so a failure leaves nothing behind.
    """
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise CheckpointError(f"output folder {dst} exists and is not empty; choose a new folder")
    sd = read_state_dict(src)
    config = config or config_for(src, sd)
    unet = to_diffusers(sd, config)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        unet.save_pretrained(tmp, safe_serialization=True)
        sched = dict(SCHEDULER_CONFIG, variance_type="learned_range" if config.learn_sigma else "fixed_small")
        (tmp / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
        (tmp / "adm_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        if dst.exists():
            dst.rmdir()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s → %s (UNet2DModel, %d tensors)", src, dst, len(unet.state_dict()))
    return dst
