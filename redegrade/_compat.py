"""Make torchvision importable where its compiled ops cannot load.

The only torchvision wheel for torch 2.13 is a CUDA build whose ``_C.so`` needs ``libtorch_cuda``; on
CPU torch ``import torchvision`` then fails with ``operator torchvision::nms does not exist``. lpips,
compressai, ffhq-align and diffusers all import torchvision, so we register the two operator schemas
torchvision's Python code needs at import, with a pure-torch NMS for CPU. Where torchvision's own ops
load, this module does nothing.

Import it right before importing torchvision or a package that imports it. ``import redegrade`` does not
import it (that would cost torch and torchvision's import, seconds, on every CLI start).
"""
from __future__ import annotations

import importlib.util
import logging
import sys

import torch

log = logging.getLogger(__name__)
_LIB: torch.library.Library | None = None  # kept alive: dropping it unregisters the ops


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, the semantics of ``torchvision.ops.nms``."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        suppressed |= inter / (areas[i] + areas - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _qnms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return _nms(dets.float(), scores.float(), iou_threshold)


def _torchvision_ops_missing() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        torch.ops.torchvision.nms  # noqa: B018  (attribute access is the probe)
        return False
    except (AttributeError, RuntimeError):
        pass
    # The ops may simply not be loaded yet: let torchvision try its own extension first.
    try:
        import torchvision  # noqa: F401
        return False
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return True


def install() -> None:
    """Register the missing torchvision ops (idempotent) and the ffhq-align import alias."""
    global _LIB
    if _LIB is None and _torchvision_ops_missing():
        _LIB = torch.library.Library("torchvision", "DEF")
        _LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIB.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
        impl = torch.library.Library("torchvision", "IMPL", "CompositeExplicitAutograd")
        impl.impl("nms", _nms)
        impl.impl("qnms", _qnms)
        _LIB._impl_lib = impl  # type: ignore[attr-defined]
        import torchvision.extension

        # torchvision gates ops.nms on its extension having loaded; ours now provides nms/qnms.
        torchvision.extension._has_ops = lambda: True
        log.debug("torchvision's compiled ops are unavailable; registered pure-torch nms/qnms")
    _alias_functional_tensor()


def _alias_functional_tensor() -> None:
    # ffhq-align imports torchvision.transforms.functional_tensor, renamed with a leading underscore
    # in torchvision >= 0.17. Alias lazily: only when torchvision is importable at all.
    if "torchvision.transforms.functional_tensor" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        from torchvision.transforms import _functional_tensor
    except ImportError:
        return
    sys.modules["torchvision.transforms.functional_tensor"] = _functional_tensor


install()
