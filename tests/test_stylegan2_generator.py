"""StyleGAN2 generator (third_party/stylegan2): maths checked against independent hand computations,
W/W+/W++ equivalence, truncation and noise modes, the fused CUDA ops and their fallback."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from redegrade.errors import ShapeError
from redegrade_stylegan2 import Generator, tiny_generator
from redegrade_stylegan2.networks import modulated_conv2d
from redegrade_stylegan2.ops import bias_act as ba
from redegrade_stylegan2.ops import upfirdn2d as ud

from stylegan2_helpers import RES, _gen


@pytest.fixture(scope="module")
def G():
    return tiny_generator(RES, seed=0, conv_clamp=4.0, num_fp16_res=2)


# ---------------------------------------------------------------- independent maths

def test_mapping_matches_hand_computation(G, z):
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    for i in range(2):
        fc = getattr(G.mapping, f"fc{i}")
        w, b = fc.weight * (0.01 / math.sqrt(fc.weight.shape[1])), fc.bias * 0.01
        x = F.leaky_relu(x @ w.t() + b, 0.2) * math.sqrt(2)
    ws = G.mapping(z, None)
    assert ws.shape == (2, G.num_ws, G.w_dim)
    torch.testing.assert_close(ws, x[:, None].expand(-1, G.num_ws, -1), atol=1e-5, rtol=1e-5)


def _layer_by_hand(layer, x, w, noise, *, up):
    """One SynthesisLayer per sample, written independently: modulate, demodulate, (upsample: zero-insert,
    [1,3,3,1] FIR ×4, then a true convolution), noise, bias, lrelu·√2, clamp."""
    styles = w @ (layer.affine.weight / math.sqrt(w.shape[1])).t() + layer.affine.bias
    out = []
    for b in range(x.shape[0]):
        k = layer.weight * styles[b][None, :, None, None]
        k = k / (k.square().sum([1, 2, 3], keepdim=True) + 1e-8).sqrt()
        if up == 1:
            y = F.conv2d(x[b:b + 1], k, padding=1)
        else:  # the upsampling layer convolves (flipped kernel), as NVIDIA's transposed-conv route does
            xu = ud.upfirdn2d_ref(x[b:b + 1], layer.resample_filter, up=2, padding=[3, 2, 3, 2], gain=4)
            y = F.conv2d(xu, k.flip([2, 3]))
        out.append(y)
    y = torch.cat(out) + noise * layer.noise_strength + layer.bias[None, :, None, None]
    y = F.leaky_relu(y, 0.2) * math.sqrt(2)
    return y.clamp(-layer.conv_clamp, layer.conv_clamp) if layer.conv_clamp is not None else y


@pytest.mark.parametrize("name,up", [("b8.conv1", 1), ("b8.conv0", 2), ("b16.conv0", 2)])
def test_synthesis_layer_matches_hand_computation(G, name, up):
    block, lname = name.split(".")
    layer = getattr(getattr(G.synthesis, block), lname)
    x = torch.randn(2, layer.weight.shape[1], layer.resolution // up, layer.resolution // up, generator=_gen(2)) * 3
    w = torch.randn(2, G.w_dim, generator=_gen(3))
    got = layer(x, w, noise_mode="const")
    want = _layer_by_hand(layer, x, w, layer.noise_const, up=up)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got.abs() == layer.conv_clamp).any()  # the clamp is active in fp32 (num_fp16_res > 0)


def test_torgb_and_skip_architecture_by_hand(G, z):
    """ToRGB: 1×1 modulated conv with weight gain 1/√C, no demodulation; image = up(img) + torgb(x)."""
    ws = G.mapping(z, None)
    s = G.synthesis
    x4, img4 = s.b4(None, None, ws[:, None, 0:2].transpose(1, 2).reshape(2, 2, 1, -1))
    x8, img8 = s.b8(x4, img4, ws[:, 1:4, None])
    t = s.b8.torgb
    styles = (ws[:, 3] @ (t.affine.weight / math.sqrt(G.w_dim)).t() + t.affine.bias) / math.sqrt(t.weight.shape[1])
    rgb = torch.einsum("oi,bi,bihw->bohw", t.weight[:, :, 0, 0], styles, x8) + t.bias[None, :, None, None]
    rgb = rgb.clamp(-t.conv_clamp, t.conv_clamp)
    up = ud.upfirdn2d_ref(img4, s.b8.resample_filter, up=2, padding=[2, 1, 2, 1], gain=4)
    torch.testing.assert_close(img8, up + rgb, atol=1e-5, rtol=1e-5)


def test_wpp_is_a_per_output_input_modulation_matrix():
    weight = torch.randn(4, 3, 3, 3, generator=_gen(4))
    styles = torch.rand(2, 6, 3, generator=_gen(5)) + 0.5          # V = 6 ≥ 4 output channels
    x = torch.randn(2, 3, 8, 8, generator=_gen(6))
    got = modulated_conv2d(x, weight, styles, padding=1)
    for b in range(2):
        k = weight * styles[b, :4, :, None, None]
        k = k / (k.square().sum([1, 2, 3], keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(got[b:b + 1], F.conv2d(x[b:b + 1], k, padding=1), atol=1e-5, rtol=1e-5)


def test_upfirdn2d_reference_and_kernel_adjoint():
    """The custom-kernel autograd wrapper (used with CUDA) has an exact adjoint; checked on CPU by plugging
    a reference in place of the kernel."""
    def kernel(x, w, upx, upy, downx, downy, px0, px1, py0, py1):
        return ud.upfirdn2d_ref(x, w, up=(upx, upy), down=(downx, downy), padding=[px0, px1, py0, py1],
                                flip_filter=True)

    f = ud.setup_filter([1, 3, 3, 1]).double()
    for up, down, pad in [(2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (2, 2, [1, 2, 0, 3])]:
        x = torch.randn(1, 1, 4, 5, dtype=torch.float64, generator=_gen(7), requires_grad=True)
        fn = lambda x: ud.upfirdn2d_kernel(x, f, up=up, down=down, padding=pad, gain=3.0, kernel=kernel)  # noqa: E731
        torch.testing.assert_close(fn(x), ud.upfirdn2d_ref(x, f, up=up, down=down, padding=pad, gain=3.0))
        assert torch.autograd.gradcheck(fn, (x,))
    # the resampling filter NVIDIA stores: [1,3,3,1] ⊗ [1,3,3,1] / 64
    torch.testing.assert_close(ud.setup_filter([1, 3, 3, 1]), torch.tensor([1., 3, 3, 1]).outer(torch.tensor([1., 3, 3, 1])) / 64)


# ---------------------------------------------------------------- latent spaces, truncation, noise

def test_w_wplus_wpp_give_the_same_image(G, z):
    w = G.mapping(z, None)[:, :1]
    img_w = G.synthesis(w.expand(-1, G.num_ws, -1))
    wplus = w.repeat(1, G.num_ws, 1)
    torch.testing.assert_close(G.synthesis(wplus), img_w, atol=0, rtol=0)
    wpp = wplus.repeat_interleave(G.w_dim, dim=1)                       # [B, num_ws·V, w_dim], V = w_dim
    assert wpp.shape == (2, G.num_ws * G.w_dim, G.w_dim)
    torch.testing.assert_close(G.synthesis(wpp), img_w, atol=2e-5, rtol=1e-5)
    # each space really has its own degrees of freedom
    wplus2 = wplus.clone(); wplus2[:, 3] += 0.5
    assert (G.synthesis(wplus2) - img_w).abs().max() > 1e-3
    wpp2 = wpp.clone(); wpp2[:, 3 * G.w_dim + 1] += 0.5                 # layer 3, output channel 1 only
    assert (G.synthesis(wpp2) - img_w).abs().max() > 1e-3
    with pytest.raises(ShapeError):
        G.synthesis(wplus.repeat_interleave(2, dim=1))                  # V = 2 < the widest layer


def test_truncation_as_nvidia_documents(G, z):
    ws = G.mapping(z, None)
    torch.testing.assert_close(G.mapping(z, None, truncation_psi=1), ws)
    avg = G.mapping.w_avg
    torch.testing.assert_close(G.mapping(z, None, truncation_psi=0), avg.expand_as(ws))
    t = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(t[:, :3], avg + 0.5 * (ws[:, :3] - avg))
    torch.testing.assert_close(t[:, 3:], ws[:, 3:])
    imgs = G(z, None, truncation_psi=0, noise_mode="const")
    torch.testing.assert_close(imgs[0], imgs[1])                       # ψ = 0: every z gives the mean image


def test_noise_modes(G, z):
    ws = G.mapping(z, None)
    const = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(G.synthesis(ws), const)                 # default is deterministic
    layers = [l for b in G.synthesis.blocks() for l in b.layers()]
    assert [tuple(l.noise_const.shape) for l in layers] == G.synthesis.noise_shapes
    torch.testing.assert_close(G.synthesis(ws, noise=[l.noise_const for l in layers]), const)
    none = G.synthesis(ws, noise_mode="none")
    torch.testing.assert_close(G.synthesis(ws, noise=[torch.zeros(1) for _ in layers]), none)
    r1 = G.synthesis(ws, noise_mode="random", generator=_gen(9))
    torch.testing.assert_close(G.synthesis(ws, noise_mode="random", generator=_gen(9)), r1)
    for a, b in [(r1, G.synthesis(ws, noise_mode="random", generator=_gen(10))), (r1, const), (const, none)]:
        assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode="fixed")


def test_ffhq1024_layout_and_names():
    with torch.device("meta"):
        G = Generator(512, 0, 512, 1024, 3, mapping_kwargs={"num_layers": 8}, synthesis_kwargs={"channel_base": 32768})
    sd = G.state_dict()
    assert G.num_ws == 18 and G.synthesis.wpp_vectors == 512
    expect = {"mapping.fc7.weight": (512, 512), "mapping.w_avg": (512,), "synthesis.b4.const": (512, 4, 4),
              "synthesis.b4.conv1.weight": (512, 512, 3, 3), "synthesis.b4.conv1.noise_strength": (),
              "synthesis.b4.conv1.noise_const": (4, 4), "synthesis.b128.conv0.weight": (256, 512, 3, 3),
              "synthesis.b128.conv0.affine.weight": (512, 512), "synthesis.b1024.conv1.noise_const": (1024, 1024),
              "synthesis.b1024.torgb.weight": (3, 32, 1, 1), "synthesis.b1024.torgb.affine.bias": (32,),
              "synthesis.b8.resample_filter": (4, 4), "synthesis.b8.conv0.resample_filter": (4, 4)}
    assert {k: tuple(sd[k].shape) for k in expect} == expect
    assert len([k for k in sd if k.startswith("mapping.fc")]) == 16


# ---------------------------------------------------------------- fused CUDA ops

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ops_match_reference():
    from redegrade_stylegan2.ops import _build

    _build.clear_cache()
    if _build.plugin("upfirdn2d", ["upfirdn2d.cpp", "upfirdn2d.cu"]) is None or \
            _build.plugin("bias_act", ["bias_act.cpp", "bias_act.cu"]) is None:
        pytest.skip("the CUDA ops did not build here (the reference is used; see the warning)")
    f = ud.setup_filter([1, 3, 3, 1], device="cuda")
    for kw in [dict(up=2, padding=[2, 1, 2, 1], gain=4), dict(down=2, padding=1), dict(padding=[1, 2, 0, 3])]:
        x = torch.randn(2, 5, 9, 7, device="cuda", requires_grad=True)
        a = ud.upfirdn2d(x, f, impl="cuda", **kw)
        b = ud.upfirdn2d(x, f, impl="ref", **kw)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(a)
        torch.testing.assert_close(torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0], atol=1e-5, rtol=1e-5)
    for act, clamp in [("lrelu", None), ("lrelu", 0.5), ("linear", 0.3), ("relu", None)]:
        x = torch.randn(3, 6, 5, 4, device="cuda", requires_grad=True)
        bias = torch.randn(6, device="cuda", requires_grad=True)
        a = ba.bias_act(x, bias, act=act, clamp=clamp, impl="cuda")
        b = ba.bias_act(x, bias, act=act, clamp=clamp, impl="ref")
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        g = torch.randn_like(a)
        for ga, gb in zip(torch.autograd.grad(a, (x, bias), g), torch.autograd.grad(b, (x, bias), g)):
            torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)
    G = tiny_generator(RES).cuda()
    zz = torch.randn(2, 32, device="cuda")
    with torch.no_grad():
        ws = G.mapping(zz, None)
        img = G.synthesis(ws)
    G_cpu = tiny_generator(RES)
    torch.testing.assert_close(img.cpu(), G_cpu.synthesis(ws.cpu()), atol=1e-4, rtol=1e-4)


def test_kernel_build_failure_warns_once_and_uses_the_reference(caplog):
    from redegrade_stylegan2.ops import _build

    _build.clear_cache()
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert _build.plugin("upfirdn2d_probe" if not torch.cuda.is_available() else "missing_op",
                                 ["does_not_exist.cu"]) is None
    assert len([r for r in caplog.records if "PyTorch reference" in r.getMessage()]) == 1
    x = torch.randn(1, 2, 4, 4, generator=_gen(11))
    f = ud.setup_filter([1, 3, 3, 1])
    torch.testing.assert_close(ud.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], impl="cuda"),
                               ud.upfirdn2d_ref(x, f, up=2, padding=[2, 1, 2, 1]))  # CPU tensors: reference
    _build.clear_cache()
