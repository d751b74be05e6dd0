"""The one input path for images (:func:`redegrade.image.read_image`): every Pillow mode at its own scale,
EXIF orientation, transparency and extra frames handled with a one-line notice, and clean refusals.

A known pixel value must survive loading within 1/255 whatever the mode the file stores it in.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from redegrade.errors import InputError
from redegrade.image import load_image, pil_to_tensor, probe_image, read_image

TOL = 1 / 255 + 1e-6  # in [0, 1] units


def as_unit(a: np.ndarray) -> np.ndarray:
    """[-1, 1] → [0, 1]."""
    return (a + 1) / 2


def write_png16(path: Path, arr: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour): 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _palette(rgb) -> Image.Image:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([*rgb, *([0] * 765)])
    return im


# (name, how the file is made, expected RGB in [0, 1])
K16 = 30000  # a 16-bit value: 30000/65535 ≈ 0.458 (8-bit clipping made it pure white)
CASES = {
    "1 (png)": (lambda p: Image.new("1", (8, 8), 1).save(p.with_suffix(".png")), (1, 1, 1)),
    "L (png)": (lambda p: Image.new("L", (8, 8), 100).save(p.with_suffix(".png")), (100 / 255,) * 3),
    "L (jpeg)": (lambda p: Image.new("L", (8, 8), 100).save(p.with_suffix(".jpg"), quality=100), (100 / 255,) * 3),
    "LA opaque (png)": (lambda p: Image.new("LA", (8, 8), (100, 255)).save(p.with_suffix(".png")), (100 / 255,) * 3),
    "P (png)": (lambda p: _palette((10, 200, 30)).save(p.with_suffix(".png")), (10 / 255, 200 / 255, 30 / 255)),
    "P (gif)": (lambda p: _palette((10, 200, 30)).save(p.with_suffix(".gif")), (10 / 255, 200 / 255, 30 / 255)),
    "RGB (png)": (lambda p: Image.new("RGB", (8, 8), (10, 200, 30)).save(p.with_suffix(".png")),
                  (10 / 255, 200 / 255, 30 / 255)),
    "RGB (bmp)": (lambda p: Image.new("RGB", (8, 8), (10, 200, 30)).save(p.with_suffix(".bmp")),
                  (10 / 255, 200 / 255, 30 / 255)),
    "RGBA opaque (png)": (lambda p: Image.new("RGBA", (8, 8), (10, 200, 30, 255)).save(p.with_suffix(".png")),
                          (10 / 255, 200 / 255, 30 / 255)),
    "I;16 (png)": (lambda p: Image.fromarray(np.full((8, 8), K16, np.uint16)).save(p.with_suffix(".png")),
                   (K16 / 65535,) * 3),
    "I;16 (tiff)": (lambda p: Image.fromarray(np.full((8, 8), K16, np.uint16)).save(p.with_suffix(".tif")),
                    (K16 / 65535,) * 3),
    "I;16B (tiff)": (lambda p: Image.new("I;16B", (8, 8), K16).save(p.with_suffix(".tif")), (K16 / 65535,) * 3),
    "I 32-bit (tiff)": (lambda p: Image.fromarray(np.full((8, 8), K16, np.int32)).save(p.with_suffix(".tif")),
                        (K16 / 65535,) * 3),
    "F float (tiff)": (lambda p: Image.fromarray(np.full((8, 8), 0.25, np.float32)).save(p.with_suffix(".tif")),
                       (0.25,) * 3),
    "16-bit grey (png, hand-written)": (lambda p: write_png16(p.with_suffix(".png"), np.full((8, 8, 1), K16), 0),
                                        (K16 / 65535,) * 3),
    "16-bit RGB (png)": (lambda p: write_png16(p.with_suffix(".png"),
                                               np.stack([np.full((8, 8), v) for v in (K16, 0, 65535)], -1), 2),
                         (K16 / 65535, 0, 1)),
    "16-bit grey+alpha opaque (png)": (lambda p: write_png16(p.with_suffix(".png"),
                                                             np.stack([np.full((8, 8), K16), np.full((8, 8), 65535)],
                                                                      -1), 4), (K16 / 65535,) * 3),
    "CMYK (tiff)": (lambda p: Image.new("CMYK", (8, 8), (0, 128, 255, 0)).save(p.with_suffix(".tif")),
                    (1, 127 / 255, 0)),
    "CMYK (jpeg)": (lambda p: Image.new("CMYK", (8, 8), (0, 128, 255, 0)).save(p.with_suffix(".jpg"), quality=100),
                    (1, 127 / 255, 0)),
    "YCbCr (tiff)": (lambda p: Image.new("YCbCr", (8, 8), (128, 128, 128)).save(p.with_suffix(".tif")),
                     (128 / 255,) * 3),
    "LAB (tiff)": (lambda p: Image.new("LAB", (8, 8), (128, 128, 128)).save(p.with_suffix(".tif")),
                   (119 / 255,) * 3),  # L* = 50 is sRGB grey 119
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_known_pixel_value_survives_loading_in_every_mode(case, tmp_path):
    make, want = CASES[case]
    make(tmp_path / "im")
    (path,) = tmp_path.iterdir()
    got = as_unit(read_image(path))
    assert got.shape == (8, 8, 3) and got.dtype == np.float32
    assert np.abs(got - np.array(want, dtype=np.float32)).max() <= TOL, (case, got[0, 0], want)
    # the tensor path is the same numbers
    t = load_image(path)
    assert t.shape == (1, 3, 8, 8)
    assert np.allclose(as_unit(t[0].permute(1, 2, 0).numpy()), got)


def test_eight_bit_rgb_is_read_exactly_as_before(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), a.astype(np.float32) / 127.5 - 1.0)
    assert np.array_equal(pil_to_tensor(Image.fromarray(a))[0].permute(1, 2, 0).numpy(), a / np.float32(127.5) - 1)


def test_pil_to_tensor_reads_sixteen_bit_at_its_scale():
    im = Image.fromarray(np.full((4, 4), K16, np.uint16))
    assert abs(float(as_unit(pil_to_tensor(im)).mean()) - K16 / 65535) < 1e-4


@pytest.mark.parametrize("turn", [2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(turn, tmp_path):
    # 12 wide × 20 high as stored, with a bright corner; viewers show it turned by the EXIF tag
    a = np.zeros((20, 12, 3), np.uint8)
    a[:4, :3] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = turn
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif, quality=100)
    from PIL import ImageOps

    with Image.open(path) as raw:
        want = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"), np.float32) / 127.5 - 1
    got = read_image(path)
    assert got.shape == want.shape
    assert got.shape[:2] == ((12, 20) if turn in (5, 6, 7, 8) else (20, 12))
    assert np.array_equal(got, want)
    w, h = probe_image(path)
    assert (h, w) == got.shape[:2]  # the header-only size is the upright size too


def test_transparency_is_composited_onto_white_with_a_notice(tmp_path, caplog):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 3] = 255
    a[0, :, 3] = 0  # first row fully transparent (black underneath)
    a[1, :, 3] = 128  # second row half transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    got = as_unit(read_image(tmp_path / "t.png"))
    assert np.allclose(got[0], 1) and np.allclose(got[1], 1 - 128 / 255, atol=1e-6) and np.allclose(got[2:], 0)
    assert "transparency" in caplog.text and "white" in caplog.text and caplog.text.count("\n") == 1


def test_palette_transparency_is_composited_too(tmp_path, caplog):
    im = _palette((10, 200, 30))
    im.putpixel((0, 0), 1)
    im.info["transparency"] = 1
    im.save(tmp_path / "p.png", transparency=1)
    got = as_unit(read_image(tmp_path / "p.png"))
    assert np.allclose(got[0, 0], 1) and np.allclose(got[1, 1], (10 / 255, 200 / 255, 30 / 255), atol=TOL)
    assert "transparency" in caplog.text


def test_opaque_alpha_gives_no_notice(tmp_path, caplog):
    Image.new("RGBA", (4, 4), (1, 2, 3, 255)).save(tmp_path / "o.png")
    read_image(tmp_path / "o.png")
    assert caplog.text == ""


@pytest.mark.parametrize("fmt", ["gif", "png", "tiff"])
def test_only_the_first_frame_of_an_animation_is_used_with_a_notice(fmt, tmp_path, caplog):
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    path = tmp_path / f"anim.{fmt}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    got = as_unit(read_image(path))
    assert got[..., 0].min() > 0.9 and got[..., 1:].max() < 0.1
    assert "3 frames" in caplog.text and "first" in caplog.text


def test_float_and_wide_integer_images_of_unknown_scale_are_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(InputError, match="unknown"):
        read_image(tmp_path / "f.tif")
    Image.fromarray(np.full((8, 8), 70000, np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(InputError, match="65535"):
        read_image(tmp_path / "i.tif")


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:60])
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    for name, needle in {"missing.png": "no such file", "folder.png": "folder", "empty.png": "cannot read",
                         "text.png": "cannot read", "cut.png": "cannot read", "cut.jpg": "truncated"}.items():
        with pytest.raises(InputError, match=needle) as err:
            read_image(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(InputError, match="not a regular file"):
        read_image("/dev/null")


def test_size_limits_are_checked_from_the_header(tmp_path):
    Image.new("RGB", (30, 10)).save(tmp_path / "small.png")
    assert probe_image(tmp_path / "small.png") == (30, 10)
    with pytest.raises(InputError, match="at least 16×16"):
        probe_image(tmp_path / "small.png", min_size=16)
    with pytest.raises(InputError, match="at least 16×16"):
        read_image(tmp_path / "small.png", min_size=16)


def test_decompression_bombs_are_refused_in_one_line(tmp_path, monkeypatch):
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10 000 px is now over twice the limit
    with pytest.raises(InputError, match="megapixel safety limit"):
        read_image(tmp_path / "bomb.png")
