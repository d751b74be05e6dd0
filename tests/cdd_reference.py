"""An independent, functional re-statement of CDD's inference, for the CDD reader's tests.

Written from the structure of CDD's source (content-degradation-disentanglement @ 47cd584:
``model/blindsr.py`` LPE, ``model/blindsrlocal.py`` LPEL/IDADepthwiseConv, ``model/vunet_conv.py``,
``model/modules.py``, ``model/combined_model.py``, ``model/compressors.py``), working on the raw
CDD-layout state dicts with ``F.conv2d`` & co. It imports nothing from ``redegrade``: a wrong key
mapping, noise order, activation or input convention in the converter shows up as a mismatch.

:func:`make_checkpoint` writes random CDD-layout checkpoints in CDD's trainer format, by CDD's key
names and shapes (the fixtures the converter is tested on).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# the block counts CDD's code fixes (vunet_conv.py: VUNet / VUNetPro)
VUNET_DOWN, VUNET_UP = (4, 3, 2), {2: 3, 1: 4}                  # blocks1..3; blocks2_, blocks1_
PRO_DOWN, PRO_UP = (4, 3, 2, 2, 2), {4: 2, 3: 2, 2: 3, 1: 4}


@dataclass(frozen=True)
class Spec:
    """The CDD config values a fixture uses (names as in CDD's YAML)."""

    moco_enc_dim: int = 8          # netE.moco_enc_dim
    moco_enc_kernel: int = 3       # netE.moco_enc_kernel
    out_dim: int = 256             # MoCo out_dim (fixed at 256 in CDD; BasicWrapper emb_dim)
    loc_dim: int = 8               # netE_loc.moco_enc_dim
    loc_kernel: int = 3            # netE_loc.moco_enc_kernel
    loc_type: str = "LPEL"
    c_l: int = 4                   # netE_loc.out_dim
    n_filter: int = 4              # BasicWrapper n_filter (64 in CDD)
    proj_dim_noise: int = 4        # netG.proj_dim_noise (8 in CDD)
    pro: bool = False              # netG.type sft-1-wrapper-pro → VUNetPro
    cprs_head: int = 2             # netCprs.head.layers
    cprs_tail: int = 2
    cprs_loc: str = "EntropyBottleneck"   # or "ImageCompressor"
    ic_latent: int = 6             # ImageCompressor out_channel_N
    old_compressai: bool = False   # _matrix0 etc. (compressai < 1.2 names)


# ------------------------------------------------------------------------------ random checkpoints
class _Rand:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def w(self, *shape, fan_in: int | None = None, gain: float = 1.0) -> torch.Tensor:
        fan_in = fan_in or (math.prod(shape[1:]) if len(shape) > 1 else shape[0])
        return torch.randn(shape, generator=self.g) * (gain / math.sqrt(fan_in))

    def n(self, *shape, std: float = 0.1, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(shape, generator=self.g)

    def u(self, *shape, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=self.g)


def _conv_block(sd, r, prefix, cin, cout, k):
    sd[prefix + "conv.weight"] = r.w(cout, cin, k, k)
    sd[prefix + "conv.bias"] = r.n(cout)
    sd[prefix + "norm.weight"] = r.n(cout, mean=1.0)
    sd[prefix + "norm.bias"] = r.n(cout)
    sd[prefix + "norm.running_mean"] = r.n(cout, std=0.3)
    sd[prefix + "norm.running_var"] = r.u(cout, lo=0.5, hi=2.0)
    sd[prefix + "norm.num_batches_tracked"] = torch.tensor(1234)


def _short(sd, r, d):
    q, h = d // 4, d // 2
    for i, (cin, cout, k) in enumerate([(3, q, 3), (q, q, 1), (q, h, 3), (h, h, 1), (h, d, 3), (d, d, 1)]):
        _conv_block(sd, r, f"LPE_l.{i}.", cin, cout, k)


def _lpe(r, s: Spec):
    sd, d, k = {}, s.moco_enc_dim, s.moco_enc_kernel
    q, h = d // 4, d // 2
    for i, (cin, cout, kk) in enumerate([(3, q, k), (q, q, 3), (q, h, 3), (h, d, 3)]):
        _conv_block(sd, r, f"LPE_p.{i}.", cin, cout, kk)
    _short(sd, r, d)
    sd["last_mlp.0.weight"], sd["last_mlp.0.bias"] = r.w(d, 2 * d), r.n(d)
    sd["last_mlp.2.weight"], sd["last_mlp.2.bias"] = r.w(s.out_dim, d), r.n(s.out_dim)
    return sd


def _lpel(r, s: Spec):
    sd, d, k = {}, s.loc_dim, s.loc_kernel
    q, h = d // 4, d // 2
    for i, (cin, cout, kk) in enumerate([(3, q, k), (q, q, 3), (q, h, 3), (h, h, 3)]):
        _conv_block(sd, r, f"LPE_p.{i}.", cin, cout, kk)
    sd["LPE_p.4.weight"], sd["LPE_p.4.bias"] = r.w(h, d, k, k, fan_in=h * k * k), r.n(d)
    _short(sd, r, d)
    sd["last_mlp.0.weight"], sd["last_mlp.0.bias"] = r.w(d, 2 * d, 1, 1), r.n(d)
    # a larger gain and bias spread keep the sigmoid's outputs away from 0.5 (e_l spans (0, 1))
    sd["last_mlp.2.weight"], sd["last_mlp.2.bias"] = r.w(s.c_l, d, 1, 1, gain=3.0), r.n(s.c_l, std=1.0)
    return sd


def _sft(sd, r, p, m, c):
    red, mid = (m + c) // 4, (c + m) // 2
    sd[p + "convs_gamma.0.conv2d.weight"] = r.w(red, m, 1, 1)
    sd[p + "convs_gamma.1.conv2d.weight"] = r.w(c, red, 1, 1, gain=0.5)
    sd[p + "convs_beta.0.conv2d.weight"] = r.w(red, m + 1, 1, 1, gain=2.0)
    sd[p + "convs_beta.1.conv2d.weight"] = r.w(c, red, 1, 1)
    sd[p + "spatial_gamma.transform_map.0.weight"] = r.w(m, mid, 2, 2, fan_in=m)
    sd[p + "spatial_gamma.transform_map.2.weight"] = r.w(mid, mid, 3, 3)
    sd[p + "spatial_gamma.transform_x.weight"] = r.w(mid, c, 3, 3)
    sd[p + "spatial_gamma.deconv.weight"] = r.w(mid, c, 2, 2, fan_in=mid, gain=0.5)
    sd[p + "spatial_gamma.deconv.bias"] = r.n(c)


def _vunet(r, s: Spec):
    sd, m = {}, s.proj_dim_noise
    down, up = (PRO_DOWN, PRO_UP) if s.pro else (VUNET_DOWN, VUNET_UP)
    widths = [s.n_filter * 2 ** i for i in range(len(down))]
    sd["conv.weight"], sd["conv.bias"] = r.w(m, s.c_l + s.out_dim, 3, 3, gain=2.0), r.n(m, std=0.3)
    sd["net.map_head.conv2d.weight"] = r.w(m, m, 3, 3, gain=2.0)
    sd["net.conv_first.conv2d.weight"] = r.w(widths[0], 3, 3, 3)

    def block(prefix, c):
        for j in (1, 2):
            _sft(sd, r, f"{prefix}sft{j}.", m, c)
            sd[f"{prefix}conv{j}.conv2d.weight"] = r.w(c, c, 3, 3, gain=0.7)

    for lv, n in enumerate(down, start=1):
        for i in range(n):
            block(f"net.blocks{lv}.{i}.", widths[lv - 1])
        if lv < len(down):
            sd[f"net.conv_down{lv}.conv2d.weight"] = r.w(widths[lv], widths[lv - 1], 4, 4)
            sd[f"net.conv_up{lv}.tconv2d.weight"] = r.w(widths[lv], widths[lv - 1], 4, 4, fan_in=widths[lv] * 4)
            sd[f"net.conv_skip{lv}.conv2d.weight"] = r.w(widths[lv - 1], 2 * widths[lv - 1], 3, 3)
    for lv, n in up.items():
        for i in range(n):
            block(f"net.blocks{lv}_.{i}.", widths[lv - 1])
    sd["net.conv_last.conv2d.weight"] = r.w(3, widths[0], 1, 1)
    return sd


def _entropy_bottleneck(r, channels: int, old: bool, head: int = 0, tail: int = 0):
    from compressai.entropy_models import EntropyBottleneck

    eb = EntropyBottleneck(channels)
    sd = {}
    for k, v in eb.state_dict().items():
        if k == "quantiles":  # medians off the integer grid, so rounding "around the medians" matters
            v = v.clone()
            v[:, 0, 1] = r.u(channels, lo=-2.0, hi=2.0)
            v[:, 0, 0] = v[:, 0, 1] - 5
            v[:, 0, 2] = v[:, 0, 1] + 5
        elif k.startswith(("matrices", "biases", "factors")):
            v = v + r.n(*v.shape)
            if old:
                kind, i = k.split(".")
                k = "_" + {"matrices": "matrix", "biases": "bias", "factors": "factor"}[kind] + i
        sd["model." + k] = v
    mid = channels // 4
    for name, n in (("head", head), ("tail", tail)):
        for i in range(n):
            p = f"{name}.layers.{i}.block."
            sd[p + "0.weight"], sd[p + "0.bias"] = r.w(mid, channels), r.n(mid)
            sd[p + "2.weight"], sd[p + "2.bias"] = r.w(channels, mid), r.n(channels)
    return sd


def _image_compressor(r, cin: int, n: int):
    sd = {}

    def gdn(p):
        sd[p + "beta"] = r.u(n, lo=0.8, hi=1.2)
        sd[p + "gamma"] = (0.1 * torch.eye(n) + r.u(n, n, lo=0.0, hi=0.05)).sqrt()

    sd["model.Encoder.conv1.weight"], sd["model.Encoder.conv1.bias"] = r.w(n, cin, 9, 9), r.n(n)
    gdn("model.Encoder.gdn1.")
    sd["model.Encoder.conv2.weight"], sd["model.Encoder.conv2.bias"] = r.w(n, n, 5, 5), r.n(n)
    gdn("model.Encoder.gdn2.")
    sd["model.Encoder.conv3.weight"] = r.w(n, n, 5, 5, gain=4.0)
    sd["model.Decoder.deconv1.weight"], sd["model.Decoder.deconv1.bias"] = r.w(n, n, 5, 5), r.n(n)
    gdn("model.Decoder.igdn1.")
    sd["model.Decoder.deconv2.weight"], sd["model.Decoder.deconv2.bias"] = r.w(n, n, 5, 5), r.n(n)
    gdn("model.Decoder.igdn2.")
    sd["model.Decoder.deconv3.weight"] = r.w(n, cin, 9, 9, fan_in=n * 4)
    sd["model.Decoder.deconv3.bias"] = r.n(cin, mean=0.5)
    for i in range(1, 5):
        for p in ("h", "b", "a") if i < 4 else ("h", "b"):
            sd[f"model.bitEstimator.f{i}.{p}"] = r.n(1, n, 1, 1, std=0.01)
    return sd


def make_state(spec: Spec = Spec(), seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """``checkpoint['model']`` of a random CDD model: {'netE', 'netE_loc', 'netG', 'netCprs', 'netCprs_loc', 'netP'}."""
    r = _Rand(seed)
    loc = (_entropy_bottleneck(r, spec.c_l, spec.old_compressai) if spec.cprs_loc == "EntropyBottleneck"
           else _image_compressor(r, spec.c_l, spec.ic_latent))
    return {
        "netE": _lpe(r, spec),
        "netE_loc": _lpel(r, spec),
        "netG": _vunet(r, spec),
        "netCprs": _entropy_bottleneck(r, spec.out_dim, spec.old_compressai, spec.cprs_head, spec.cprs_tail),
        "netCprs_loc": loc,
        "netP": {"model.0.weight": r.w(8, 3, 4, 4), "linear.weight": r.w(1, 8)},
    }


def make_checkpoint(path, spec: Spec = Spec(), seed: int = 0):
    """Write a CDD trainer checkpoint (``Trainer.save_model``'s dict) to ``path``; returns the parts."""
    parts = make_state(spec, seed)
    torch.save({"model": parts, "epoch": 7, "global_step": 12345}, path)
    return parts


# ------------------------------------------------------------------------------ CDD's forward
def _cb(sd, p, x, stride, pad):
    """common.Conv2dBlock(norm='batch', activation='lrelu', pad_type='zero') in eval mode."""
    x = F.conv2d(F.pad(x, (pad,) * 4), sd[p + "conv.weight"], sd[p + "conv.bias"], stride)
    x = F.batch_norm(x, sd[p + "norm.running_mean"], sd[p + "norm.running_var"], sd[p + "norm.weight"],
                     sd[p + "norm.bias"], False, 0.1, 1e-5)
    return F.leaky_relu(x, 0.2)


def _short_fwd(sd, y):
    x = y
    for i, (stride, pad) in enumerate([(1, 1), (1, 0), (2, 1), (1, 0), (1, 1), (1, 0)]):
        x = _cb(sd, f"LPE_l.{i}.", x, stride, pad)
    return x


def lpe(sd, y):
    """netE.encoder_q(y)[0] (LPE): e_g."""
    k = sd["LPE_p.0.conv.weight"].shape[-1]
    a = _cb(sd, "LPE_p.0.", y, int((k - 1) / 2), 0)
    for i in (1, 2, 3):
        a = _cb(sd, f"LPE_p.{i}.", a, 1, 1)
    b = _short_fwd(sd, y)
    fea = torch.cat([F.adaptive_avg_pool2d(a, 1).squeeze(-1).squeeze(-1),
                     F.adaptive_avg_pool2d(b, 1).squeeze(-1).squeeze(-1)], dim=1)
    h = F.leaky_relu(F.linear(fea, sd["last_mlp.0.weight"], sd["last_mlp.0.bias"]), 0.1)
    return F.linear(h, sd["last_mlp.2.weight"], sd["last_mlp.2.bias"])


def lpel(sd, y, kind="LPEL"):
    """netE_loc(y)[0] (LPEL or LPELOri): e_l."""
    k = sd["LPE_p.0.conv.weight"].shape[-1]
    s = (k - 1) // 2
    a = _cb(sd, "LPE_p.0.", y, s, s // 2 if kind == "LPEL" else 0)
    for i in (1, 2, 3):
        a = _cb(sd, f"LPE_p.{i}.", a, 1, 1)
    a = F.avg_pool2d(F.conv_transpose2d(a, sd["LPE_p.4.weight"], sd["LPE_p.4.bias"], stride=s), 2)
    b = _short_fwd(sd, y)
    if kind == "LPEL" and a.shape[-1] != b.shape[-1]:
        assert 0 < a.shape[-1] - b.shape[-1] < s
        a = a[:, :, :b.shape[-2], :b.shape[-1]]
    h = F.leaky_relu(F.conv2d(torch.cat([a, b], 1), sd["last_mlp.0.weight"], sd["last_mlp.0.bias"]), 0.1)
    return torch.sigmoid(F.conv2d(h, sd["last_mlp.2.weight"], sd["last_mlp.2.bias"]))


def _lrelu(x):
    return F.leaky_relu(x, 0.01)  # vunet_conv.act_lrelu = nn.LeakyReLU()


def _sft_fwd(sd, p, x, cond, act, draw):
    b, _, h, w = x.shape
    z_sm = cond if cond.shape[-2:] == (h // 2, w // 2) else F.interpolate(cond, size=(h // 2, w // 2),
                                                                          mode="bilinear", align_corners=True)
    z = cond if cond.shape[-2:] == (h, w) else F.interpolate(cond, size=(h, w), mode="bilinear", align_corners=True)
    gamma = F.conv2d(act(F.conv2d(z, sd[p + "convs_gamma.0.conv2d.weight"])), sd[p + "convs_gamma.1.conv2d.weight"])
    random_z = draw([b, 1, h, w])
    beta = F.conv2d(act(F.conv2d(torch.cat([z, random_z], 1), sd[p + "convs_beta.0.conv2d.weight"])),
                    sd[p + "convs_beta.1.conv2d.weight"])
    tx = F.conv2d(x, sd[p + "spatial_gamma.transform_x.weight"], stride=2, padding=1)
    tm = F.leaky_relu(F.conv_transpose2d(z_sm, sd[p + "spatial_gamma.transform_map.0.weight"], stride=2), 0.1)
    tm = F.conv2d(tm, sd[p + "spatial_gamma.transform_map.2.weight"], stride=2, padding=1)
    ida = F.conv_transpose2d(tx * tm, sd[p + "spatial_gamma.deconv.weight"], sd[p + "spatial_gamma.deconv.bias"],
                             stride=2)
    return x * (1 + gamma) + beta + ida


def _block_fwd(sd, p, x, cond, act, draw):
    y = _sft_fwd(sd, p + "sft1.", x, cond, act, draw)
    y = F.conv2d(act(y), sd[p + "conv1.conv2d.weight"], padding=1)
    y = _sft_fwd(sd, p + "sft2.", y, cond, act, draw)
    y = F.conv2d(act(y), sd[p + "conv2.conv2d.weight"], padding=1)
    return y + x


def net_g(sd, x, e_g, e_l, *, draw=None, pro=False, last_act=F.relu, input_map=lambda c: c * 2 - 1):
    """netG(x, e_g, e_l) (BasicWrapper + VUNet/VUNetPro). Noise: ``draw(shape)``, default the global
    RNG's ``torch.randn`` as in CDD's SFTLayer (call ``torch.manual_seed`` first). ``last_act`` and
    ``input_map`` exist only to show the tests would catch a wrong activation or input convention."""
    draw = draw or (lambda shape: torch.randn(shape))
    k_v = e_g.unsqueeze(2).unsqueeze(3).repeat(1, 1, e_l.shape[2], e_l.shape[3])
    cond = F.conv2d(torch.cat([e_l, k_v], 1), sd["conv.weight"], sd["conv.bias"], padding=1)
    down, up = (PRO_DOWN, PRO_UP) if pro else (VUNET_DOWN, VUNET_UP)
    y = F.conv2d(input_map(x), sd["net.conv_first.conv2d.weight"], padding=1)
    cond = F.conv2d(F.relu(cond), sd["net.map_head.conv2d.weight"], padding=1)
    skips = {}
    for lv, n in enumerate(down, start=1):
        for i in range(n):
            y = _block_fwd(sd, f"net.blocks{lv}.{i}.", y, cond, _lrelu, draw)
        if lv < len(down):
            skips[lv] = y
            y = F.conv2d(y, sd[f"net.conv_down{lv}.conv2d.weight"], stride=2, padding=1)
    for lv in sorted(up, reverse=True):
        y = F.conv_transpose2d(y, sd[f"net.conv_up{lv}.tconv2d.weight"], stride=2, padding=1)
        y = F.conv2d(_lrelu(torch.cat([y, skips[lv]], 1)), sd[f"net.conv_skip{lv}.conv2d.weight"], padding=1)
        for i in range(up[lv]):
            act = last_act if (lv == 1 and i == up[lv] - 1) else _lrelu
            y = _block_fwd(sd, f"net.blocks{lv}_.{i}.", y, cond, act, draw)
    return F.conv2d(_lrelu(y), sd["net.conv_last.conv2d.weight"])


def _mlp(sd, name, x):
    i = 0
    while f"{name}.layers.{i}.block.0.weight" in sd:
        p = f"{name}.layers.{i}.block."
        x = x + F.linear(F.relu(F.linear(x, sd[p + "0.weight"], sd[p + "0.bias"])), sd[p + "2.weight"], sd[p + "2.bias"])
        i += 1
    return x


def entropy_bottleneck(sd, e):
    """CompressorWraper(EntropyBottleneck) in eval mode: head → round around the medians → tail."""
    e = _mlp(sd, "head", e)
    med = sd["model.quantiles"][:, 0, 1].reshape(1, -1, *([1] * (e.dim() - 2)))
    e = torch.round(e - med) + med
    return _mlp(sd, "tail", e)


def _gdn(sd, p, x, inverse):
    """GDN of liujiaheng/iclr_17_compression (beta_min 1e-6, reparam_offset 2**-18)."""
    ped = (2 ** -18) ** 2
    beta = torch.clamp(sd[p + "beta"], min=(1e-6 + ped) ** 0.5) ** 2 - ped
    gamma = torch.clamp(sd[p + "gamma"], min=2 ** -18) ** 2 - ped
    norm = torch.sqrt(F.conv2d(x ** 2, gamma.view(*gamma.shape, 1, 1), beta))
    return x * norm if inverse else x / norm


def image_compressor(sd, e):
    """ImageCompressor in eval mode: analysis → round → synthesis → clamp [0, 1]."""
    f = _gdn(sd, "model.Encoder.gdn1.", F.conv2d(e, sd["model.Encoder.conv1.weight"], sd["model.Encoder.conv1.bias"],
                                                 stride=4, padding=4), False)
    f = _gdn(sd, "model.Encoder.gdn2.", F.conv2d(f, sd["model.Encoder.conv2.weight"], sd["model.Encoder.conv2.bias"],
                                                 stride=2, padding=2), False)
    f = torch.round(F.conv2d(f, sd["model.Encoder.conv3.weight"], stride=2, padding=2))
    d = sd
    x = _gdn(d, "model.Decoder.igdn1.", F.conv_transpose2d(f, d["model.Decoder.deconv1.weight"],
                                                           d["model.Decoder.deconv1.bias"], 2, 2, 1), True)
    x = _gdn(d, "model.Decoder.igdn2.", F.conv_transpose2d(x, d["model.Decoder.deconv2.weight"],
                                                           d["model.Decoder.deconv2.bias"], 2, 2, 1), True)
    x = F.conv_transpose2d(x, d["model.Decoder.deconv3.weight"], d["model.Decoder.deconv3.bias"], 4, 4, 3)
    return x.clamp(0.0, 1.0)


def compress(sd, e):
    return entropy_bottleneck(sd, e) if "model.quantiles" in sd else image_compressor(sd, e)
