"""Bad input, never silently wrong: 16-bit and EXIF-rotated inputs, dropped alpha, diverged runs,
empty aggregates, and transfer's progress (see bad_input_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from redegrade import transfer
from redegrade.image import load_image

from bad_input_helpers import QUICK, RES, assert_refused, bench, dps, invoke, snapshot

K16 = 30000  # a 16-bit grey: 30000/65535 ≈ 0.458, once clipped to pure white


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
