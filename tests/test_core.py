"""The core contracts: image I/O, objectives, NGD, forward models, backend registry."""
import importlib

import pytest
import torch

from redegrade import backend, image, objective, optim
from redegrade.errors import ConfigError, InputError, ShapeError, UnknownBackendError
from redegrade.forward import Identity, KnownDegradation


def test_torchvision_imports_with_working_nms():
    from redegrade import _compat  # noqa: F401  (before torchvision; `import redegrade` stays light)
    import torchvision

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
    # ffhq-align imports the pre-0.17 module name; the alias must make it importable.
    importlib.import_module("ffhq_align")


def test_image_roundtrip_and_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 12, 20, generator=g) * 2 - 1
    p = image.save_image(x, tmp_path / "a.png")
    y = image.load_image(p)
    assert y.shape == (1, 3, 12, 20)
    assert (y - x).abs().max() <= 1 / 127.5 + 1e-6  # 8-bit rounding only
    with pytest.raises(InputError, match="no such file"):
        image.load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image"):
        image.load_image(tmp_path / "bad.png")
    with pytest.raises(InputError, match="at least 64"):
        image.load_image(p, min_size=64)


def test_save_image_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ShapeError):
        image.save_image(torch.zeros(2, 3, 8, 8), tmp_path / "out.png")
    with pytest.raises(InputError, match="extension"):
        image.save_image(torch.zeros(1, 3, 8, 8), tmp_path / "out.xyz")
    assert list(tmp_path.iterdir()) == []


def test_fit_to_resolution_crops_and_resizes():
    x = torch.rand(1, 3, 40, 60) * 2 - 1
    y = image.fit_to_resolution(x, 32)
    assert y.shape == (1, 3, 32, 32)
    assert y.min() >= -1 and y.max() <= 1


def test_multiscale_objective():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    loss = objective.build("l1")
    assert loss(y, y).item() == 0
    assert loss(y, -y).item() > 0
    with pytest.raises(ShapeError):
        loss(y, y[..., :32, :32])
    with pytest.raises(ConfigError):
        objective.build("nope")
    # Pixels outside the mask do not count: a difference there leaves the loss unchanged.
    mask = torch.ones(1, 1, 64, 64)
    mask[..., :32, :] = 0
    y2 = y.clone()
    y2[..., :32, :] += 0.5
    assert loss(y, y2, mask).item() == pytest.approx(0, abs=1e-6)
    assert loss(y, y2).item() > 0


def test_lpips_objective_is_differentiable():
    loss = objective.build("lpips", pretrained_backbone=False)
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    loss(torch.rand(1, 3, 32, 32) * 2 - 1, x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_ngd_moves_each_vector_by_lr():
    w = torch.randn(1, 4, 8, requires_grad=True)
    start = w.detach().clone()
    opt = optim.NGD([w], lr=0.1)
    (w * torch.randn(1, 4, 8)).sum().backward()
    opt.step()
    assert torch.allclose((w.detach() - start).norm(dim=-1), torch.full((1, 4), 0.1), atol=1e-6)


def test_forward_models():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    assert Identity()(x) is x
    assert Identity().variables() == []

    class Pool:
        def approx(self, t):
            return torch.nn.functional.avg_pool2d(t, 2)

    fm = KnownDegradation(Pool(), resolution=8)
    out = fm(x)
    assert out.shape == (1, 3, 4, 4)  # area-resized to 8, then pooled
    out.sum().backward()
    assert x.grad is not None


def test_builtin_backends_registered_through_entry_points():
    names = {e.name: e for e in backend.available()}
    assert {"rsg", "dps"} <= set(names)
    assert names["rsg"].distribution == "redegrade"
    with pytest.raises(UnknownBackendError, match="rsg"):
        backend.load("no-such-backend")


def test_the_model_and_the_pixel_primitives_import_no_degradation_scripts():
    """``model/`` is the network and ``pixels/`` the ground floor: neither reaches up into
    ``degradations/``, ``quality`` or the metrics (function-level imports included)."""
    import ast
    from pathlib import Path

    import redegrade

    root = Path(redegrade.__file__).parent
    upstairs = ("redegrade.degradations", "redegrade.quality", "redegrade.metrics", "redegrade.train")
    for folder in ("model", "pixels"):
        for path in (root / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                assert not any(n.startswith(upstairs) for n in names), (path.name, names)
