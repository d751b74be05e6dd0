"""ADM (guided-diffusion) UNet: the reference re-implementation, architecture inference from a state
dict, and the conversion into a diffusers UNet2DModel folder (tiny random checkpoints, CPU, float32)."""
import json

import pytest
import torch
from click.testing import CliRunner

from redegrade import _compat  # noqa: F401  (before diffusers)
from diffusers import UNet2DModel

from redegrade.errors import CheckpointError, ConfigError
from redegrade.forward import Identity
from redegrade_adm import (ADMConfig, ADMUNet, convert_checkpoint, diffusers_config, load_adm, read_state_dict,
                           to_diffusers, to_diffusers_state_dict)

# DPS's flags (scale-shift, resblock up/down, learned σ, legacy attention), tiny widths, 2 heads of 16.
TINY = ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_ds=(2,),
                 num_head_channels=16)
VARIANTS = {
    "dps-like": TINY,
    "conv-resample-no-scale-shift": ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=2,
                                              attention_ds=(1,), num_head_channels=16, use_scale_shift_norm=False,
                                              resblock_updown=False, out_channels=3),
    "new-attention-order-num-heads": ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                               attention_ds=(2,), num_head_channels=-1, num_heads=4,
                                               use_new_attention_order=True),
}


def random_adm(config: ADMConfig, seed: int = 0) -> ADMUNet:
    """An ADM UNet with every tensor random (ADM zero-initialises out convs, which would hide mapping errors)."""
    torch.manual_seed(seed)
    net = ADMUNet(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                torch.nn.init.normal_(p, 0, 1.0 / p[0].numel() ** 0.5)
            else:
                p.normal_(0, 0.2)
    return net


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 917])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_diffusers_conversion_matches_reference(name):
    cfg = VARIANTS[name]
    net = random_adm(cfg)
    x, t = inputs()
    with torch.no_grad():
        ref = net(x, t)
        out = to_diffusers(net)(x, t).sample
    assert out.shape == (2, cfg.out_channels, 32, 32)
    assert (out - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_architecture_is_read_off_the_state_dict(name):
    cfg = VARIANTS[name]
    sd = ADMUNet(cfg).state_dict()
    got = ADMConfig.from_state_dict(sd, image_size=32, num_head_channels=cfg.num_head_channels,
                                    num_heads=cfg.num_heads, use_new_attention_order=cfg.use_new_attention_order)
    assert got == cfg


def test_legacy_qkv_reorder_is_needed():
    """With heads > 1, splitting qkv into three contiguous chunks (the naive mapping) gives different outputs."""
    net = random_adm(TINY)
    sd = to_diffusers_state_dict(net.state_dict(), TINY)
    wrong = to_diffusers_state_dict(net.state_dict(), TINY.replace(use_new_attention_order=True))
    x, t = inputs()
    unet = UNet2DModel(**diffusers_config(TINY)).eval()
    with torch.no_grad():
        unet.load_state_dict(sd)
        good = unet(x, t).sample
        unet.load_state_dict(wrong)
        bad = unet(x, t).sample
        ref = net(x, t)
    assert (good - ref).abs().max() < 1e-4 < (bad - ref).abs().max()


def test_converted_checkpoint_gives_same_outputs(tmp_path):
    net = random_adm(TINY, seed=3)
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    out = convert_checkpoint(tmp_path / "tiny.pt", tmp_path / "tiny-diffusers",
                             config=ADMConfig.from_state_dict(read_state_dict(tmp_path / "tiny.pt"), image_size=32,
                                                              num_head_channels=16))
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    sched = json.loads((out / "scheduler_config.json").read_text())
    assert sched["variance_type"] == "learned_range" and sched["num_train_timesteps"] == 1000
    unet = UNet2DModel.from_pretrained(out).eval()
    loaded = load_adm(tmp_path / "tiny.pt", TINY)
    x, t = inputs(2)
    with torch.no_grad():
        ref = net(x, t)
        assert torch.equal(loaded(x, t), ref)
        assert (unet(x, t).sample - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())


def test_weights_cli_converts_adm(tmp_path):
    from redegrade.weights.__main__ import main

    cfg = ADMConfig(image_size=32, model_channels=64, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,),
                    num_head_channels=64)  # the CLI assumes DPS's 64-channel heads
    torch.save(random_adm(cfg).state_dict(), tmp_path / "m.pt")
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "m.pt"), str(tmp_path / "out"), "--format", "adm"])
    assert res.exit_code == 0, res.output
    assert UNet2DModel.from_pretrained(tmp_path / "out").config.out_channels == 6


