"""Results survive: one JSON line per row, fsynced; ``run.json`` records the settings they belong to."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from redegrade.errors import ConfigError
from redegrade.files import append_line, atomic_path

from .protocol import RESULT_FIELDS, Bench

log = logging.getLogger("ffhqx")


class ResultStore:
    """JSON lines in ``results.rank{r}.jsonl`` files: this rank appends to its own, everyone reads all."""

    def __init__(self, out: Path, rank: int = 0):
        self.out = out
        self.path = out / f"results.rank{rank}.jsonl"

    def repair(self) -> None:
        """Cut a half-written last line (a kill during ``write``) so the next append starts a fresh line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[:data.rfind(b"\n") + 1]
            log.warning("%s: dropping a half-written last line", self.path.name)
            with atomic_path(self.path) as tmp:
                tmp.write_bytes(keep)

    def append(self, row: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(row, sort_keys=True, allow_nan=False))

    def rows(self) -> list[dict[str, Any]]:
        """Every row of every rank file, de-duplicated by key (first wins), in a stable order."""
        seen: dict[str, dict[str, Any]] = {}
        for path in sorted(self.out.glob("results.rank*.jsonl")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    key = row["key"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s:%d: unreadable line skipped", path.name, n)
                    continue
                seen.setdefault(key, row)
        return sorted(seen.values(), key=lambda r: r["key"])

    def keys(self) -> set[str]:
        return {r["key"] for r in self.rows()}


def check_run_file(out: Path, bench: Bench) -> None:
    """Refuse to mix results of different settings in one ``--out``; record the settings on first use."""
    path = out / "run.json"
    ident = bench.identity()
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in RESULT_FIELDS if old.get(k) != ident.get(k)]
        if diff:
            raise ConfigError(
                f"{out} holds results of a run with different settings ({', '.join(f'{k}: {old.get(k)!r} → {ident.get(k)!r}' for k in diff)}); "
                "use another --out or the same flags")
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(ident, indent=2, sort_keys=True) + "\n", encoding="utf-8")
