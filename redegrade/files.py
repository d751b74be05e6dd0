"""Files: atomic writes (nothing half-written is ever left at a destination path) and the checks every
CLI runs on its outputs before any work (never the input, writable, a plain file or folder)."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from redegrade.errors import InputError


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=dest.suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the mode open() would give
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and fsync, so a killed process leaves only whole lines behind."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------ output checks
def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one existing file (also through symlinks and hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (or cannot be examined): they cannot be one existing file
        return False


def refuse_inputs(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Raise :class:`InputError` when ``output`` names the same file as one of ``inputs``."""
    out = Path(output)
    for src in inputs:
        if src is not None and same_file(out, src):
            raise InputError(f"refusing to write {out}: that would overwrite the input {src}; choose another "
                             "output name")


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 folder: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written and is none of ``inputs``. Writes nothing.

    ``folder=False``: ``path`` must not be an existing folder nor a special file (device, pipe), and an
    existing file must be writable. ``folder=True``: ``path`` is a folder to create or fill.
    """
    path = Path(path)
    refuse_inputs(path, inputs)
    try:
        st = path.stat()
    except OSError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode) and not folder:
            raise InputError(f"cannot write {path}: it is a folder; give a file name such as {path / 'out.png'}")
        if not stat.S_ISDIR(st.st_mode) and folder:
            raise InputError(f"cannot write into {path}: it is a file, not a folder")
        if not stat.S_ISDIR(st.st_mode) and not stat.S_ISREG(st.st_mode):
            raise InputError(f"cannot write {path}: it exists and is not a regular file")
        if not os.access(path, os.W_OK):
            raise InputError(f"cannot write {path}: it is read-only")
    check_writable(path if folder else path.parent, target=path)
    return path


def check_writable(folder: str | os.PathLike, *, target: str | os.PathLike | None = None) -> None:
    """Raise :class:`InputError` unless a file can be created in ``folder`` (made if missing).

    Missing folders are created for the probe (a temporary file) and removed again, so the check leaves
    nothing behind. ``target`` only names the output in the message.
    """
    folder = Path(os.path.abspath(folder))
    target = Path(target) if target is not None else folder
    existing = folder
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write {target}: {existing} is a file, not a folder")
    created: list[Path] = []
    try:
        for part in reversed([folder, *folder.parents]):
            if not os.path.lexists(part):
                part.mkdir()
                created.append(part)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".redegrade-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = Path(exc.filename).parent if exc.filename else folder
        raise InputError(f"cannot write {target}: {(exc.strerror or str(exc)).lower()} in {where}") from None
    finally:
        for part in reversed(created):
            with contextlib.suppress(OSError):
                part.rmdir()
