"""Read NVIDIA's StyleGAN2 pickles (``network-snapshot-*.pkl``, ``ffhq.pkl``) without executing them.

NVIDIA pickles every network as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where
``meta`` carries the defining module's full source text, which NVIDIA's loader ``exec``s. We never do:
:class:`RestrictedUnpickler` resolves only an allowlist of globals (tech-facts §3.2), turns the persistence
reconstructor into :class:`PersistentStub` (meta captured, source ignored), rebuilds tensors with torch's
own rebuild functions from storages read by ``torch.load(weights_only=True)``, and refuses anything else
with an error naming the global. The generator is then re-instantiated from the stored constructor
arguments (``_init_args``/``_init_kwargs``) and its tensors are copied by name, strictly.
"""
from __future__ import annotations

import collections
import io
import logging
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from redegrade.errors import CheckpointError
from redegrade_stylegan2.networks import Generator

log = logging.getLogger(__name__)

# modules whose source defines NVIDIA's StyleGAN2 generator (stylegan2-ada-pytorch, stylegan3's sg2 config)
_SG2_MODULES = {"training.networks", "training.networks_stylegan2"}
_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")


class PersistentStub:
    """What ``_reconstruct_persistent_obj(meta)`` becomes: the metadata, never the class."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise CheckpointError("malformed persistent object in the pickle (expected NVIDIA's meta dict)")
        self.class_name: str = str(meta.get("class_name"))
        self.module_name: str = str(meta.get("module_name", ""))
        self.version = meta.get("version")
        self.state: dict = meta["state"]

    def __repr__(self) -> str:
        return f"<persistent {self.module_name}.{self.class_name}>"

    def tensors(self, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
        """``state_dict()``-equivalent: own parameters, own persistent buffers, then submodules."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for name, t in (self.state.get(group) or {}).items():
                if t is not None and name not in skip:
                    out[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else t
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, PersistentStub):
                out.update(child.tensors(f"{prefix}{name}."))
            elif child is not None:
                raise CheckpointError(f"unexpected submodule {prefix}{name} of type {type(child).__name__}")
        return out


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): only the data is kept."""

    def __setstate__(self, state):  # EasyDict pickles no instance state; accept an empty one
        pass


def _reconstruct_persistent_obj(meta):
    return PersistentStub(meta)


_STORAGES = (torch.storage.TypedStorage, torch.storage.UntypedStorage)


def _load_from_bytes(b: bytes):
    # the storage's bytes are a legacy torch.save stream: read it with torch's safe unpickler only
    if not isinstance(b, bytes):
        raise CheckpointError("malformed tensor storage in the pickle")
    from redegrade.weights.safe import torch_load

    storage = torch_load(io.BytesIO(b), what="a tensor storage in the pickle")
    if not isinstance(storage, _STORAGES):
        raise CheckpointError(f"a tensor storage in the pickle holds a {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *metadata):
    # torch's own rebuild, minus anything from the file that could run later (backward hooks)
    if not isinstance(storage, _STORAGES):
        raise CheckpointError("malformed tensor in the pickle (its storage is not a torch storage)")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, False, OrderedDict())


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("malformed parameter in the pickle")
    return data


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError(f"refusing numpy scalar of dtype {dtype!r}")
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


def _numpy_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or spec.startswith("O"):
        raise CheckpointError(f"refusing numpy dtype {spec!r}")
    return np.dtype(spec, align, copy)


def _codecs_encode(obj, encoding="latin1"):  # protocol-2 pickles spell bytes this way
    if not isinstance(obj, str):
        raise CheckpointError("malformed bytes in the pickle")
    return obj.encode(encoding)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; any other global is refused by name, nothing is imported."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            hint = (" (a TensorFlow-era StyleGAN2 pickle: convert it with NVIDIA's stylegan2-ada-pytorch "
                    "legacy.py in an environment you trust, then load the result)" if module.startswith("dnnlib.tflib")
                    else "")
            raise CheckpointError(f"refused: the pickle would run code when loaded (it needs the global "
                                  f"{module}.{name}, which is not on the StyleGAN2 allowlist); only tensors and "
                                  f"constructor arguments are read{hint}") from None

    def persistent_load(self, pid):
        raise CheckpointError(f"refusing to load: unexpected persistent id {pid!r} in the pickle")


def read_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (no code from the file runs)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable StyleGAN2 pickle ({type(exc).__name__}: {exc})") from exc


def _plain(v: Any) -> Any:
    """Constructor arguments as plain JSON-able Python values (EasyDict → dict, numpy → python)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise CheckpointError(f"unsupported constructor argument of type {type(v).__name__} in the pickle")


def generator_kwargs(stub: PersistentStub) -> dict:
    """NVIDIA's Generator constructor arguments from a stub, normalised to our signature."""
    args = list(stub.state.get("_init_args") or ())
    kwargs = _plain(dict(stub.state.get("_init_kwargs") or {}))
    if len(args) > len(_GENERATOR_ARGS):
        raise CheckpointError(f"{stub!r} was built with {len(args)} positional arguments; expected at most 7")
    kwargs.update(zip(_GENERATOR_ARGS, _plain(args)))
    # stylegan3's stylegan2 Generator takes synthesis arguments flat at the top level
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in _GENERATOR_ARGS}
    kwargs["synthesis_kwargs"] = {**(kwargs.get("synthesis_kwargs") or {}), **extra}
    kwargs["mapping_kwargs"] = kwargs.get("mapping_kwargs") or {}
    missing = [k for k in _GENERATOR_ARGS[:5] if k not in kwargs]
    if missing:
        raise CheckpointError(f"{stub!r} lacks constructor arguments {missing}")
    return kwargs


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``module`` by name; any missing, unexpected or mis-shaped tensor is an error."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
                 f"shape mismatch {few(shapes)}" if shapes else ""]
        raise CheckpointError(f"{source} does not match the StyleGAN2 generator it describes: "
                              + "; ".join(p for p in parts if p))
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k].to(v.dtype))


def load_pickle_generator(path: str | os.PathLike, *, which: str = "G_ema") -> Generator:
    """The generator ``which`` (``G_ema``, ``G``) of NVIDIA pickle ``path`` as our :class:`Generator`."""
    data = read_pickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not NVIDIA's dict of networks")
    if which not in data:
        raise CheckpointError(f"{path} has no network {which!r}; it has {sorted(map(str, data))}")
    stub = data[which]
    if not isinstance(stub, PersistentStub) or stub.class_name != "Generator":
        raise CheckpointError(f"{path}: {which} is {stub!r}, not a StyleGAN2 Generator")
    if stub.module_name and stub.module_name not in _SG2_MODULES:
        raise CheckpointError(f"{path}: {which} is defined in {stub.module_name}, which is not a StyleGAN2 "
                              f"network module ({', '.join(sorted(_SG2_MODULES))})")
    from redegrade.errors import ConfigError
    try:
        G = Generator(**generator_kwargs(stub))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    load_state_strict(G, stub.tensors(), f"{path} ({which})")
    log.debug("loaded %s from %s without executing its embedded source", which, path)
    return G.eval().requires_grad_(False)
