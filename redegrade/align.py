"""FFHQ-style face alignment: dlib's HOG face detector, its 68-point landmark predictor (shipped by
``face-recognition-models``) and ffhq-align's ``image_align`` crop. Works offline.

Custom faces project badly onto an FFHQ generator unless aligned like FFHQ (stylegan2-ada-pytorch
#247), which is what ``python -m redegrade.restore --align`` does before restoring.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from redegrade.errors import InputError
from redegrade.image import check_shape

log = logging.getLogger(__name__)
PREDICTOR = "shape_predictor_68_face_landmarks.dat"
_INSTALL = "pip install 'redegrade[align]' (dlib-bin and face-recognition-models)"


def predictor_path() -> Path:
    """The 68-point predictor file inside the installed ``face_recognition_models`` package.

    Found with ``importlib.util.find_spec`` instead of importing the package, whose ``__init__`` needs
    ``pkg_resources`` (gone from recent setuptools).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"--align needs the 68-point landmark model: {_INSTALL}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / PREDICTOR
        if path.is_file():
            return path
    raise InputError(f"face_recognition_models is installed but has no models/{PREDICTOR}; reinstall it")


@functools.cache
def _dlib_models(path: str):
    try:
        import dlib
    except ImportError as exc:
        raise InputError(f"--align needs dlib: {_INSTALL}") from exc
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(path)


def landmarks(image: torch.Tensor) -> torch.Tensor:
    """68 dlib-order (x, y) landmarks ``[68, 2]`` of the largest face in ``image`` ([1,3,H,W] in [-1,1])."""
    check_shape(image, (1, 3, None, None), "image")
    detector, predictor = _dlib_models(str(predictor_path()))
    rgb = ((image[0].detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    rgb = np.ascontiguousarray(rgb)
    faces = detector(rgb, 1)  # upsample once: finds faces down to ~40 px
    if len(faces) == 0:
        raise InputError("--align found no face in the image; crop the face yourself or run without --align")
    face = max(faces, key=lambda r: r.width() * r.height())
    if len(faces) > 1:
        log.warning("%d faces found; aligning the largest", len(faces))
    shape = predictor(rgb, face)
    return torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)


def align_face(image: torch.Tensor, resolution: int = 1024) -> torch.Tensor:
    """FFHQ-aligned crop ``[1,3,resolution,resolution]`` in [-1,1] of the largest face in ``image``."""
    from redegrade import _compat  # noqa: F401  (before ffhq_align, which imports torchvision)
    from ffhq_align import image_align  # imports torchvision: only when aligning

    points = landmarks(image)
    out = image_align(image.float(), points[None], resolution=resolution, padding_mode="blur")
    return out.clamp(-1, 1)
