"""StyleGAN2 checkpoints: NVIDIA pickles read without executing them, exact export, the weights CLI."""
from __future__ import annotations

import pickle
import io
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from redegrade.errors import CheckpointError, MissingCheckpointError
from redegrade_stylegan2 import Generator, convert_pickle, load_generator, tiny_generator
from redegrade_stylegan2.pickle_loader import RestrictedUnpickler

from stylegan2_helpers import RES


# ---------------------------------------------------------------- NVIDIA pickles, never executed

EVIL_SRC = ("import pathlib\npathlib.Path({marker!r}).write_text('executed')\n"
            "raise RuntimeError('the embedded module source was executed')\n")
GENUINE_GLOBALS = {"torch_utils.persistence _reconstruct_persistent_obj", "dnnlib.util EasyDict",
                   "collections OrderedDict", "torch._utils _rebuild_parameter", "torch._utils _rebuild_tensor_v2",
                   "torch.storage _load_from_bytes", "numpy.core.multiarray scalar", "numpy dtype"}


def write_nvidia_pickle(path, nets: dict, tmp_path, marker) -> set[str]:
    """Pickle ``nets`` in NVIDIA's persistence layout. Stand-ins for ``torch_utils.persistence`` and
    ``dnnlib.util`` exist on sys.path only while writing; returns the globals the pickle names."""
    root = tmp_path / "nvidia_stand_ins"
    for pkg, src in {"torch_utils": "def _reconstruct_persistent_obj(meta):\n    raise RuntimeError('NVIDIA code ran')\n",
                     "dnnlib": "class EasyDict(dict):\n    def __getattr__(self, k):\n        try:\n            return self[k]\n"
                               "        except KeyError:\n            raise AttributeError(k)\n"}.items():
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / ("persistence.py" if pkg == "torch_utils" else "util.py")).write_text(src)
    sys.path.insert(0, str(root))
    try:
        from dnnlib.util import EasyDict
        from torch_utils.persistence import _reconstruct_persistent_obj

        class Persistent:
            def __init__(self, meta):
                self.meta = meta

            def __reduce__(self):
                return _reconstruct_persistent_obj, (self.meta,)

        def easy(d):
            return EasyDict({k: easy(v) if isinstance(v, dict) else v for k, v in d.items()})

        def wrap(m, kwargs=None):
            state = {}
            for k, v in m.__dict__.items():
                if k == "_modules":
                    v = OrderedDict((n, wrap(c)) for n, c in v.items())
                elif k == "init_kwargs":
                    continue
                elif isinstance(v, float):
                    v = np.float64(v)                         # NVIDIA's weight_gain/act_gain are numpy scalars
                state[k] = v
            state.update(_init_args=(), _init_kwargs=easy(kwargs or {}))
            return Persistent(dict(type="class", version=6, module_src=EVIL_SRC.format(marker=str(marker)),
                                   module_name="training.networks", class_name=type(m).__name__, state=state))

        data = {"training_set_kwargs": easy({"resolution": RES, "use_labels": False})}
        data.update({k: (wrap(v, v.init_kwargs) if isinstance(v, Generator) else wrap(v)) if v is not None else None
                     for k, v in nets.items()})
        blob = pickle.dumps(data, protocol=4)
    finally:
        sys.path.remove(str(root))
        for m in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib")]:
            del sys.modules[m]
    path.write_bytes(blob)
    names: set[str] = set()

    class Recorder(RestrictedUnpickler):
        def find_class(self, module, name):
            names.add(f"{module} {name}")
            return super().find_class(module, name)

    Recorder(io.BytesIO(blob)).load()
    return names


@pytest.fixture(scope="module")
def nvidia_pkl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nv")
    marker = tmp / "executed.txt"
    G_ema, G_train = tiny_generator(RES, seed=0, conv_clamp=4.0, num_fp16_res=2), tiny_generator(RES, seed=1)
    D = torch.nn.Linear(3, 1)  # any network: loading G_ema must not need it
    globals_ = write_nvidia_pickle(tmp / "network-snapshot-000000.pkl",
                                   {"G": G_train, "D": D, "G_ema": G_ema, "augment_pipe": None}, tmp, marker)
    return tmp / "network-snapshot-000000.pkl", G_ema, G_train, marker, globals_


