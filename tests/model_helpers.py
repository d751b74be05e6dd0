"""Helpers shared by the model tests (test_model_*.py): generators, images, extras, quality fits."""
import torch

from redegrade.model import ModelConfig, UniversalDegradationModel


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _img(b=1, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=_gen(seed)) * 2 - 1


def _with(*extras: str, **kw) -> UniversalDegradationModel:
    """The tiny preset with ``extras`` added (and config fields ``kw``), through a JSON round trip."""
    torch.manual_seed(0)
    tiny = ModelConfig.preset("tiny")
    cfg = ModelConfig(**{**tiny.to_dict(), **kw, "extras": (*tiny.extras, *extras)})
    return UniversalDegradationModel(ModelConfig.from_dict(cfg.to_dict())).eval()


def _fit_quality(m, x, code, target, params, *, lr: float, steps: int) -> torch.Tensor:
    """Adam on ``params`` against ``QualityLoss(target, f̂(x, code))``, fresh noise each step; the output after."""
    from redegrade.train.losses import QualityLoss

    opt, loss = torch.optim.Adam(params, lr=lr), QualityLoss()
    for step in range(steps):
        out = m.synthesize(x, code, m.sample_noise(x, _gen(10 + step)))
        opt.zero_grad()
        loss(target, out).backward()
        opt.step()
    with torch.no_grad():
        return m.synthesize(x, code, m.sample_noise(x, _gen(99)))
