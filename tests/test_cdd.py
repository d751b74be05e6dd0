"""Reading CDD's trainer checkpoints: exactness against an independent statement of CDD's forward
(``cdd_reference``), strict key checks, sidecar options, registry entries, gradients, and blind RSG/DPS
end to end with a converted model. Fixtures are random checkpoints in CDD's layout, written here."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner

import cdd_reference as ref
from redegrade.errors import CheckpointError, MissingCheckpointError, ShapeError
from redegrade.model import DegradationCode
from redegrade.model.cdd import CDDConfig, CDDModel
from redegrade.model.cdd.keys import cdd_key
from redegrade.model.cdd.options import CDDOptions
from redegrade.redegrader import Redegrader
from redegrade.weights import REGISTRY, cache_path
from redegrade.weights.__main__ import main as weights_cli

RES = 32
TOL = 1e-4  # the bound on CPU; measured errors are ~1e-6 (see test_outputs_match_cdds_forward)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random CDD model (VUNet layout, 16 SFT blocks) saved in CDD's trainer format."""
    path = tmp_path_factory.mktemp("cdd") / "model_latest.pt"
    return path, ref.make_checkpoint(path, ref.Spec(), seed=1)


@pytest.fixture(scope="module")
def red(ckpt):
    return Redegrader.from_pretrained(ckpt[0])


def _images(batch=2, size=RES, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, size, size, generator=g) * 2 - 1, torch.rand(batch, 3, size, size, generator=g) * 2 - 1)


def _err(a, b) -> float:
    return (a - b).abs().max().item()


def _compare(red: Redegrader, parts, *, pro=False, local="LPEL", size=RES, seed=11) -> dict[str, float]:
    """Max |ours − CDD's| for e_g, e_l (raw), both after their entropy models, and the synthesis, whose
    noise CDD draws from the global RNG after ``torch.manual_seed(seed)``."""
    y, x = _images(size=size)
    with torch.no_grad():
        code = red.encode(y)
        e_g, e_l = ref.lpe(parts["netE"], y), ref.lpel(parts["netE_loc"], y, local)
        coded = red.model.entropy_coded(code)
        noise = red.sample_noise(x, torch.Generator().manual_seed(seed))
        ours = red.synthesize(x, DegradationCode(e_g, e_l), noise)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            theirs = ref.net_g(parts["netG"], x, e_g, e_l, pro=pro)
    assert theirs.abs().max() > 0.5  # the fixture's outputs are not trivially small
    return {"e_g": _err(code.e_g, e_g), "e_l": _err(code.e_l, e_l),
            "e_g coded": _err(coded.e_g, ref.compress(parts["netCprs"], e_g)),
            "e_l coded": _err(coded.e_l, ref.compress(parts["netCprs_loc"], e_l)),
            "synthesis": _err(ours, theirs)}


# ---------------------------------------------------------------- what the shapes say
def test_config_is_inferred_from_the_shapes(red):
    c = red.model.config
    assert isinstance(red.model, CDDModel) and isinstance(c, CDDConfig)
    assert (c.enc_dim_g, c.enc_kernel_g, c.dim_g, c.enc_dim_l, c.enc_kernel_l, c.c_l) == (8, 3, 256, 8, 3, 4)
    assert (c.map_channels, c.widths, c.blocks, c.blocks_up) == (4, (4, 8, 16), (4, 3, 2), (4, 3))
    assert c.local_encoder == "LPEL"
    g, l_ = c.compressor_g, c.compressor_l
    assert (g.type, g.channels, g.head, g.tail, g.filters) == ("EntropyBottleneck", 256, (2, 64), (2, 64), (3, 3, 3, 3))
    assert (l_.type, l_.channels, l_.head, l_.tail) == ("EntropyBottleneck", 4, (0, 0), (0, 0))
    assert g.enabled and l_.enabled  # not in the file: assumed (and logged)
    # 16 blocks × 2 SFT layers, shapes H, H/2, H/4, H/2, H: a palindrome
    levels = c.noise_levels()
    assert len(levels) == red.model.num_noise == 32 and levels == levels[::-1]