def test_sidecar_config_gives_the_head_split(tmp_path):
    cfg = ADMConfig(image_size=32, model_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_ds=(2,),
                    num_head_channels=16)  # 32-channel attention: DPS's 64-channel heads cannot be right
    net = random_adm(cfg)
    torch.save(net.state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(ConfigError, match="tiny.yaml"):
        load_adm(tmp_path / "tiny.pt")
    (tmp_path / "tiny.yaml").write_text("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nchannel_mult: '1,1'\n"
                                        "learn_sigma: true\nattention_resolutions: '16'\nnum_head_channels: 16\n"
                                        "use_scale_shift_norm: true\nresblock_updown: true\n")
    x, t = inputs()
    with torch.no_grad():
        assert torch.equal(load_adm(tmp_path / "tiny.pt")(x, t), net(x, t))
    convert_checkpoint(tmp_path / "tiny.pt", tmp_path / "out")
    assert UNet2DModel.from_pretrained(tmp_path / "out").config.attention_head_dim == 16


def test_converted_folder_drives_dps_with_learned_variance(tmp_path):
    from redegrade_dps import DPS, DPSConfig

    torch.save(random_adm(TINY).state_dict(), tmp_path / "t.pt")
    convert_checkpoint(tmp_path / "t.pt", tmp_path / "t", config=TINY)
    dps = DPS(DPSConfig(diffusion_model=str(tmp_path / "t"), steps=5, device="cpu"))
    assert dps.resolution == 32 and dps.model.schedule.variance_type == "learned_range"
    r = dps.restore(torch.zeros(1, 3, 32, 32), Identity())
    assert torch.isfinite(r.image).all() and r.info["nfe"] == 5


def test_pt_file_runs_through_the_reference(tmp_path):
    from redegrade_dps import load_eps_model

    net = random_adm(ADMConfig(image_size=32, model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                               attention_ds=(2,)))
    torch.save(net.state_dict(), tmp_path / "m.pt")
    model = load_eps_model(tmp_path / "m.pt")
    assert model.kind == "adm" and model.learned_sigma
    from redegrade_dps import DPS
    assert DPS(prior=net).model.schedule.variance_type == "learned_range"  # a bare ADMUNet as the prior
    x, _ = inputs()
    eps, v = model(x[:1], 500)
    assert eps.shape == v.shape == (1, 3, 32, 32)


def test_ffhq256_preset_matches_dps_model_facts():
    with torch.device("meta"):
        net = ADMUNet(ADMConfig.ffhq256())
    sd = net.state_dict()
    assert len(sd) == 362 and sum(p.numel() for p in net.parameters()) == 93_563_910
    assert ADMConfig.from_state_dict(sd) == ADMConfig.ffhq256()
    assert ADMConfig.from_create_model(image_size=256, num_channels=128, num_res_blocks=1, channel_mult="",
                                       learn_sigma=True, attention_resolutions=16, num_heads=4, num_head_channels=64,
                                       use_scale_shift_norm=True, resblock_updown=True) == ADMConfig.ffhq256()
    cfg = diffusers_config(ADMConfig.ffhq256())
    assert cfg["block_out_channels"] == [128, 128, 256, 256, 512, 512] and cfg["attention_head_dim"] == 64
    assert cfg["down_block_types"][4] == "AttnDownBlock2D" and cfg["up_block_types"][1] == "AttnUpBlock2D"


def test_refusals(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a guided-diffusion"):
        load_adm(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_adm(tmp_path / "missing.pt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    torch.save(ADMUNet(TINY).state_dict(), tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="not empty"):
        convert_checkpoint(tmp_path / "t.pt", tmp_path / "full", config=TINY)
    with pytest.raises(CheckpointError, match="does not match"):
        load_adm(tmp_path / "t.pt", TINY.replace(model_channels=64))
    with pytest.raises(ConfigError, match="time embedding"):
        diffusers_config(ADMConfig(image_size=64, model_channels=64, channel_mult=(0.5, 1), attention_ds=(2,)))
