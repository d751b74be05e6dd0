"""The FFHQ-X benchmark harness (``benchmarks/ffhqx.py``) and its metrics (``redegrade.metrics``).

The harness runs as a user runs it — a subprocess — in its ``--tiny`` smoke mode: a tiny random
StyleGAN2, a tiny random universal degradation model and generated 32² images. Offline, LPIPS-VGG and
pFID's Inception cannot be had, so those columns must stay empty without failing the run; the pFID
path itself is exercised with a stand-in feature network.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from redegrade import metrics

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ffhqx.py"
# 2 images × (U at M, NP at M) × 3 modes = 12 rows; one step in two phases keeps it to seconds per row
SMALL = ["--tiny", "--limit", "2", "--tasks", "U,NP", "--levels", "M", "--steps", "1", "-o", "phases=W,W++"]
ROWS = 12


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # offline and isolated like the rest of the suite; one thread per process beats two on a busy machine
    env.update(REDEGRADE_OFFLINE="1", HF_HUB_OFFLINE="1", REDEGRADE_HOME=str(tmp / "home"),
               OMP_NUM_THREADS="1", **extra)
    return env


def _cmd(out: Path, *extra: str, args=SMALL) -> list[str]:
    return [sys.executable, str(SCRIPT), *args, "--out", str(out), *extra]


def _run(out: Path, *extra: str, args=SMALL, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, *extra, args=args), env=_env(out.parent, **(env_extra or {})),
                          capture_output=True, text=True, timeout=900)


def _lines(out: Path) -> list[str]:
    return [ln for p in sorted(out.glob("results.rank*.jsonl")) for ln in p.read_text().splitlines() if ln.strip()]


def _csv(out: Path) -> list[dict[str, str]]:
    with open(out / "table.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted small smoke run (its wall time is printed for the record)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    t0 = time.perf_counter()
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"small smoke run: {time.perf_counter() - t0:.1f} s")
    return out


def test_smoke_run_writes_rows_table_and_grids(reference):
    rows = [json.loads(ln) for ln in _lines(reference)]
    assert len(rows) == ROWS
    assert len({r["key"] for r in rows}) == ROWS
    assert {r["mode"] for r in rows} == {"blind", "naive", "nonblind"}
    assert {(r["task"], r["level"]) for r in rows} == {("U", "M"), ("NP", "M")}
    for r in rows:
        assert np.isfinite(r["accuracy_psnr"]) and np.isfinite(r["fidelity_psnr"])
        assert r["accuracy_lpips"] is None and r["fidelity_lpips"] is None  # no VGG weights offline: empty, no crash
        assert (reference / r["restored"]).is_file() and (reference / r["degraded"]).is_file()
        assert Image.open(reference / r["restored"]).size == (32, 32)
    # U at M downsamples 32² by 8: the saved observation keeps its native size
    u = next(r for r in rows if r["task"] == "U")
    assert Image.open(reference / u["degraded"]).size == (4, 4)

    md = (reference / "table.md").read_text()
    assert "| U | M | 2 |" in md and "| NP | M | 2 |" in md
    assert "non-blind" in md and "weights were unavailable" in md
    table = _csv(reference)
    assert [(t["task"], t["level"]) for t in table] == [("U", "M"), ("NP", "M")]  # the paper's order
    for t in table:
        assert t["naive_accuracy_lpips"] == "" and t["blind_realism_pfid"] == ""
        mean = np.mean([r["accuracy_psnr"] for r in rows if (r["task"], r["mode"]) == (t["task"], "blind")])
        assert float(t["blind_accuracy_psnr"]) == pytest.approx(mean, rel=1e-5)
    # bold marks the better blind-family value (naive vs. blind) of every PSNR cell pair
    for line in md.splitlines():
        if line.startswith("| U | M") and "**" in line:
            break
    else:
        pytest.fail("no bold value in the table")

    for task in ("U", "NP"):
        grid = Image.open(reference / "grids" / f"{task}.png")
        assert grid.size == (5 * 32, 2 * 32)  # GT | degraded | naive | blind | non-blind, one row per image


def test_resume_after_kill_gives_the_same_table_without_duplicates(reference, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(out), env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and len(_lines(out)) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(_lines(out))
    assert 3 <= done < ROWS and not (out / "table.md").exists()
    # a kill in the middle of a write leaves half a line: the next run must cut it, not choke on it
    with open(out / "results.rank0.jsonl", "a") as f:
        f.write('{"key": "00000|NP|M|bl')

    final = _run(out)
    assert final.returncode == 0, final.stderr[-3000:]
    keys = [json.loads(ln)["key"] for ln in _lines(out)]
    assert len(keys) == ROWS == len(set(keys))
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()
    assert (out / "table.md").read_text() == (reference / "table.md").read_text()

    before = (out / "results.rank0.jsonl").read_text()
    again = _run(out)  # a finished run: nothing to do, nothing appended
    assert again.returncode == 0 and "0 rows to do" in again.stderr
    assert (out / "results.rank0.jsonl").read_text() == before


def test_different_settings_refuse_the_same_out(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    proc = _run(out, "--seed", "7")
    assert proc.returncode == 2
    assert "different settings" in proc.stderr and "seed" in proc.stderr
    assert len(_lines(out)) == ROWS


def test_bad_flags_are_one_line_errors(tmp_path):
    proc = _run(tmp_path / "out", "--modes", "blind,psychic")
    assert proc.returncode == 2 and "--modes" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and not (tmp_path / "out" / "run.json").exists()


def _load_harness():
    spec = importlib.util.spec_from_file_location("ffhqx_harness", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


class _FakeInception(torch.nn.Module):
    """Stands in for pytorch-fid's Inception (whose weights are not available offline): 6-d features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1, 1, self.conv.weight.numel()).reshape(self.conv.weight.shape))

    def forward(self, x):
        return [self.conv(x).mean((2, 3), keepdim=True)]


