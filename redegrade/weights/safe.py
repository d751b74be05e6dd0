"""Reading PyTorch checkpoints without running code from them, with refusals in our own words.

``torch.load(weights_only=True)`` refuses a file that needs code to unpickle, but its message then
advises re-running with ``weights_only=False``: for a file refused *because* it would run code, that
advice is dangerous, so no torch text about it is ever passed on. Every failure becomes one
:class:`~redegrade.errors.CheckpointError` line.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any

from redegrade.errors import CheckpointError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
REFUSED = "refused: the file would run code when loaded{needs}; only tensors are read"


def refusal(text: str = "") -> str:
    """Our words for a weights-only refusal (naming the global it needed when ``text`` says)."""
    found = _GLOBAL.search(text)
    return REFUSED.format(needs=f" (it needs {found.group(1)})" if found else "")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    first = re.split(r"(?<=[a-z])\. ", text.splitlines()[0] if text else "", maxsplit=1)[0].rstrip(".")
    if not first or "weights_only" in first or "weights only" in first.lower():
        first = ""
    return f"{type(exc).__name__}{': ' + first[:160] if first else ''}"


def torch_load(source: str | os.PathLike | io.BytesIO, *, what: str) -> Any:
    """``torch.load(source, weights_only=True)`` on the CPU; any failure is a :class:`CheckpointError`
    naming ``what`` (e.g. ``"ADM checkpoint x.pt"``)."""
    import torch

    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" in text.lower() or "weights_only" in text:
            raise CheckpointError(f"{what}: {refusal(text)}") from None
        raise CheckpointError(f"cannot read {what}: not a PyTorch checkpoint ({_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - corrupt files fail in many types; all mean "not readable"
        raise CheckpointError(f"cannot read {what}: not a readable PyTorch checkpoint ({_reason(exc)})") from None
