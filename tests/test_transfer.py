"""Degradation transfer: the library function, the CLI's mechanics and errors, and the shipped model."""
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from redegrade import quality
from redegrade.pixels.scale import psnr
from redegrade.image import load_image, pil_to_tensor, png_roundtrip, save_image
from redegrade.model import ModelConfig, UniversalDegradationModel
from redegrade.redegrader import Redegrader, default_dir
from redegrade.settings import generator
from redegrade.transfer import main, resize_local, transfer, transfer_code

EXAMPLES = Path(__file__).resolve().parents[1] / "redegrade" / "data" / "examples"
SHIPPED = (default_dir() / "model.safetensors").is_file()
needs_shipped = pytest.mark.skipif(not SHIPPED, reason="the shipped redegrader weights are not installed")
# Issue #3 is open: the shipped model transfers noise onto generated and held-out images, but not the
# README example's JPEG-compressed noise (redegrade/data/redegrader/MODEL_CARD.md). Strict, so a model
# that passes turns this into a failure that asks for the marker to go.
# strict: a shipped model that passes must drop the mark (the model card's Limitations say why it fails)
not_yet_transferring = pytest.mark.xfail(
    strict=True, reason="the shipped model moves the README example's JPEG'd noise 0.44 of the way, not 0.5")


def smooth_image(seed: int, h: int = 64, w: int = 64) -> torch.Tensor:
    """A smooth colour image with an edge, [1,3,h,w] in [-1,1], 8-bit quantised."""
    g = generator(seed)
    base = torch.rand(1, 3, 4, 4, generator=g) * 1.6 - 0.8
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)
    x[..., h // 3:, : w // 2] -= 0.3
    return png_roundtrip(x.clamp(-0.95, 0.95))


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    return png_roundtrip((x + 2 * sigma * torch.randn(x.shape, generator=generator(seed))).clamp(-1, 1))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny redegrader with fixed (seeded) random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # module init uses the global RNG; fork so nothing leaks out
        model = UniversalDegradationModel(ModelConfig.preset("tiny"))
    with torch.no_grad():
        # an untrained model's codes barely depend on the image, and all of them round to the same integers;
        # sharpen the encoders' last layers so different sources give different quantised codes
        model.hden.head[2].weight.mul_(300)
        model.iden.fuse[2].weight.mul_(300)
    d = tmp_path_factory.mktemp("tiny_redegrader")
    Redegrader.from_model(model).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Redegrader:
    return Redegrader.from_pretrained(tiny_dir)


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """clean (64×64), two degraded sources of other content, and a 60×70 image that needs cropping."""
    paths = {}
    for name, t in {"clean": smooth_image(0), "a": noisy(smooth_image(1), 0.1), "b": noisy(smooth_image(2), 0.02, 2),
                    "odd": smooth_image(3, 60, 70)}.items():
        paths[name] = save_image(t, tmp_path / f"{name}.png")
    return paths


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------------------------- mechanics


def test_cli_output_is_the_library_transfer_and_seeded(tiny, tiny_dir, images, tmp_path):
    out1, out2, out3 = tmp_path / "o1.png", tmp_path / "o2.png", tmp_path / "o3.png"
    base = ["--degraded", images["a"], "--clean", images["clean"], "--redegrader", tiny_dir, "--device", "cpu"]
    assert run(*base, "-o", out1, "--seed", 3).exit_code == 0
    assert run(*base, "-o", out2, "--seed", 3).exit_code == 0
    assert run(*base, "-o", out3, "--seed", 4).exit_code == 0
    got = load_image(out1)
    want = transfer(tiny, load_image(images["clean"]), load_image(images["a"]), generator=generator(3))
    assert got.shape == (1, 3, 64, 64)
    assert torch.equal(got, png_roundtrip(want))
    assert out1.read_bytes() == out2.read_bytes()  # one seed, one output
    assert not torch.equal(got, load_image(out3))  # the seed drives the noise maps


def test_cli_crops_to_multiples_of_8_and_says_so(tiny_dir, images, tmp_path):
    out = tmp_path / "o.png"
    r = run("--degraded", images["odd"], "--clean", images["odd"], "-o", out, "--redegrader", tiny_dir)
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (64, 56)
    assert "cropping" in r.output


def test_mixed_transfer_takes_e_g_and_e_l_from_the_named_sources(tiny, tiny_dir, images, tmp_path):
    x, a, b = (load_image(images[k]) for k in ("clean", "a", "b"))
    b_wide = torch.cat([b, b.flip(-1)], dim=-1)[..., :, :80]  # 64×80: e_l must be resized to x's grid
    code = transfer_code(tiny, x, a, b_wide)
    code_a, code_b = tiny.encode(a), tiny.encode(b_wide)
    assert torch.equal(code.e_g, code_a.e_g)
    assert not torch.allclose(code.e_g, code_b.e_g)
    assert code.e_l.shape == (1, 4, 32, 32)
    assert torch.allclose(code.e_l, resize_local(code_b.e_l, (32, 32)))
    assert not torch.allclose(code.e_l, code_a.e_l)

    # the CLI's mixed output is exactly that code synthesised, and differs from the swapped mix
    out, swapped = tmp_path / "mixed.png", tmp_path / "swapped.png"
    for o, gf, lf in ((out, "a", "b"), (swapped, "b", "a")):
        r = run("--global-from", images[gf], "--local-from", images[lf], "--clean", images["clean"], "-o", o,
                "--redegrader", tiny_dir, "--seed", 5)
        assert r.exit_code == 0, r.output
    want = png_roundtrip(transfer(tiny, x, a, b, generator=generator(5)))
    assert torch.equal(load_image(out), want)
    assert not torch.equal(load_image(out), load_image(swapped))


def test_uniform_local_accepts_any_aspect_ratio(tiny, images):
    x, a = load_image(images["clean"]), load_image(images["a"])
    wide = torch.cat([a, a, a], dim=-1)  # 64×192: 3× the clean aspect ratio
    code = transfer_code(tiny, x, wide, uniform_local=True)
    assert code.e_l.shape == (1, 4, 32, 32)
    assert torch.allclose(code.e_l, code.e_l[..., :1, :1].expand_as(code.e_l))
    from redegrade.errors import InputError

    with pytest.raises(InputError, match="aspect"):
        transfer_code(tiny, x, wide)


# ---------------------------------------------------------------------------------------- errors


def _bad_inputs(tmp: Path, images: dict[str, Path]) -> dict[str, tuple[list, str]]:
    garbage = tmp / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    truncated = tmp / "truncated.png"
    truncated.write_bytes(images["clean"].read_bytes()[:200])
    tiny_img = save_image(smooth_image(4, 12, 12), tmp / "small.png")
    tall = save_image(smooth_image(5, 128, 32), tmp / "tall.png")
    return {
        "missing file": (["--degraded", tmp / "nope.png", "--clean", images["clean"]], "no such file"),
        "not an image": (["--degraded", garbage, "--clean", images["clean"]], "cannot read image"),
        "truncated": (["--degraded", images["a"], "--clean", truncated], "cannot read image"),
        "too small": (["--degraded", images["a"], "--clean", tiny_img], "at least 16"),
        "aspect mismatch": (["--degraded", tall, "--clean", images["clean"]], "aspect"),
        "no source": (["--clean", images["clean"]], "--degraded"),
        "half a mix": (["--global-from", images["a"], "--clean", images["clean"]], "--global-from"),
        "bad extension": (["--degraded", images["a"], "--clean", images["clean"], "-o", tmp / "out.xyz"], "extension"),
        "no cuda": (["--degraded", images["a"], "--clean", images["clean"], "--device", "cuda:7"], "cuda"),
        "no model": (["--degraded", images["a"], "--clean", images["clean"], "--redegrader", tmp / "none"], "none"),
    }


@pytest.mark.parametrize("case", ["missing file", "not an image", "truncated", "too small", "aspect mismatch",
                                  "no source", "half a mix", "bad extension", "no cuda", "no model"])
def test_bad_inputs_give_one_line_exit_2_and_write_nothing(case, tiny_dir, images, tmp_path):
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args, needle = _bad_inputs(tmp_path, images)[case]
    out = tmp_path / "out.png"
    if "-o" not in args:
        args = [*args, "-o", out]
    if "--redegrader" not in args:
        args = [*args, "--redegrader", tiny_dir]
    before = set(tmp_path.iterdir())
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert needle.lower() in lines[0].lower()
    assert set(tmp_path.iterdir()) == before  # nothing written, not even a temp file


def test_non_rgb_convertible_modes_are_read_or_refused_cleanly(tiny_dir, images, tmp_path):
    # 16-bit greyscale converts to RGB; a 1-bit image too: both must give an output, never a traceback
    for mode in ("I;16", "1", "LA", "P"):
        p = tmp_path / f"{mode.replace(';', '')}.png"
        Image.new(mode, (32, 32)).save(p)
        r = run("--degraded", images["a"], "--clean", p, "-o", tmp_path / "o.png", "--redegrader", tiny_dir)
        assert r.exit_code == 0, (mode, r.output)


# ---------------------------------------------------------------------------------- shipped model


@needs_shipped
def test_shipped_model_loads_fast_on_cpu():
    Redegrader.from_pretrained()  # warm the import and file caches
    t0 = time.perf_counter()
    model = Redegrader.from_pretrained()
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"loading took {elapsed:.2f} s"
    assert next(model.parameters()).device.type == "cpu"
    size = sum(f.stat().st_size for f in default_dir().iterdir())
    assert size <= 20 * 2 ** 20


def natural_like(seed: int, side: int = 128) -> torch.Tensor:
    """A generated image with a photo-like spectrum: random octaves (grid sizes off the 8-px block grid)."""
    g = generator(seed)
    x = torch.zeros(1, 3, side, side)
    for res, amp in ((5, 0.6), (11, 0.3), (23, 0.15), (47, 0.08), (97, 0.05)):
        grid = torch.rand(1, 3, res, res, generator=g) * 2 - 1
        x += amp * torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return png_roundtrip(x.clamp(-1, 1))


@needs_shipped
def test_shipped_model_transfers_noise_and_a_clean_source_changes_little(tmp_path):
    x, source = natural_like(10), natural_like(11)
    target = noisy(x, 0.06)  # the same degradation applied directly to x
    paths = {k: save_image(v, tmp_path / f"{k}.png") for k, v in
             {"clean": x, "source": source, "noisy_source": noisy(source, 0.06)}.items()}
    for src, out in (("noisy_source", "noisy_out.png"), ("source", "kept_out.png")):
        r = run("--degraded", paths[src], "--clean", paths["clean"], "-o", tmp_path / out, "--device", "cpu")
        assert r.exit_code == 0, r.output
    out, kept = load_image(tmp_path / "noisy_out.png"), load_image(tmp_path / "kept_out.png")
    n_x, n_t, n_out = (float(quality.noise_level(t)) for t in (x, target, out))
    assert quality.fraction_moved(n_out, n_x, n_t) > 0.5, (n_x, n_t, n_out)
    assert float(psnr(kept, x)) > 28
    assert abs(float(quality.noise_level(kept)) - n_x) < 0.25 * (n_t - n_x)


def skimage_photos() -> dict[str, torch.Tensor]:
    """scikit-image's coffee, chelsea and astronaut photos, whole, at 128² in [-1,1]."""
    skdata = pytest.importorskip("skimage.data")
    return {n: pil_to_tensor(Image.fromarray(getattr(skdata, n)()).resize((128, 128), Image.Resampling.LANCZOS))
            for n in ("coffee", "chelsea", "astronaut")}


@needs_shipped
def test_shipped_model_transfers_jpeg_blocking_between_photos():
    from redegrade.degradations import jpeg

    photo = skimage_photos()
    compress = lambda t: jpeg.decode(jpeg.encode((t + 1) / 2, 20)) * 2 - 1  # noqa: E731
    r = Redegrader.from_pretrained()
    for clean, source in (("chelsea", "coffee"), ("astronaut", "chelsea"), ("coffee", "astronaut")):
        x = photo[clean]
        out = transfer(r, x, compress(photo[source]), generator=generator(0))
        b_x, b_t, b_out = (float(quality.blockiness(t)) for t in (x, compress(x), out))
        # measured 0.44-0.54 (the model before the JPEG head: -0.01-0.00). Whole photos downscaled to
        # 128² are dense; 192² crops of larger photos move further (model card: 0.96 on its test photos)
        assert quality.fraction_moved(b_out, b_x, b_t) > 0.3, (clean, source, b_x, b_t, b_out)


@needs_shipped
def test_shipped_model_transfers_weak_noise_between_photos():
    photo = skimage_photos()
    r = Redegrader.from_pretrained()
    moved = []
    for clean, source in (("chelsea", "coffee"), ("astronaut", "chelsea"), ("coffee", "astronaut")):
        x = photo[clean]
        out = transfer(r, x, noisy(photo[source], 0.05, seed=1), generator=generator(0))
        n_x, n_t, n_out = (float(quality.noise_level(t)) for t in (x, noisy(x, 0.05, seed=2), out))
        moved.append(quality.fraction_moved(n_out, n_x, n_t))
    # measured 0.54, 0.59, 0.27 (stage 14: 0.41, 0.39, 0.26); before the noise head was re-grown with
    # --lambda-noise: 0.13-0.19, mean 0.16
    assert sum(moved) / len(moved) > 0.25, moved


@needs_shipped
@not_yet_transferring
def test_readme_one_liner_on_the_bundled_examples(tmp_path):
    out = tmp_path / "out.png"
    r = run("--degraded", EXAMPLES / "degraded.png", "--clean", EXAMPLES / "clean.png", "-o", out)
    assert r.exit_code == 0, r.output
    clean, deg, got = (load_image(p) for p in (EXAMPLES / "clean.png", EXAMPLES / "degraded.png", out))
    assert got.shape == clean.shape
    # the coffee photo's noise and blocking show up on the astronaut
    assert float(quality.noise_level(got)) > float(quality.noise_level(clean)) + 0.5 * (
        float(quality.noise_level(deg)) - float(quality.noise_level(clean)))


def test_lost_pixels_travel_with_the_local_code():
    from model_helpers import _with

    red = Redegrader(_with("lost_pixels"))
    x, a, b = smooth_image(0), smooth_image(1), smooth_image(2)
    b[..., 10, 20] = -1.0
    code = transfer_code(red, x, a, b)
    assert code.keep[0, 0, 10, 20] == 0 and code.keep.sum() == 64 * 64 - 1
    assert transfer_code(red, x, b, uniform_local=True).keep is None   # a uniform map has no places
    assert (transfer(red, x, a, b)[..., 10, 20] == -1).all()


def test_the_resize_factor_travels_with_the_global_code():
    from model_helpers import _with

    from redegrade.image import resize

    red = Redegrader(_with("resized"))
    x, a = smooth_image(0), noisy(smooth_image(1), 0.1)
    small = resize(resize(noisy(smooth_image(2), 0.1), 16), 64)
    assert transfer_code(red, x, small, a).factor.tolist() == [4]    # e_g from the 16² source, e_l from a
    assert transfer_code(red, x, a, small).factor.tolist() == [1]
