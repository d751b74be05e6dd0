"""``python -m redegrade.restore``: options, outputs, and the one-line error contract."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from redegrade.image import load_image, save_image
from redegrade.restore import main

RES = 32
QUICK = ["--steps", "2", "--loss", "l1", "--no-progress"]
STEPS = [*QUICK, "--device", "cpu"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny exported generator, a tiny saved Redegrader and a 48×40 input image (not square)."""
    from redegrade.model import ModelConfig, UniversalDegradationModel
    from redegrade.redegrader import Redegrader
    from redegrade_stylegan2 import tiny_generator
    from redegrade_stylegan2.export import save_safetensors

    root = tmp_path_factory.mktemp("assets")
    gen = save_safetensors(tiny_generator(resolution=RES, seed=0), root / "tiny_g.safetensors")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the tiny network's random init; forked so the global RNG is untouched
        model = UniversalDegradationModel(ModelConfig.preset("tiny"))
    red = Redegrader(model).save_pretrained(root / "tiny_redegrader")
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 40, 48, generator=g) * 2 - 1
    save_image(img, root / "in.png")
    return {"generator": str(gen), "redegrader": str(red), "input": root / "in.png"}


def _run(args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------- help and listing
def test_help_documents_every_option():
    res = _run(["--help"])
    assert res.exit_code == 0
    for opt in ("--backend", "--generator", "--redegrader", "--mode", "blind|naive", "--align", "--loss",
                "lpips|l1|l2", "--steps", "--device", "--seed", "--output", "--save-all", "--set", "--list-backends", "--precision", "--checkpoint",
                "_redegraded.png", "_grid.png", "_state.pt", "exit code 2"):
        assert opt in res.output, opt


def test_list_backends_shows_builtins_with_their_distribution():
    res = _run(["--list-backends"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines()}
    assert "rsg" in lines and "redegrade_rsg:RSG" in lines["rsg"] and "(redegrade" in lines["rsg"]
    assert "dps" in lines


# ---------------------------------------------------------------- runs
def test_blind_save_all_writes_every_output(assets, tmp_path):
    out = tmp_path / "res" / "face.png"
    res = _run([assets["input"], "--generator", assets["generator"], "--redegrader", assets["redegrader"],
                "--save-all", "-o", out, *STEPS])
    assert res.exit_code == 0, res.output
    assert _files(out.parent) == {"face.png", "face_redegraded.png", "face_grid.png", "face_state.pt"}
    assert load_image(out).shape == (1, 3, RES, RES)
    assert load_image(out.parent / "face_grid.png").shape == (1, 3, RES, 3 * RES)
    state = torch.load(out.parent / "face_state.pt", weights_only=True)
    assert {"latent", "e_g", "e_l", "n.0"} <= set(state)
    assert "resizing" in res.output  # the notice about the 48×40 input


def test_blind_memory_options_reach_the_redegrader(assets, tmp_path, monkeypatch):
    from redegrade.redegrader import Redegrader

    seen = []
    real = Redegrader.forward
    monkeypatch.setattr(Redegrader, "forward", lambda self, x: seen.append((self.checkpoint, self.precision,
                                                                            self._checkpointing(x))) or real(self, x))
    res = _run([assets["input"], "--generator", assets["generator"], "--redegrader", assets["redegrader"],
                "--checkpoint", "on", "--precision", "bf16", "-o", tmp_path / "o.png", *STEPS])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o.png").is_file()
    assert seen and all(s[:2] == ("on", "bf16") for s in seen) and any(s[2] for s in seen)


def test_naive_default_output_name_and_seed_reproducibility(assets, tmp_path):
    src = tmp_path / "photo.png"
    src.write_bytes(assets["input"].read_bytes())
    args = [src, "--mode", "naive", "--generator", assets["generator"], *STEPS]
    assert _run(args).exit_code == 0
    first = load_image(tmp_path / "photo_restored.png")
    assert _run([*args, "-o", tmp_path / "again.png"]).exit_code == 0
    assert torch.equal(first, load_image(tmp_path / "again.png"))


def test_set_overrides_config_fields_with_types(assets, tmp_path):
    res = _run([assets["input"], "--mode", "naive", "--generator", assets["generator"], "-o", tmp_path / "o.png",
                "--set", "phases=W,W+", "--set", "w_lr=0.05", *STEPS])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o.png").is_file()


@pytest.mark.slow  # two fresh interpreters (~20 s on contended cores)
def test_subprocess_run_and_error(assets, tmp_path):
    """Once through a real interpreter: a run writes its file; an error is one stderr line, exit 2."""
    env = {**os.environ, "REDEGRADE_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "sub.png"
    cmd = [sys.executable, "-m", "redegrade.restore", str(assets["input"]), "--mode", "naive",
           "--generator", assets["generator"], "-o", str(out), *STEPS]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert out.is_file()
    bad = subprocess.run([*cmd[:3], str(tmp_path / "missing.png"), *cmd[4:]], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and "missing.png" in bad.stderr
    assert _files(tmp_path) == {"sub.png"}


# ---------------------------------------------------------------- every user error: one line, exit 2, nothing written
def _bad_cases(assets, tmp_path):
    inp, gen, red = assets["input"], assets["generator"], assets["redegrader"]
    notimg = tmp_path / "notimg.png"
    notimg.write_text("not an image")
    tiny = tmp_path / "tiny.png"
    save_image(torch.zeros(1, 3, 8, 8), tiny)
    base = ["--generator", gen, *QUICK]
    return {
        "missing input arg": [],
        "missing file": [tmp_path / "nope.png", *base],
        "not an image": [notimg, *base],
        "too small": [tiny, "--mode", "naive", *base],
        "bad mode": [inp, "--mode", "weird", *base],
        "bad loss": [inp, "--loss", "ssim"],
        "negative steps": [inp, "--steps", "-1"],
        "unknown option": [inp, "--frobnicate"],
        "unknown backend": [inp, "--backend", "nope", *base],
        "dps option on rsg": [inp, "--zeta", "0.3", *base],
        "unknown --set key": [inp, "--set", "nonsense=1", *base],
        "badly typed --set": [inp, "--set", "w_lr=fast", *base],
        "--set without =": [inp, "--set", "w_lr", *base],
        "bad phases": [inp, "--mode", "naive", "--set", "phases=W++,V", *base],
        "bad output ext": [inp, "-o", tmp_path / "out.xyz", *base],
        "cuda missing": [inp, "--device", "cuda", *base] if not torch.cuda.is_available() else [inp, "--device", "tpu"],
        "bad device": [inp, "--device", "toaster", *base],
        "missing generator": [inp, "--generator", tmp_path / "nogen.safetensors", *STEPS],
        "missing redegrader": [inp, "--redegrader", tmp_path / "nored", *base],
        "redegrader in naive": [inp, "--mode", "naive", "--redegrader", red, *base],
        "no face for --align": [inp, "--align", "--mode", "naive", *base],
        "default generator offline": [inp, "--mode", "naive", *QUICK],  # conftest: offline, empty cache
    }


def test_every_user_error_is_one_line_exit_2_and_writes_nothing(assets, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    cases = _bad_cases(assets, work)
    before = _files(work) | _files(assets["input"].parent)
    for name, args in cases.items():
        res = _run(args)
        assert res.exit_code == 2, f"{name}: exit {res.exit_code}\n{res.output}"
        # log lines (INFO:/WARNING: notices) may precede it; the error itself is exactly one line
        lines = [line for line in res.stderr.splitlines() if not line.startswith(("INFO:", "WARNING:"))]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {res.stderr!r}"
        assert "Traceback" not in res.output
    assert _files(work) | _files(assets["input"].parent) == before


def test_missing_lpips_backbone_names_both_ways_out(assets, monkeypatch):
    import urllib.error

    from redegrade import _compat  # noqa: F401  (before lpips, which imports torchvision)
    import lpips

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(lpips, "LPIPS", offline)
    res = _run([assets["input"], "--generator", assets["generator"], "--loss", "lpips", "--steps", "1"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "vgg16" in res.stderr.lower() and "--loss l1" in res.stderr


def test_align_crops_a_real_face_like_ffhq():
    from PIL import Image
    from skimage import data

    from redegrade.align import align_face, landmarks
    from redegrade.image import pil_to_tensor

    photo = pil_to_tensor(Image.fromarray(data.astronaut()))  # 512×512, public domain
    points = landmarks(photo)
    assert points.shape == (68, 2) and points.min() >= 0 and points.max() < 512
    face = align_face(photo, 256)
    assert face.shape == (1, 3, 256, 256) and face.abs().max() <= 1
    # FFHQ geometry: eyes level, centred, a little above the middle; the mouth centred below them
    p = landmarks(face) / 256
    left, right, mouth = p[36:42].mean(0), p[42:48].mean(0), p[48:60].mean(0)
    assert abs(left[1] - right[1]) < 0.02
    assert abs((left[0] + right[0]) / 2 - 0.5) < 0.03 and abs(mouth[0] - 0.5) < 0.03
    assert 0.35 < left[1] < 0.5 and 0.6 < mouth[1] < 0.75
