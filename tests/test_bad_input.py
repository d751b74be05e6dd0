"""Bad input never loses data or gives a silently wrong answer, across every CLI.

The CLIs — ``redegrade.restore`` (rsg and dps), ``redegrade.transfer``, ``redegrade.weights`` and
``benchmarks/ffhqx.py`` — share one error path: every user error is one ``error: …`` line on stderr,
exit code 2, no traceback, the inputs unchanged (checksums) and no file left behind. Input errors are
refused before any model loads: the ``no_models`` guard makes every model loader fail loudly.

The classes follow the issue: data loss, late failure, tracebacks, misleading messages, silently wrong
results (positive checks at the end), slowness (no torch before the inputs are checked) and progress.
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from redegrade import restore, transfer
from redegrade.image import load_image, save_image
from redegrade.weights import __main__ as weights_cli

ROOT = Path(__file__).resolve().parents[1]
RES = 32
K16 = 30000  # a 16-bit grey: 30000/65535 ≈ 0.458, once clipped to pure white


def _load_ffhqx():
    spec = importlib.util.spec_from_file_location("ffhqx_bad_input", ROOT / "benchmarks" / "ffhqx.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


ffhqx = _load_ffhqx()
MAINS = {"restore": restore.main, "restore-dps": restore.main, "transfer": transfer.main,
         "weights": weights_cli.main, "ffhqx": ffhqx.main}


@dataclass
class Kit:
    """Tiny models and checkpoints shared by every case (never written to)."""

    root: Path
    gen: Path
    red: Path
    unet: Path
    evil_pt: Path
    evil_pkl: Path
    marker: Path


class _Evil:
    """Unpickling this runs ``touch marker``: what a weights-only loader must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Kit:
    import pickle

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
    g = torch.Generator().manual_seed(0)
    save_image(torch.rand(1, 3, 40, 48, generator=g) * 2 - 1, tmp_path / "in.png")
    save_image(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, tmp_path / "deg.png")
    (tmp_path / "g.pkl").write_bytes(b"the user's only StyleGAN2 checkpoint")
    (tmp_path / "m.pt").write_bytes(b"the user's only ADM checkpoint")
    (tmp_path / "data").mkdir()
    save_image(torch.rand(1, 3, RES, RES, generator=g) * 2 - 1, tmp_path / "data" / "00000.png")
    return tmp_path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` (hidden ones too) with its sha256."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def no_models(monkeypatch):
    """Any model loader (or converter, or the benchmark's runner) fails loudly if reached."""
    import redegrade_adm
    import redegrade_dps.backend
    import redegrade_stylegan2

    from redegrade import objective
    from redegrade.redegrader import Redegrader

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(Redegrader, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(objective, "build", loaded)
    monkeypatch.setattr(redegrade_stylegan2, "load_generator", loaded)
    monkeypatch.setattr(redegrade_stylegan2, "convert_pickle", loaded)
    monkeypatch.setattr(redegrade_adm, "convert_checkpoint", loaded)
    monkeypatch.setattr(redegrade_dps.backend, "load_eps_model", loaded)
    monkeypatch.setattr(ffhqx, "Runner", loaded)


def invoke(cli: str, args: list):
    return CliRunner().invoke(MAINS[cli], [str(a) for a in args])


def assert_refused(res, needle: str | None = None, *, strict: bool = True) -> str:
    """Exit 2, nothing on stdout, no traceback, and one ``error:`` line on stderr (``strict``: nothing
    else at all; otherwise INFO/WARNING log lines of models loaded before the refusal may precede it)."""
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert res.exit_code == 2, res.output
    assert res.stdout == "" and "Traceback" not in res.output, res.output
    lines = res.stderr.splitlines()
    if not strict:
        lines = [ln for ln in lines if not ln.startswith(("INFO:", "WARNING:"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    if needle is not None:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------ argument builders
QUICK = ["--steps", "1", "--loss", "l1", "--no-progress", "--device", "cpu"]


def rsg(k: Kit, w: Path, *extra, inp=None) -> list:
    return [inp or w / "in.png", "--generator", k.gen, "--redegrader", k.red, *QUICK, "-o", w / "out.png", *extra]


def dps(k: Kit, w: Path, *extra, inp=None) -> list:
    return [inp or w / "in.png", "--backend", "dps", "--diffusion-model", k.unet, "--redegrader", k.red, "--steps", "2",
            "--loss", "l1", "--no-progress", "--device", "cpu", "-o", w / "out.png", *extra]


def tr(k: Kit, w: Path, *extra, clean=None) -> list:
    return ["--degraded", w / "deg.png", "--clean", clean or w / "in.png", "--redegrader", k.red, "--device", "cpu",
            "--no-progress", "-o", w / "out.png", *extra]


def bench(k: Kit, w: Path, *extra, data=None) -> list:
    return ["--tiny", "--data", data or w / "data", "--limit", "1", "--tasks", "U", "--levels", "M", "--modes", "naive",
            "--steps", "1", "--out", w / "res", *extra]


IMAGE_CLIS = {"restore": rsg, "restore-dps": dps, "transfer": tr}


def with_input(cli: str, k: Kit, w: Path, path: Path) -> list:
    """The CLI's usual arguments with ``path`` as its (main) input image."""
    if cli == "restore":
        return rsg(k, w, inp=path)
    if cli == "restore-dps":
        return dps(k, w, inp=path)
    if cli == "transfer":
        return tr(k, w, clean=path)
    data = w / "baddata"  # the benchmark reads every image of a folder
    data.mkdir(exist_ok=True)
    shutil.copyfile(path, data / path.name)
    return bench(k, w, data=data)


# ------------------------------------------------------------------------------------------ 2. data loss
def _link(w: Path, kind: str, target: str, name: str) -> Path:
    dest = w / name
    (os.symlink if kind == "symlink" else os.link)(w / target, dest)
    return dest


@pytest.mark.parametrize("cli", list(IMAGE_CLIS))
@pytest.mark.parametrize("how", ["same path", "dotted path", "symlink", "hard link"])
def test_output_that_is_the_input_is_refused_and_the_input_kept(cli, how, kit, work, no_models):
    target = "in.png"
    out = {"same path": work / target, "dotted path": f"{work}/./{target}"}.get(how)
    if out is None:
        out = _link(work, how, target, "link.png")
    before = snapshot(work, kit.root)
    res = invoke(cli, IMAGE_CLIS[cli](kit, work, "-o", out))
    assert_refused(res, "overwrite the input")
    assert snapshot(work, kit.root) == before


def test_transfer_output_that_is_the_degraded_source_is_refused(kit, work, no_models):
    before = snapshot(work, kit.root)
    for src in ("deg.png",):
        assert_refused(invoke("transfer", tr(kit, work, "-o", work / src)), "overwrite the input")
        mixed = ["--global-from", work / "deg.png", "--local-from", work / "in.png", "--clean", work / "in.png",
                 "--redegrader", kit.red, "-o", work / src]
        assert_refused(invoke("transfer", mixed), "overwrite the input")
    assert snapshot(work, kit.root) == before


@pytest.mark.parametrize("cli", ["restore", "restore-dps"])
def test_save_all_outputs_may_not_be_the_input_either(cli, kit, work, no_models):
    (work / "face_grid.png").write_bytes((work / "in.png").read_bytes())
    before = snapshot(work, kit.root)
    args = IMAGE_CLIS[cli](kit, work, "-o", work / "face.png", "--save-all", inp=work / "face_grid.png")
    assert_refused(invoke(cli, args), "face_grid.png")
    assert snapshot(work, kit.root) == before


@pytest.mark.parametrize("how", ["same path", "dotted path", "symlink", "hard link", "adm same path"])
def test_weights_convert_never_overwrites_its_input(how, work, no_models):
    src = work / ("m.pt" if how.startswith("adm") else "g.pkl")
    dst = {"same path": src, "adm same path": src, "dotted path": f"{work}/./{src.name}"}.get(how)
    if dst is None:
        dst = _link(work, how, src.name, "out.safetensors")
    before = snapshot(work)
    assert_refused(invoke("weights", ["convert", src, dst]), "overwrite the input")
    assert snapshot(work) == before


@pytest.mark.parametrize("where", ["the data folder", "inside the data folder"])
def test_benchmark_results_may_not_go_into_the_data(where, kit, work, no_models):
    out = work / "data" if where == "the data folder" else work / "data" / "results"
    before = snapshot(work)
    assert_refused(invoke("ffhqx", bench(kit, work, "--out", out)), "inside --data")
    assert snapshot(work) == before


# ------------------------------------------------------------------------------------------ 3. late failure
ALL_CLIS = ["restore", "restore-dps", "transfer", "weights", "ffhqx"]


def _output_args(cli: str, k: Kit, w: Path, out: Path) -> list:
    if cli == "weights":
        return ["convert", w / "g.pkl", out]
    if cli == "ffhqx":
        return bench(k, w, "--out", out)
    return IMAGE_CLIS[cli](k, w, "-o", out)


@pytest.mark.parametrize("cli", ALL_CLIS)
def test_output_under_a_file_is_refused_before_any_work_naming_the_file(cli, kit, work, no_models):
    before = snapshot(work, kit.root)
    line = assert_refused(invoke(cli, _output_args(cli, kit, work, work / "in.png" / "sub" / "out.png")))
    assert f"{work / 'in.png'} is a file, not a folder" in line  # the right path, not [Errno 17]
    assert snapshot(work, kit.root) == before


@pytest.mark.parametrize("cli", ALL_CLIS)
def test_read_only_location_is_refused_before_any_work(cli, kit, work, no_models, monkeypatch):
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and str(dir).startswith(str(work)):
            raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / "x"))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    before = snapshot(work, kit.root)
    out = work / "new" / "out.png" if cli != "ffhqx" else work / "res"
    assert_refused(invoke(cli, _output_args(cli, kit, work, out)), "read-only")
    assert snapshot(work, kit.root) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
@pytest.mark.parametrize("cli", ALL_CLIS)
def test_unwritable_folder_is_refused_before_any_work(cli, kit, work, no_models):
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_refused(invoke(cli, _output_args(cli, kit, work, locked / "out.png")), "permission denied")
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("cli", ["restore", "restore-dps", "transfer", "weights"])
def test_output_that_is_a_folder_is_refused(cli, kit, work, no_models):
    (work / "folder").mkdir()
    before = snapshot(work, kit.root)
    assert_refused(invoke(cli, _output_args(cli, kit, work, work / "folder")), "folder")
    assert snapshot(work, kit.root) == before


@pytest.mark.parametrize("cli", ["restore", "restore-dps", "transfer"])
@pytest.mark.parametrize("name", ["out.xbm", "out.psd", "out.xyz", "noext"])
def test_output_formats_that_cannot_hold_rgb_are_refused_before_any_work(cli, name, kit, work, no_models):
    before = snapshot(work, kit.root)
    assert_refused(invoke(cli, IMAGE_CLIS[cli](kit, work, "-o", work / name)), "cannot write")
    assert snapshot(work, kit.root) == before


def test_device_files_are_never_replaced(kit, work, no_models):
    assert_refused(invoke("weights", ["convert", work / "g.pkl", "/dev/null"]), "not a regular file")
    assert Path("/dev/null").is_char_device()


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


# ------------------------------------------------------------------------------------------ 1. silently wrong
def _write_png16_grey(path: Path, value: int, size=(48, 40)) -> Path:
    Image.fromarray(np.full(size[::-1], value, np.uint16)).save(path)
    return path


def test_restore_reads_sixteen_bit_input_at_its_scale(kit, work):
    src = _write_png16_grey(work / "grey16.png", K16)
    res = invoke("restore", [src, "--mode", "naive", "--generator", kit.gen, *QUICK, "-o", work / "r.png",
                             "--save-all"])
    assert res.exit_code == 0, res.output
    y = load_image(work / "r_grid.png")[..., :RES]  # the grid's first tile is the observation
    assert abs(float((y.mean() + 1) / 2) - K16 / 65535) < 2 / 255  # not the white it was clipped to


def test_restore_applies_exif_orientation(kit, work):
    # upright: 40 wide × 80 high, dark top half and bright bottom half; stored turned, with EXIF tag 6
    upright = np.zeros((80, 40, 3), np.uint8)
    upright[40:] = 255
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the phone wrote
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(work / "phone.jpg", exif=exif, quality=95)
    res = invoke("restore", [work / "phone.jpg", "--mode", "naive", "--generator", kit.gen, *QUICK,
                             "-o", work / "r.png", "--save-all"])
    assert res.exit_code == 0, res.output
    y = load_image(work / "r_grid.png")[0, :, :, :RES]
    top, bottom = float(y[:, : RES // 2].mean()), float(y[:, RES // 2:].mean())
    assert top < -0.5 and bottom > 0.5, (top, bottom)  # sideways it would be left/right, not top/bottom


def test_transfer_reports_and_writes_the_upright_size(kit, work):
    im = Image.open(work / "deg.png").crop((0, 0, 64, 48))  # stored 64 wide × 48 high
    exif = im.getexif()
    exif[0x0112] = 8
    im.save(work / "turned.jpg", exif=exif, quality=95)
    res = invoke("transfer", ["--degraded", work / "turned.jpg", "--clean", work / "turned.jpg", "--redegrader",
                              kit.red, "--device", "cpu", "-o", work / "o.png"])
    assert res.exit_code == 0, res.output
    assert Image.open(work / "o.png").size == (48, 64) and "(48×64)" in res.stderr


@pytest.mark.parametrize("cli", ["restore", "transfer"])
def test_dropped_alpha_and_frames_are_announced(cli, kit, work):
    a = np.zeros((64, 64, 4), np.uint8)
    a[..., 3] = 255
    a[:8, :, 3] = 0
    Image.fromarray(a, "RGBA").save(work / "alpha.png")
    frames = [Image.new("RGB", (64, 64), c) for c in ((200, 10, 10), (10, 200, 10))]
    frames[0].save(work / "anim.gif", save_all=True, append_images=frames[1:])
    for path, needle in ((work / "alpha.png", "transparency"), (work / "anim.gif", "2 frames")):
        args = ([path, "--mode", "naive", "--generator", kit.gen, *QUICK, "-o", work / "r.png"] if cli == "restore"
                else ["--degraded", work / "deg.png", "--clean", path, "--redegrader", kit.red, "-o", work / "o.png"])
        res = invoke(cli, args)
        assert res.exit_code == 0, res.output
        assert needle in res.stderr


def test_benchmark_reads_sixteen_bit_ground_truth_at_its_scale(kit, work):
    data = work / "data16"
    data.mkdir()
    _write_png16_grey(data / "00000.png", K16, size=(RES, RES))
    res = invoke("ffhqx", bench(kit, work, "--max-rows", "1", data=data))
    assert res.exit_code == 0, res.output
    gt = load_image(work / "res" / "images" / "00000" / "gt.png")
    assert abs(float((gt.mean() + 1) / 2) - K16 / 65535) < 2 / 255


def test_a_diverged_restoration_is_refused_not_written_black(kit, work):
    res = invoke("restore-dps", dps(kit, work, "--zeta", "1e30", "--steps", "20"))
    assert_refused(res, "non-finite", strict=False)
    assert not (work / "out.png").exists()


def test_aggregating_nothing_writes_nothing(kit, work, no_models):
    before = snapshot(work)
    assert_refused(invoke("ffhqx", ["--tiny", "--aggregate-only", "--out", work / "res"]), "no results")
    assert snapshot(work) == before


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


# ------------------------------------------------------------------------------------------ 7. progress
def test_transfer_progress_counts_every_layer_of_the_run(kit):
    from redegrade.redegrader import Redegrader

    model = Redegrader.from_pretrained(kit.red)
    x = torch.zeros(1, 3, 48, 64)
    for two in (False, True):
        total = transfer.count_layers(model, two_sources=two)
        seen = []
        import tqdm.auto

        real = tqdm.auto.tqdm

        class Spy(real):
            def update(self, n=1):
                seen.append(n)
                return super().update(n)

        tqdm.auto.tqdm = Spy
        try:
            with transfer.layer_progress(model, total):
                transfer.transfer(model, x, x + 0.1, x - 0.1 if two else None, uniform_local=True)
        finally:
            tqdm.auto.tqdm = real
        assert total > 0 and sum(seen) == total