def test_nvidia_pickle_loads_without_executing_its_source(nvidia_pkl, z):
    path, G_ema, G_train, marker, globals_ = nvidia_pkl
    assert globals_ <= GENUINE_GLOBALS and "torch_utils.persistence _reconstruct_persistent_obj" in globals_
    G = load_generator(path)
    assert not marker.exists()                                          # the embedded source never ran
    assert not any(m.split(".")[0] in ("torch_utils", "dnnlib", "training") for m in sys.modules)
    assert not any(p.requires_grad for p in G.parameters()) and not G.training
    assert G.init_kwargs["synthesis_kwargs"]["conv_clamp"] == 4.0
    torch.testing.assert_close(G(z, None, noise_mode="const"), G_ema(z, None, noise_mode="const"), atol=0, rtol=0)
    G2 = load_generator(path, which="G")
    torch.testing.assert_close(G2.mapping(z, None), G_train.mapping(z, None), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="no network 'G_avg'"):
        load_generator(path, which="G_avg")


def test_pickle_with_a_forbidden_global_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}, protocol=4))
    with pytest.raises(CheckpointError, match=r"system.*not on the StyleGAN2 allowlist"):
        load_generator(path)
    assert not marker.exists()


def test_pickle_storage_that_is_not_a_storage_is_refused(tmp_path):
    buf = io.BytesIO()
    torch.save({"not": "a storage"}, buf, _use_new_zipfile_serialization=False)

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (buf.getvalue(),)

    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Storage()}, protocol=4))
    with pytest.raises(CheckpointError, match="holds a dict"):
        load_generator(path)


def test_export_reload_is_exact(nvidia_pkl, tmp_path, z):
    path, G_ema, *_ = nvidia_pkl
    out = convert_pickle(path, tmp_path / "g.safetensors")
    G = load_generator(out)
    assert G.state_dict().keys() == G_ema.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G_ema.state_dict().values()))
    torch.testing.assert_close(G(z, None, truncation_psi=0.7), G_ema(z, None, truncation_psi=0.7), atol=0, rtol=0)
    # a safetensors file that is not our export is refused with a pointer to the converter
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="convert"):
        load_generator(tmp_path / "other.safetensors")


def test_weights_cli_converts(nvidia_pkl, tmp_path):
    from click.testing import CliRunner

    from redegrade.weights.__main__ import main

    path = nvidia_pkl[0]
    res = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "cli.safetensors")])
    assert res.exit_code == 0, res.output
    assert load_generator(tmp_path / "cli.safetensors").num_ws == nvidia_pkl[1].num_ws


def test_weights_cli_decides_the_format_by_content_not_name(nvidia_pkl, tmp_path):
    """`convert --format auto` reads the file: a StyleGAN2 pickle named .bin is still stylegan2, and a
    file that is no checkpoint at all fails with one error line, not torch's pages."""
    import shutil

    from click.testing import CliRunner

    from redegrade.weights.__main__ import main

    renamed = tmp_path / "generator.bin"
    shutil.copy(nvidia_pkl[0], renamed)
    res = CliRunner().invoke(main, ["convert", "--format", "auto", str(renamed), str(tmp_path / "g.safetensors")])
    assert res.exit_code == 0, res.output
    assert load_generator(tmp_path / "g.safetensors").num_ws == nvidia_pkl[1].num_ws

    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    res = CliRunner().invoke(main, ["convert", str(junk), str(tmp_path / "out")])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "junk.pkl" in lines[0], res.output
    assert not (tmp_path / "out").exists()


def test_registry_name_offline_is_actionable():
    with pytest.raises(MissingCheckpointError, match=r"ffhq\.pkl.*put it at"):
        load_generator("stylegan2.ffhq1024")
