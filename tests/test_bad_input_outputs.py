"""Bad input, data loss and late failure: an output never overwrites an input, and an output that
cannot be written is refused before any work (see bad_input_helpers.py for the shared contract)."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from bad_input_helpers import IMAGE_CLIS, Kit, assert_refused, bench, invoke, snapshot, tr


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
