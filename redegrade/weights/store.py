"""The local checkpoint cache: path, verification, atomic download."""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from redegrade import settings
from redegrade.errors import CheckpointError, MissingCheckpointError
from redegrade.files import atomic_path
from redegrade.weights.registry import REGISTRY, Checkpoint, get

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


def cache_path(ckpt: Checkpoint | str) -> Path:
    """Where a registry checkpoint lives: ``$REDEGRADE_HOME/weights/<filename>``."""
    ckpt = get(ckpt) if isinstance(ckpt, str) else ckpt
    return settings.home() / "weights" / ckpt.filename


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def recorded_sha256_path(path: Path) -> Path:
    """Where the sha256 of a file without a published digest is recorded on first verified use."""
    return path.with_name(path.name + ".sha256")


def record_first_use(ckpt: Checkpoint, path: str | os.PathLike) -> None:
    """After ``path`` (the cached file of ``ckpt``) loaded successfully, remember its sha256 beside it when
    the registry has none, so a later, different file under that name is refused by :func:`verify`."""
    path = Path(path)
    if ckpt.sha256 is not None or path.resolve() != cache_path(ckpt).resolve():
        return
    record = recorded_sha256_path(path)
    if record.exists():
        return
    digest = sha256_file(path)
    with atomic_path(record) as tmp:
        tmp.write_text(digest + "\n", encoding="utf-8")
    log.info("%s: first verified use of %s; recorded sha256 %s in %s", ckpt.name, path, digest, record)


def verify(ckpt: Checkpoint, path: Path) -> None:
    """Check sha256 (when known, else the one recorded on first use), else size (when known); raise
    :class:`CheckpointError` on mismatch."""
    if ckpt.size is not None and path.stat().st_size != ckpt.size:
        raise CheckpointError(f"{path} is {path.stat().st_size} bytes, expected {ckpt.size} for {ckpt.name}; "
                              f"delete it and fetch again ({ckpt.url})")
    if ckpt.sha256 is not None:
        digest = sha256_file(path)
        if digest != ckpt.sha256:
            raise CheckpointError(f"{path} has sha256 {digest}, expected {ckpt.sha256} for {ckpt.name}; "
                                  f"delete it and fetch again ({ckpt.url})")
    elif (record := recorded_sha256_path(path)).is_file():
        expected = record.read_text(encoding="utf-8").strip()
        digest = sha256_file(path)
        if digest != expected:
            raise CheckpointError(f"{path} has sha256 {digest}, but {expected} was recorded on its first verified "
                                  f"use ({record}); if the new file is intended, delete {record.name}")


def _missing(ckpt: Checkpoint, dest: Path, why: str) -> MissingCheckpointError:
    if ckpt.manual:
        return MissingCheckpointError(f"checkpoint {ckpt.name} is not in the cache and must be downloaded by hand "
                                      f"({why}): from {ckpt.url}, {ckpt.manual}; put it at {dest} (or pass a local "
                                      "path instead of the name)")
    return MissingCheckpointError(f"checkpoint {ckpt.name} is not available ({why}): download {ckpt.url} "
                                  f"and put it at {dest} (or pass a local path instead of the name)")


def download(ckpt: Checkpoint, dest: Path | None = None, *, progress: bool = True) -> Path:
    """Download ``ckpt`` to ``dest`` (default: the cache) atomically, verifying it before the rename."""
    dest = dest or cache_path(ckpt)
    if ckpt.manual:
        raise _missing(ckpt, dest, "no direct URL is known")
    if settings.offline():
        raise _missing(ckpt, dest, "offline: REDEGRADE_OFFLINE is set")
    log.info("downloading %s from %s", ckpt.name, ckpt.url)
    try:
        with urllib.request.urlopen(ckpt.url, timeout=60) as resp, atomic_path(dest) as tmp:
            total = int(resp.headers.get("Content-Length") or 0) or ckpt.size
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=ckpt.filename,
                                            disable=not progress) as bar:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            verify(ckpt, tmp)
            if ckpt.sha256 is None:  # nothing published to check against: record what we got
                log.info("%s: no published sha256; downloaded file has sha256 %s", ckpt.name, sha256_file(tmp))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise _missing(ckpt, dest, f"download failed: {getattr(exc, 'reason', exc)}") from exc
    return dest


def check_checkpoint(name_or_path: str | os.PathLike, flag: str = "checkpoint") -> None:
    """Cheap check before any loading: ``name_or_path`` is an existing file or folder, or a known name.

    Nothing is read or downloaded; :func:`resolve` and the loaders still verify the content later.
    """
    from redegrade.settings import BUNDLED_REDEGRADERS

    known = str(name_or_path) in REGISTRY or str(name_or_path) in BUNDLED_REDEGRADERS
    if known or Path(name_or_path).expanduser().exists():
        return
    raise MissingCheckpointError(f"{flag} {name_or_path}: no such file or folder, and not a known checkpoint "
                                 f"(known: {', '.join(sorted(REGISTRY))})")


def resolve(name_or_path: str | os.PathLike, *, download_missing: bool = True) -> Path:
    """A verified local file for a registry name or an existing path.

    A cached file is verified and used without touching the network; a missing one is downloaded
    unless offline, in which case the error names the file, the URL and where to put it.
    """
    if str(name_or_path) not in REGISTRY:
        path = Path(name_or_path).expanduser()
        if path.exists():
            return path
        raise MissingCheckpointError(f"{name_or_path} is neither an existing file nor a known checkpoint "
                                     f"(known: {', '.join(sorted(REGISTRY))})")
    ckpt = REGISTRY[str(name_or_path)]
    path = cache_path(ckpt)
    if path.exists():
        verify(ckpt, path)
        return path
    if not download_missing:
        raise _missing(ckpt, path, "not in the cache")
    return download(ckpt, path)
