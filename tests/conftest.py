"""Shared test set-up: offline, isolated cache, deterministic and single-threaded torch; and the fixtures
that test modules split by topic share (their plain helpers live in ``*_helpers.py`` next to them)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from bad_input_helpers import Kit

# Tiny test networks gain nothing from intra-op threads, and on shared or busy cores two OpenMP
# threads wait on each other (measured: 20 ms → 1–6 s per tiny forward), so the suite runs single-threaded.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    # Tests never touch the user's cache or the network.
    monkeypatch.setenv("REDEGRADE_HOME", str(tmp_path_factory.getbasetemp() / "redegrade_home"))
    monkeypatch.setenv("REDEGRADE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------ test_bad_input_*.py
@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    import pickle

    from bad_input_helpers import RES, Kit, _Evil
    from redegrade import _compat  # noqa: F401  (before diffusers)
    from diffusers import UNet2DModel

    from redegrade.model import ModelConfig, UniversalDegradationModel
    from redegrade.redegrader import Redegrader
    from redegrade_stylegan2 import tiny_generator
    from redegrade_stylegan2.export import save_safetensors

    root = tmp_path_factory.mktemp("kit")
    gen = save_safetensors(tiny_generator(resolution=RES, seed=0), root / "tiny_g.safetensors")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        red = Redegrader(UniversalDegradationModel(ModelConfig.preset("tiny"))).save_pretrained(root / "red")
        UNet2DModel(sample_size=RES, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                    norm_num_groups=8, attention_head_dim=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    marker = root / "PWNED"
    torch.save({"config": {}, "model": {}, "payload": _Evil(marker)}, root / "evil.pt")
    (root / "evil.pkl").write_bytes(pickle.dumps({"G_ema": _Evil(marker)}, protocol=4))
    return Kit(root, gen, red, root / "unet", root / "evil.pt", root / "evil.pkl", marker)


@pytest.fixture
def work(tmp_path) -> Path:
    """A folder of the user's files: two images, two checkpoint-like files, a data folder for ffhqx."""
    from bad_input_helpers import RES
    from redegrade.image import save_image

    g = torch.Generator().manual_seed(0)
    save_image(torch.rand(1, 3, 40, 48, generator=g) * 2 - 1, tmp_path / "in.png")
    save_image(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, tmp_path / "deg.png")
    (tmp_path / "g.pkl").write_bytes(b"the user's only StyleGAN2 checkpoint")
    (tmp_path / "m.pt").write_bytes(b"the user's only ADM checkpoint")
    (tmp_path / "data").mkdir()
    save_image(torch.rand(1, 3, RES, RES, generator=g) * 2 - 1, tmp_path / "data" / "00000.png")
    return tmp_path


@pytest.fixture
def no_models(monkeypatch):
    """Any model loader (or converter, or the benchmark's runner) fails loudly if reached."""
    import redegrade_adm
    import redegrade_dps.backend
    import redegrade_stylegan2

    from redegrade import objective
    from redegrade.redegrader import Redegrader

    from bad_input_helpers import ffhqx

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(Redegrader, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(objective, "build", loaded)
    monkeypatch.setattr(redegrade_stylegan2, "load_generator", loaded)
    monkeypatch.setattr(redegrade_stylegan2, "convert_pickle", loaded)
    monkeypatch.setattr(redegrade_adm, "convert_checkpoint", loaded)
    monkeypatch.setattr(redegrade_dps.backend, "load_eps_model", loaded)
    monkeypatch.setattr(ffhqx, "Runner", loaded)


# ------------------------------------------------------------------ test_degradations_*.py
@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    """A natural 64² test image in [-1,1] (skimage's astronaut, public domain)."""
    from PIL import Image

    from degradation_helpers import R
    from redegrade.image import pil_to_tensor

    skdata = pytest.importorskip("skimage.data")
    im = Image.fromarray(skdata.astronaut()).resize((R, R), Image.Resampling.LANCZOS)
    return pil_to_tensor(im)


# ------------------------------------------------------------------ test_stylegan2_*.py
@pytest.fixture(scope="module")
def z():
    from stylegan2_helpers import _gen

    return torch.randn(2, 32, generator=_gen(1))