def test_the_paper_defaults_describe_cdds_released_architecture():
    c = CDDConfig()
    assert (c.widths, c.blocks, c.blocks_up, c.map_channels, c.dim_g, c.c_l) == ((64, 128, 256), (4, 3, 2), (4, 3), 8,
                                                                                  256, 4)
    assert CDDConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert cdd_key("synthesis.up_blocks.0.3.sft2.beta.0.weight") == (
        "netG", "net.blocks1_.3.sft2.convs_beta.0.conv2d.weight")


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("spec", [
    pytest.param(ref.Spec(), id="vunet-tiny"),
    pytest.param(ref.Spec(pro=True), id="vunetpro-tiny"),
    pytest.param(ref.Spec(old_compressai=True, cprs_loc="ImageCompressor", cprs_head=1, cprs_tail=3),
                 id="old-compressai+imagecompressor"),
    pytest.param(ref.Spec(moco_enc_dim=256, loc_dim=256, n_filter=64, proj_dim_noise=8), id="paper-size"),
])
def test_outputs_match_cdds_forward(tmp_path, spec):
    path = tmp_path / "latest.pt"
    parts = ref.make_checkpoint(path, spec, seed=2)
    errs = _compare(Redegrader.from_pretrained(path), parts, pro=spec.pro)
    print(f"max |ours - CDD| {spec}: " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs


def test_the_comparison_catches_wrong_noise_order_activation_input_and_keys(ckpt, red):
    """The exactness test is meaningful: each plausible mistake moves the output by ≫ TOL."""
    path, parts = ckpt
    y, x = _images()
    with torch.no_grad():
        e_g, e_l = ref.lpe(parts["netE"], y), ref.lpel(parts["netE_loc"], y)
        code = DegradationCode(e_g, e_l)
        noise = red.sample_noise(x, torch.Generator().manual_seed(11))
        ours = red.synthesize(x, code, noise)
        runs = {}
        for name, kw in {"right": {}, "lrelu in the last block": {"last_act": ref._lrelu},
                         "x fed as is": {"input_map": lambda c: c}}.items():
            with torch.random.fork_rng():
                torch.manual_seed(11)
                runs[name] = ref.net_g(parts["netG"], x, e_g, e_l, **kw)
        assert _err(ours, runs["right"]) <= TOL
        assert _err(ours, runs["lrelu in the last block"]) > 100 * TOL
        assert _err(ours, runs["x fed as is"]) > 100 * TOL
        assert _err(red.synthesize(x, code, noise[::-1]), runs["right"]) > 100 * TOL  # shapes fit, order wrong
        # a mapping that swapped two same-shaped tensors (sft1 ↔ sft2 of one block) loads but is wrong
        swapped = copy.deepcopy(red.model)
        sd = swapped.state_dict()
        a, b = "synthesis.down_blocks.1.0.sft1.gamma.2.weight", "synthesis.down_blocks.1.0.sft2.gamma.2.weight"
        swapped.load_state_dict({**sd, a: sd[b], b: sd[a]})
        assert _err(swapped.synthesize(x, code, noise), runs["right"]) > 100 * TOL


def test_noise_maps_are_drawn_in_cdds_order_and_shapes(red):
    x = torch.zeros(1, 3, RES, 16)
    shapes = [tuple(n.shape[-2:]) for n in red.sample_noise(x, torch.Generator().manual_seed(0))]
    assert shapes == [(32, 16)] * 8 + [(16, 8)] * 6 + [(8, 4)] * 4 + [(16, 8)] * 6 + [(32, 16)] * 8
    torch.manual_seed(3)
    cdd = [torch.randn([1, 1, *s]) for s in shapes]  # CDD: one randn per SFT layer, in forward order
    ours = red.sample_noise(x, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(cdd, ours))


# ---------------------------------------------------------------- conversion
def test_convert_cli_round_trip_gives_identical_outputs(ckpt, red, tmp_path):
    path, _ = ckpt
    out = tmp_path / "cdd_model"
    res = CliRunner().invoke(weights_cli, ["convert", "cdd", str(path), str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["architecture"] == "cdd"
    auto = tmp_path / "auto"  # --format auto recognises the layout
    assert CliRunner().invoke(weights_cli, ["convert", str(path), str(auto)]).exit_code == 0
    folder = Redegrader.from_pretrained(out)
    assert isinstance(folder.model, CDDModel) and folder.model.config == red.model.config
    y, x = _images()
    with torch.no_grad():
        a, b = red.encode(y), folder.encode(y)
        assert torch.equal(a.e_g, b.e_g) and torch.equal(a.e_l, b.e_l)
        n = red.sample_noise(x)
        assert torch.equal(red.synthesize(x, a, n), folder.synthesize(x, a, n))
    again = folder.save_pretrained(tmp_path / "again")
    from safetensors.torch import load_file
    first, second = load_file(out / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _mutated(parts, fn):
    parts = {p: dict(sd) for p, sd in parts.items()}
    fn(parts)
    return parts


_BAD = {
    "missing key": (lambda p: p["netG"].pop("net.blocks2.1.sft1.convs_beta.0.conv2d.weight"),
                    "1 missing: netG.net.blocks2.1.sft1.convs_beta.0.conv2d.weight"),
    "extra key": (lambda p: p["netE"].__setitem__("LPE_p.9.conv.weight", torch.zeros(1)),
                  "1 unexpected: netE.LPE_p.9.conv.weight"),
    "wrong shape": (lambda p: p["netG"].__setitem__("net.blocks1.0.conv1.conv2d.weight", torch.zeros(4, 4, 5, 5)),
                    "mis-shaped: netG.net.blocks1.0.conv1.conv2d.weight (4, 4, 5, 5) vs (4, 4, 3, 3)"),
    "missing part": (lambda p: p.pop("netCprs_loc"), "lacks part(s) netCprs_loc"),
    "unknown part": (lambda p: p.__setitem__("netX", {}), "unexpected part(s) netX"),
    "non-tensor entry": (lambda p: p["netE_loc"].__setitem__("note", "hello"), "non-tensor entries: note"),
    "foreign encoder": (lambda p: p["netE"].__setitem__("last_mlp.2.weight", torch.zeros(128, 8)),
                        "fusion conv reads 260 channels, but e_l has 4 and e_g 128"),
    "gap in blocks": (lambda p: [p["netG"].pop(k) for k in list(p["netG"]) if k.startswith("net.blocks3.0.")],
                      "blocks3 are numbered [1]"),
    "unknown compressor": (lambda p: p["netCprs"].pop("model.quantiles"), "neither an EntropyBottleneck"),
}


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_checkpoints_are_refused_with_one_line(ckpt, tmp_path, case):
    fn, message = _BAD[case]
    path = tmp_path / "bad.pt"
    torch.save({"model": _mutated(ckpt[1], fn), "epoch": 1, "global_step": 2}, path)
    with pytest.raises(CheckpointError) as err:
        Redegrader.from_pretrained(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    res = CliRunner().invoke(weights_cli, ["convert", "cdd", str(path), str(tmp_path / "out")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and message in res.output
    assert not (tmp_path / "out").exists()  # nothing partial is written


def test_files_that_are_not_cdd_checkpoints_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    cases = {"code.pt": {"model": {"netE": Evil()}}, "tensor.pt": torch.zeros(3), "flat.pt": {"model": {"w": torch.zeros(1)}}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError) as err:
            Redegrader.from_pretrained(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="refused: the file would run code when loaded") as err:
        Redegrader.from_pretrained(tmp_path / "code.pt")
    assert "weights_only" not in str(err.value)  # never relay torch's advice to load unsafely
    res = CliRunner().invoke(weights_cli, ["convert", "cdd", str(tmp_path / "flat.pt"), str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a CDD trainer checkpoint" in res.output


# ---------------------------------------------------------------- what the file cannot say
def test_local_encoder_type_is_needed_only_where_the_shapes_cannot_tell(tmp_path):
    path = tmp_path / "k5.pt"
    parts = ref.make_checkpoint(path, ref.Spec(loc_kernel=5, moco_enc_kernel=5), seed=3)
    with pytest.raises(CheckpointError, match="LPEL and LPELOri have the same keys"):
        Redegrader.from_pretrained(path)
    sidecar = tmp_path / "train.yaml"  # CDD's own training config layout
    sidecar.write_text("network:\n  netE:\n    moco_enc: LPE\n  netE_loc:\n    type: LPEL\n    moco_enc_kernel: 5\n"
                       "  netCprs:\n    enabled: true\n  netCprs_loc:\n    enabled: false\n")
    red = Redegrader.from_pretrained(path, cdd_options=sidecar)
    assert red.model.config.local_encoder == "LPEL" and not red.model.config.compressor_l.enabled
    errs = _compare(red, parts)
    assert max(errs.values()) <= TOL, errs
    ori = Redegrader.from_pretrained(path, cdd_options={"local_encoder": "LPELOri"})
    with pytest.raises(ShapeError, match="LPELOri cannot encode"):  # CDD's LPELOri fails here too (torch.cat)
        ori.encode(_images()[0])
    with pytest.raises(CheckpointError, match="unknown CDD option"):
        Redegrader.from_pretrained(path, cdd_options={"local_encoder": "LPEL", "compres_g": True})


def test_enabled_flags_decide_what_the_redegrader_quantises(ckpt):
    path, parts = ckpt
    y, x = _images(batch=1)
    off = Redegrader.from_pretrained(path, cdd_options=CDDOptions(compress_g=False, compress_l=False))
    on = Redegrader.from_pretrained(path, cdd_options={"compress_g": True, "compress_l": True})
    with torch.no_grad():
        code = off.encode(y)
        same, rate = off.model.quantize(code, "round")
        assert torch.equal(same.e_g, code.e_g) and torch.equal(same.e_l, code.e_l) and rate["g"].item() == 0
        coded, _ = on.model.quantize(code, "round")
        want = on.model.entropy_coded(code)
        assert torch.equal(coded.e_g, want.e_g) and torch.equal(coded.e_l, want.e_l)
        assert _err(coded.e_g, code.e_g) > 0.01
        for r in (off, on):  # the Redegrader's forward synthesises from what it quantised
            r.reset(y)
            q, _ = r.model.quantize(r.code(), "round")
            torch.testing.assert_close(r(x), r.synthesize(x, q, r.noise), atol=TOL, rtol=0)  # STE: ±1 ulp


# ---------------------------------------------------------------- inversion
def test_gradients_reach_x_and_every_variable(red):
    y, x = _images(batch=1)
    r = copy.deepcopy(red)
    r.reset(y, generator=torch.Generator().manual_seed(0))
    x = x.clone().requires_grad_(True)
    r(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    named = r.named_variables()
    assert len([k for k in named if k.startswith("n.")]) == 32
    for k, v in named.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, k
    assert all(p.grad is None for p in r.model.parameters())  # the network stays frozen


@pytest.fixture(scope="module")
def converted(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "cdd_model"
    from redegrade.model.cdd.checkpoint import convert

    return convert(ckpt[0], out)


def test_blind_rsg_runs_end_to_end_with_a_converted_cdd_model(converted):
    from redegrade.objective import build
    from redegrade_rsg import RSG, RSGConfig
    from redegrade_stylegan2 import tiny_generator

    G = tiny_generator(resolution=RES, seed=0)
    y = _images(batch=1)[0].clamp(-0.9, 0.9)
    fm = Redegrader.from_pretrained(converted)
    fm.reset(y, generator=torch.Generator().manual_seed(0))
    init = {k: v.detach().clone() for k, v in fm.named_variables().items()}
    out = RSG(RSGConfig(steps=2, device="cpu", optimise="e_g,e_l,n"), prior=G, objective=build("l1")).restore(y, fm)
    assert out.image.shape == (1, 3, RES, RES) and torch.isfinite(out.image).all()
    assert torch.isfinite(out.redegraded).all() and out.info["nfe"] == 8
    for k in ("e_g", "e_l", "n.0", "n.31"):
        assert not torch.equal(out.state[k], init[k]), k


def test_blind_dps_runs_end_to_end_with_a_converted_cdd_model(converted):
    from diffusers import UNet2DModel
    from redegrade.objective import build
    from redegrade_dps import DPS, DPSConfig

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=RES, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=8, attention_head_dim=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    y = _images(batch=1)[0].clamp(-0.9, 0.9)
    fm = Redegrader.from_pretrained(converted)
    fm.reset(y, generator=torch.Generator().manual_seed(0))
    init = {k: v.detach().clone() for k, v in fm.named_variables().items()}
    out = DPS(DPSConfig(steps=6, device="cpu", variables_loss="l1", variables_lr=0.05), prior=unet,
              objective=build("l1")).restore(y, fm)
    assert out.image.shape == (1, 3, RES, RES) and torch.isfinite(out.image).all()
    assert torch.isfinite(out.redegraded).all() and out.info["nfe"] == 6
    assert not torch.equal(out.state["e_g"], init["e_g"])


def test_restore_cli_takes_a_cdd_trainer_checkpoint_as_redegrader(ckpt, tmp_path):
    from redegrade.image import load_image, save_image
    from redegrade.restore import main as restore_cli
    from redegrade_stylegan2 import tiny_generator
    from redegrade_stylegan2.export import save_safetensors

    gen = save_safetensors(tiny_generator(resolution=RES, seed=0), tmp_path / "g.safetensors")
    save_image(_images(batch=1)[0], tmp_path / "in.png")
    res = CliRunner().invoke(restore_cli, [str(tmp_path / "in.png"), "--generator", str(gen), "--redegrader",
                                           str(ckpt[0]), "--steps", "1", "--loss", "l1", "--no-progress",
                                           "--device", "cpu", "-o", str(tmp_path / "out.png")])
    assert res.exit_code == 0, res.output
    assert load_image(tmp_path / "out.png").shape == (1, 3, RES, RES)


# ---------------------------------------------------------------- registry
def test_registry_names_cdds_models_for_download_by_hand(ckpt):
    for name in ("cdd.ffhq", "cdd.wm"):
        c = REGISTRY[name]
        assert c.url == "https://ivc.uwaterloo.ca/projects/content-degradation-disentanglement/"
        assert c.manual and c.sha256 is None and c.licence.startswith("none published")
        assert c.loader == "redegrade.model.cdd.checkpoint.load_cdd"
        with pytest.raises(MissingCheckpointError) as err:
            Redegrader.from_pretrained(name)
        msg = str(err.value)
        assert "by hand" in msg and c.url in msg and str(cache_path(name)) in msg and "\n" not in msg
    assert dict(REGISTRY["cdd.wm"].options)["compress_g"] is True  # notebook_wm.yaml: netCprs.enabled


def test_registry_checkpoint_records_its_sha256_on_first_verified_use(ckpt):
    dest = cache_path("cdd.wm")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(ckpt[0].read_bytes())
    try:
        red = Redegrader.from_pretrained("cdd.wm")
        assert red.model.config.compressor_g.enabled
        record = dest.with_name(dest.name + ".sha256")
        assert record.is_file()
        Redegrader.from_pretrained("cdd.wm")  # same file: accepted
        torch.save({"model": ckpt[1], "epoch": 8, "global_step": 1}, dest)  # a different file under that name
        with pytest.raises(CheckpointError, match="recorded on its first verified use"):
            Redegrader.from_pretrained("cdd.wm")
    finally:
        dest.unlink(missing_ok=True)
        dest.with_name(dest.name + ".sha256").unlink(missing_ok=True)
