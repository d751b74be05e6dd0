"""How fast each CLI says no: wall time of ``--help`` and of a missing-input error, as a user runs them.

Each command runs as a fresh subprocess (interpreter start included) ``--repeat`` times; the median and
the slowest are printed, with the exit code and whether stderr was one line. The target is under 1.5 s
for ``python -m redegrade.restore --help`` and a missing input; nothing here asserts it (timings depend
on the machine and its load), so run it and read the numbers::

    python benchmarks/cli_latency.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(tmp: Path) -> list[tuple[str, list[str]]]:
    missing = str(tmp / "missing.png")
    py = sys.executable
    return [
        ("restore --help", [py, "-m", "redegrade.restore", "--help"]),
        ("restore missing input", [py, "-m", "redegrade.restore", missing]),
        ("restore --backend dps missing input", [py, "-m", "redegrade.restore", missing, "--backend", "dps"]),
        ("transfer --help", [py, "-m", "redegrade.transfer", "--help"]),
        ("transfer missing input", [py, "-m", "redegrade.transfer", "--degraded", missing, "--clean", missing,
                                    "-o", str(tmp / "out.png")]),
        ("weights --help", [py, "-m", "redegrade.weights", "--help"]),
        ("weights convert missing input", [py, "-m", "redegrade.weights", "convert", str(tmp / "missing.pkl"),
                                           str(tmp / "out.safetensors")]),
        ("ffhqx --help", [py, str(ROOT / "benchmarks" / "ffhqx.py"), "--help"]),
        ("ffhqx missing --data", [py, str(ROOT / "benchmarks" / "ffhqx.py"), "--data", str(tmp / "nodata"),
                                  "--out", str(tmp / "res")]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    args = parser.parse_args()
    env = {**os.environ, "REDEGRADE_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"{'command':40} {'median s':>9} {'max s':>7}  exit  stderr")
        for name, cmd in commands(tmp):
            times, proc = [], None
            for _ in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
                times.append(time.perf_counter() - t0)
            lines = proc.stderr.strip().splitlines()
            said = "(none)" if not lines else f"{len(lines)} line{'s' * (len(lines) > 1)}: {lines[-1][:60]}"
            print(f"{name:40} {statistics.median(times):9.2f} {max(times):7.2f}  {proc.returncode:4}  {said}")
            leftovers = sorted(p.name for p in tmp.iterdir())
            if leftovers:
                print(f"  left behind: {leftovers}")
    print(f"\n(python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
