"""Bad input, errors: one ``error:`` line and no traceback for bad devices, settings, models, flags,
checkpoints, usage and images, and no torch import before saying no (see bad_input_helpers.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from redegrade import transfer

from bad_input_helpers import IMAGE_CLIS, QUICK, assert_refused, bench, dps, invoke, rsg, snapshot, tr, with_input


# ------------------------------------------------------------------------------------------ 4. tracebacks
def _unavailable_devices() -> list[str]:
    from redegrade.settings import available_devices

    have = set(available_devices())
    return [d for d in ("mps", "meta", "xpu", "cuda:99", "toaster", "", "cpu:3") if d not in have]


@pytest.mark.parametrize("cli", ["restore", "restore-dps", "transfer", "ffhqx"])
@pytest.mark.parametrize("device", _unavailable_devices())
def test_unavailable_devices_are_refused_before_any_model(cli, device, kit, work, no_models):
    args = bench(kit, work, "--device", device) if cli == "ffhqx" else IMAGE_CLIS[cli](kit, work, "--device", device)
    before = snapshot(work, kit.root)
    assert_refused(invoke(cli, args), "device")
    assert snapshot(work, kit.root) == before


@pytest.mark.parametrize("setting", ["w_lr=nan", "w_lr=inf", "v_lr=-inf", "wpp_lr=NaN", "variables_lr=1e999",
                                     "device=meta", f"seed={2 ** 70}", "steps=-1", "phases=X"])
def test_bad_settings_are_one_line(setting, kit, work, no_models):
    assert_refused(invoke("restore", rsg(kit, work, "--set", setting)))


@pytest.mark.parametrize("args", [["--zeta", "nan"], ["--zeta", "inf"], ["--zeta", "-1"], ["--set", "zeta=nan"],
                                  ["--set", "variables_lr=-inf"], ["--steps", "0"]])
def test_bad_dps_numbers_are_one_line(args, kit, work, no_models):
    assert_refused(invoke("restore-dps", dps(kit, work, *args)))


@pytest.mark.parametrize("what", ["an image file", "a text file", "an empty folder", "a folder of junk",
                                  "a missing .pt", "a deep missing path"])
def test_diffusion_model_that_is_not_a_model_is_one_line(what, kit, work, no_models):
    junk = work / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (work / "empty").mkdir()
    (work / "notes.txt").write_text("hello")
    path = {"an image file": work / "in.png", "a text file": work / "notes.txt", "an empty folder": work / "empty",
            "a folder of junk": junk, "a missing .pt": work / "none.pt", "a deep missing path": "a/b/c"}[what]
    assert_refused(invoke("restore-dps", dps(kit, work, "--diffusion-model", path)), "diffusion model")


@pytest.mark.parametrize("args", [["--option", "w_lr=nan"], ["--option", "w_lr=inf"], ["--crop-size", "0"],
                                  ["--limit", "0"], ["--seed", "abc"], ["--crops", "-3"], ["--modes", "psychic"]])
def test_bad_benchmark_flags_are_one_line_and_write_nothing(args, kit, work, no_models):
    before = snapshot(work)
    assert_refused(invoke("ffhqx", bench(kit, work, *args)))
    assert snapshot(work) == before


def test_benchmark_generator_is_the_backends_own_option_never_a_guess(kit, work, no_models):
    """dps declares no --generator: the benchmark refuses it instead of setting its diffusion model."""
    before = snapshot(work)
    assert_refused(invoke("ffhqx", bench(kit, work, "--backend", "dps", "--generator", kit.unet)),
                   "backend 'dps' has no --generator option")
    assert snapshot(work) == before


@pytest.mark.parametrize("which", ["clean", "degraded"])
def test_transfer_too_large_for_memory_is_refused_with_the_estimate_and_the_remedy(which, kit, work, no_models,
                                                                                     monkeypatch):
    Image.new("RGB", (1000, 800), (90, 90, 90)).save(work / "big.png")
    monkeypatch.setattr(transfer, "free_memory", lambda device=None: 512 * 2 ** 20)
    args = (tr(kit, work, clean=work / "big.png") if which == "clean" else
            ["--degraded", work / "big.png", "--clean", work / "in.png", "--redegrader", kit.red, "-o", work / "o.png",
             "--uniform-local"])
    before = snapshot(work, kit.root)
    line = assert_refused(invoke("transfer", args), "GiB")
    assert "1000×800" in line and ("--size" in line if which == "clean" else "crop" in line)
    assert snapshot(work, kit.root) == before


def test_memory_estimate_and_suggested_size_are_consistent():
    per = transfer.BYTES_PER_PIXEL
    free = 4 * 2 ** 30
    with pytest.raises(Exception, match=r"--size (\d+)") as err:
        transfer.check_memory({"clean": (12000, 12000)}, "clean", per_pixel=per, free=free)
    side = int(err.value.args[0].split("--size ")[1].split()[0])
    assert side % 8 == 0 and transfer.working_memory(side * side, per) <= free
    transfer.check_memory({"clean": (side, side)}, "clean", per_pixel=per, free=free)  # the remedy works
    transfer.check_memory({"clean": (12000, 12000)}, "clean", per_pixel=per, free=None)  # unknown: no refusal


# ------------------------------------------------------------------------------------------ 5. messages
@pytest.mark.parametrize("case", ["restore --redegrader", "transfer --redegrader", "dps --diffusion-model",
                                  "restore --generator", "weights convert .pt", "weights convert .pkl"])
def test_code_executing_checkpoints_are_refused_in_our_words(case, kit, work):
    out = work / "converted"
    args = {"restore --redegrader": ("restore", rsg(kit, work, "--redegrader", kit.evil_pt)),
            "transfer --redegrader": ("transfer", tr(kit, work, "--redegrader", kit.evil_pt)),
            "dps --diffusion-model": ("restore-dps", dps(kit, work, "--diffusion-model", kit.evil_pt)),
            "restore --generator": ("restore", [work / "in.png", "--mode", "naive", "--generator", kit.evil_pkl,
                                                *QUICK, "-o", work / "out.png"]),
            "weights convert .pt": ("weights", ["convert", kit.evil_pt, out]),
            "weights convert .pkl": ("weights", ["convert", kit.evil_pkl, work / "g.safetensors"])}[case]
    before = snapshot(work, kit.root)
    res = invoke(*args)
    line = assert_refused(res, "would run code", strict=False)
    assert "only tensors" in line and "weights_only" not in res.output and "will likely succeed" not in res.output
    assert not kit.marker.exists()
    assert snapshot(work, kit.root) == before


def test_torch_load_refusal_names_the_global_and_never_relays_torchs_advice(kit):
    from redegrade.errors import CheckpointError
    from redegrade.weights.safe import torch_load

    with pytest.raises(CheckpointError) as err:
        torch_load(kit.evil_pt, what="x.pt")
    assert "system" in str(err.value) and "weights_only" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("cli,args", [
    ("restore", ["in.png", "--frobnicate"]), ("restore", ["in.png", "--steps", "many"]),
    ("transfer", ["--degraded", "deg.png"]), ("transfer", ["--clean", "in.png", "-o", "o.png", "--size", "abc"]),
    ("transfer", ["--frob"]), ("transfer", ["--clean", "in.png", "-o", "o.png", "--size", "4"]),
    ("weights", []), ("weights", ["frob"]), ("weights", ["convert"]), ("weights", ["convert", "g.pkl"]),
    ("weights", ["convert", "g.pkl", "o", "--format", "onnx"]), ("weights", ["fetch"]),
    ("ffhqx", ["--frob"]), ("ffhqx", ["--tiny"]), ("ffhqx", ["--tiny", "--out", "in.png"]),
])
def test_usage_errors_are_one_line_for_every_cli(cli, args, work, no_models, monkeypatch):
    monkeypatch.chdir(work)
    before = snapshot(work)
    assert_refused(invoke(cli, args))
    assert snapshot(work) == before


@pytest.mark.parametrize("cli", ["transfer", "weights", "ffhqx", "restore"])
def test_help_promises_one_line_errors_and_keeps_them(cli):
    res = invoke(cli, ["--help"])
    assert res.exit_code == 0 and "one line" in " ".join(res.output.split())


# ------------------------------------------------------------------------------------------ bad images
def _bad_images(w: Path) -> dict[str, tuple[Path, str]]:
    (w / "empty.png").write_bytes(b"")
    (w / "text.png").write_text("not an image")
    (w / "cut.png").write_bytes((w / "deg.png").read_bytes()[:300])
    Image.new("RGB", (8, 8)).save(w / "tiny.png")
    (w / "dir.png").mkdir()
    return {"missing": (w / "missing.png", "no such file"), "empty": (w / "empty.png", "cannot read"),
            "text": (w / "text.png", "cannot read"), "truncated": (w / "cut.png", "cannot read"),
            "8x8": (w / "tiny.png", "at least 16"), "folder": (w / "dir.png", "dir.png"),
            "device": (Path("/dev/null"), "not a regular file")}


@pytest.mark.parametrize("cli", ["restore", "restore-dps", "transfer", "ffhqx"])
@pytest.mark.parametrize("bad", ["missing", "empty", "text", "truncated", "8x8", "folder", "device"])
def test_bad_input_images_are_one_line_before_any_model(cli, bad, kit, work, no_models):
    path, needle = _bad_images(work)[bad]
    if cli == "ffhqx" and bad in ("missing", "folder", "device"):
        pytest.skip("the benchmark lists regular image files in --data; there is nothing to name")
    args = with_input(cli, kit, work, path)
    before = snapshot(work, kit.root)
    assert_refused(invoke(cli, args), needle)
    assert snapshot(work, kit.root) == before


def test_missing_degraded_source_is_one_line(kit, work, no_models):
    args = ["--degraded", work / "nope.png", "--clean", work / "in.png", "-o", work / "o.png"]
    assert_refused(invoke("transfer", args), "no such file")


# ------------------------------------------------------------------------------------------ 6. slow to say no
_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
print("EXIT", code, "TORCH", "torch" in sys.modules)
"""


@pytest.mark.parametrize("module,args", [
    ("redegrade.restore", ["--help"]), ("redegrade.restore", ["missing.png"]),
    ("redegrade.transfer", ["--help"]), ("redegrade.transfer", ["--degraded", "missing.png", "--clean", "x.png",
                                                                "-o", "o.png"]),
    ("redegrade.weights", ["--help"]), ("redegrade.weights", ["convert", "missing.pkl", "o.safetensors"]),
])
def test_help_and_a_missing_input_do_not_import_torch(module, args, tmp_path):
    env = {**os.environ, "REDEGRADE_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, module, *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == f"EXIT {0 if '--help' in args else 2} TORCH False", proc.stdout
    assert list(tmp_path.iterdir()) == []
