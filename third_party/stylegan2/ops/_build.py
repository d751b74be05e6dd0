"""Lazy, cached JIT build of the optional CUDA kernels (ninja via ``torch.utils.cpp_extension``).

A kernel is built the first time a CUDA tensor asks for it, into ``$REDEGRADE_HOME/torch_extensions``.
When the build fails, one ``logging`` warning names the op and the reason and every later call uses the
pure-PyTorch reference (same maths). Nothing is built on import, and CPU tensors never trigger a build.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import torch

from redegrade import settings

log = logging.getLogger(__name__)
_SRC = Path(__file__).resolve().parent
_plugins: dict[str, ModuleType | None] = {}  # op name → built module, or None after a failed build


def clear_cache() -> None:
    """Forget build results (tests use this to force a fresh attempt)."""
    _plugins.clear()


def plugin(name: str, sources: list[str]) -> ModuleType | None:
    """The compiled extension ``name`` built from ``sources`` (files beside this module), or ``None``."""
    if name in _plugins:
        return _plugins[name]
    _plugins[name] = None
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available")
        # ninja lives in the venv's bin, which is not always on PATH (e.g. python run by absolute path).
        bindir = str(Path(sys.executable).parent)
        if shutil.which("ninja") is None and (Path(bindir) / "ninja").exists():
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        from torch.utils import cpp_extension

        paths = [_SRC / s for s in sources]
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:12]
        build_dir = settings.home() / "torch_extensions" / f"{name}_{digest}"
        build_dir.mkdir(parents=True, exist_ok=True)
        log.info("building CUDA op %r (first use; cached in %s)", name, build_dir)
        _plugins[name] = cpp_extension.load(name=f"redegrade_{name}_{digest}", sources=[str(p) for p in paths],
                                            build_directory=str(build_dir),
                                            verbose=False)
    except Exception as exc:  # noqa: BLE001 — any build/load failure means: use the reference (same maths)
        log.warning("redegrade_stylegan2: CUDA op %r is unavailable (%s: %s); using the PyTorch reference",
                    name, type(exc).__name__, str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
    return _plugins[name]
