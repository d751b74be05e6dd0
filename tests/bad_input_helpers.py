"""Bad input never loses data or gives a silently wrong answer, across every CLI.

The CLIs — ``redegrade.restore`` (rsg and dps), ``redegrade.transfer``, ``redegrade.weights`` and
``benchmarks/ffhqx.py`` — share one error path: every user error is one ``error: …`` line on stderr,
exit code 2, no traceback, the inputs unchanged (checksums) and no file left behind. Input errors are
refused before any model loads: the ``no_models`` guard makes every model loader fail loudly.

The classes follow the issue: data loss, late failure, tracebacks, misleading messages, silently wrong
results (positive checks at the end), slowness (no torch before the inputs are checked) and progress.

This module holds what the test_bad_input_*.py files share; the ``kit``, ``work`` and ``no_models``
fixtures are in conftest.py.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from redegrade import restore, transfer
from redegrade.weights import __main__ as weights_cli


ROOT = Path(__file__).resolve().parents[1]
RES = 32


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


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` (hidden ones too) with its sha256."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


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
