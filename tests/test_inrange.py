"""The in-range benchmark and its diagnosis (``benchmarks/inrange.py``, ``benchmarks/diagnose.py``), run as a
user runs them, on the built-in small generator with one step per phase."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, REDEGRADE_OFFLINE="1", HF_HUB_OFFLINE="1", REDEGRADE_HOME=str(tmp / "home"),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_inrange_prints_every_task_and_mode_with_per_phase_psnr(tmp_path):
    out = tmp_path / "rows.jsonl"
    res = _run("inrange.py", "--resolution", "32", "--images", "1", "--tasks", "N,A", "--steps", "1",
               "--out", str(out), tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["task"], r["mode"]) for r in rows} == {(t, m) for t in "NA" for m in ("naive", "blind", "nonblind")}
    blind = next(r for r in rows if r["mode"] == "blind")
    naive = next(r for r in rows if r["mode"] == "naive")
    assert list(naive["phases"]) == ["W", "W+", "W++"]  # naive has nothing for V to hold
    assert all(math.isfinite(r["psnr"]) and r["psnr"] > 0 for r in rows)
    assert "| N_M |" in res.stdout and "gap closed" in res.stdout and "PSNR after each phase" in res.stdout
    assert set(blind["phases"]) <= {"V", "W", "W+", "W++"}


def test_diagnose_reports_margins_for_identity_known_and_redegrader(tmp_path):
    res = _run("diagnose.py", "--resolution", "32", "--images", "1", "--tasks", "A,N,U", "--fit-steps", "2",
               tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "### U_M" in res.stdout                            # U's known output is small: compared at full size
    assert "### A_M" in res.stdout and "**margin**" in res.stdout and "cos(red, known)" in res.stdout
    # non-blind JPEG explains its own output almost exactly: the true image must win under it
    margin_row = next(line for line in res.stdout.splitlines() if line.startswith("| **margin**"))
    known = float(margin_row.split("|")[3].strip().strip("*"))
    assert known > 0
    # the noise measurement: N's known degradation renders y's noise level and drops pixels as y does
    noise = res.stdout.split("### N_M")[1]
    sigma_y, sigma_known = map(float, re.search(r"band σ y ([\d.]+), known ([\d.]+)", noise).groups())
    black_y, black_known = map(float, re.search(r"black pixels y ([\d.]+) %, known ([\d.]+) %", noise).groups())
    assert sigma_known == pytest.approx(sigma_y, rel=0.3)
    assert black_y > 1 and black_known > 1
    # N's drop darkens x's brightest values more than its darkest ones, in y and in the known degradation
    dark_y, bright_y, dark_known, bright_known = map(float, re.search(
        r"brightest quarter y ([-+.\d]+) / ([-+.\d]+), known ([-+.\d]+) / ([-+.\d]+)", noise).groups())
    assert bright_y < dark_y < 0.05 and bright_known < dark_known < 0.05