def test_realism_column_with_a_feature_network(reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    monkeypatch.setattr(metrics, "inception_network", lambda: _FakeInception())
    ffhqx = _load_harness()
    bench = ffhqx.Bench(out=out, tiny=True, steps=1, loss="l1", crop_size=16, crops=8, device="cpu")
    table = ffhqx.aggregate(bench)
    assert all(rec[f"{m}_realism_pfid"] is not None and rec[f"{m}_realism_pfid"] >= -1e-6
               for rec in table for m in ("naive", "blind", "nonblind"))
    assert len(list((out / "pfid").glob("gt_*.npz"))) == 1
    assert _csv(out)[0]["blind_realism_pfid"] != ""
    # cached statistics give the same numbers
    again = ffhqx.aggregate(bench)
    assert [r["blind_realism_pfid"] for r in again] == [r["blind_realism_pfid"] for r in table]


@pytest.mark.slow
def test_sharded_run_merges_into_the_same_table(reference, tmp_path):
    out = tmp_path / "out"
    for rank in (1, 0):  # what torchrun --nproc_per_node=2 starts, one after the other
        proc = _run(out, env_extra={"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.glob("results.rank*.jsonl")} == {"results.rank0.jsonl", "results.rank1.jsonl"}
    assert (out / "table.csv").read_text() == (reference / "table.csv").read_text()


@pytest.mark.slow
def test_full_smoke_run_covers_every_task_and_mode(tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = _run(out, args=["--tiny", "--limit", "1", "--steps", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"full smoke run (1 image, 31 tasks × 3 modes): {time.perf_counter() - t0:.1f} s")
    rows = [json.loads(ln) for ln in _lines(out)]
    assert len(rows) == 31 * 3
    assert len(_csv(out)) == 31
    assert len(list((out / "grids").glob("*.png"))) == 15


# ------------------------------------------------------------------------------------------ metrics

def test_psnr_of_a_known_error():
    x = torch.zeros(1, 3, 8, 8)
    from redegrade.pixels.scale import psnr

    assert float(psnr(x + 0.2, x)) == pytest.approx(10 * np.log10(4 / 0.04))
    assert float(psnr(x, x)) == float("inf")


def test_feature_stats_match_numpy_and_frechet_of_equal_stats_is_zero():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 5))
    acc = metrics.FeatureStats()
    acc.add(feats[:20])
    acc.add(feats[20:])
    mu, sigma = acc.mean_cov()
    np.testing.assert_allclose(mu, feats.mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), atol=1e-10)
    assert metrics.frechet_distance((mu, sigma), (mu, sigma)) == pytest.approx(0, abs=1e-6)
    assert metrics.frechet_distance((mu + 1, sigma), (mu, sigma)) == pytest.approx(5, rel=1e-4)


def test_crops_are_seeded_and_inside_the_image():
    pos = metrics.crop_positions(40, 30, 16, 100, torch.Generator().manual_seed(3))
    again = metrics.crop_positions(40, 30, 16, 100, torch.Generator().manual_seed(3))
    assert torch.equal(pos, again)
    assert pos[:, 0].max() <= 24 and pos[:, 1].max() <= 14 and pos.min() >= 0
    x = torch.arange(40 * 30, dtype=torch.float32).reshape(1, 1, 40, 30).expand(1, 3, 40, 30)
    crops = metrics.take_crops(x, pos[:2], 16)
    assert crops.shape == (2, 3, 16, 16)
    assert crops[0, 0, 0, 0] == x[0, 0, pos[0, 0], pos[0, 1]]


def test_unavailable_network_warns_once_and_gives_none(caplog):
    calls = []

    def build():
        calls.append(1)
        raise metrics.CheckpointError("no weights here")

    net = metrics.OptionalNetwork("thing", build)
    assert net.get() is None and net.get() is None
    assert len(calls) == 1 and caplog.text.count("no weights here") == 1


def test_lpips_distance_handles_tiny_targets():
    net = metrics.lpips_network(pretrained_backbone=False)  # random VGG: offline stand-in for the real metric
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 3, 1, 1, generator=g) * 2 - 1  # a 32× downsampled 32² image is one pixel
    assert metrics.lpips_distance(net, a, a) == pytest.approx(0, abs=1e-6)
    assert metrics.lpips_distance(net, a, b) > 0


@pytest.mark.slow
def test_step_cost_prints_ratios_to_naive(tmp_path):
    script = ROOT / "benchmarks" / "step_cost.py"
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(script), "--resolutions", "32", "--steps", "2", "--loss", "l1",
                           "-o", "phases=W", "--json", str(out)], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())["32"]
    assert set(res) == {"naive", "blind", "nonblind"}
    assert set(res["blind"]["breakdown"]) == {"encoder", "forward", "backward"}
    assert "redegrader share: encoders" in proc.stdout
    assert all(r["all_steps"] > 0 and r["peak_bytes"] >= 0 for r in res.values())
    naive_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| naive | all"))
    assert "| 1.00 |" in naive_line
