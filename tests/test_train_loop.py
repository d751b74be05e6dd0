"""The training loop: trainer steps, MoCo, resume, the CLI, checkpoint averaging, partial fine-tunes."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from redegrade.train import losses as L
from redegrade.train.__main__ import main as train_cli
from redegrade.train.config import TrainConfig
from redegrade.train.data import synthetic_images
from redegrade.train.loop import CHECKPOINT, LOG_FILE, build_model, load_checkpoint, train
from redegrade.train.trainer import Trainer

from train_helpers import _FixedBatch, _losses_before_after, _photo, _sampler


def test_training_steps_lower_the_losses():
    """A few steps with the default weights lower similarity, both rates, the aux loss and diversity-SSIM."""
    before, after = _losses_before_after(12)
    for k in ("sim", "rate_g", "rate_l", "aux", "diver"):
        assert after[k] < before[k], (k, before[k], after[k])
    assert after["sim"] < 0.95 * before["sim"]


def test_colour_loss_falls_when_it_is_the_objective():
    # with the default weights the similarity term dominates a tiny model's first steps
    before, after = _losses_before_after(8, lambda_sim=0.0, lambda_diver=0.0, lambda_contra=0.0)
    assert after["color"] < 0.95 * before["color"]


def test_contrastive_loss_trains_the_global_encoder():
    """MoCo: e_g of a crop moves towards the key of another crop with the same degradation."""
    from redegrade.train.moco import MoCo

    torch.manual_seed(0)
    m = build_model("tiny")
    moco = MoCo(m.hden, queue_size=8)
    s = _sampler()
    b, o = s.sample(1), s.sample(2)
    negatives = moco.keys(torch.cat([o.y_pos, o.y]))
    opt = torch.optim.Adam(m.hden.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = L.contrastive_loss(m.hden(b.y), moco.keys(b.y_pos), negatives)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_quant_warmup_keeps_codes_unquantised_for_its_steps():
    model = build_model("tiny")
    modes = []
    quantize = model.quantize
    model.quantize = lambda code, mode, **kw: (modes.append(mode), quantize(code, mode, **kw))[1]
    trainer = Trainer(model, TrainConfig(preset="tiny", crop=32, batch=2, queue=4, quant_warmup=2))
    s = _sampler(batch=2)
    for _ in range(3):
        trainer.step(s)
    assert modes == ["none", "none", "noise"]


def test_moco_queue_is_a_ring_and_momentum_moves_keys():
    from redegrade.train.moco import MoCo

    m = build_model("tiny")
    moco = MoCo(m.hden, queue_size=5)
    k = torch.nn.functional.normalize(torch.randn(3, 256, generator=torch.Generator().manual_seed(0)), dim=1)
    moco.enqueue(k)
    moco.enqueue(k)
    assert int(moco.ptr) == 1 and torch.equal(moco.queue[0], k[2]) and torch.equal(moco.queue[3], k[0])
    with torch.no_grad():
        for p in m.hden.parameters():
            p.add_(1.0)
    before = [p.clone() for p in moco.key_encoder.parameters()]
    moco.update(m.hden)
    moved = [(a - b).abs().max() for a, b in zip(moco.key_encoder.parameters(), before)]
    assert all(abs(float(d) - 0.001) < 1e-5 for d in moved)  # (1 − m)·Δ with m = 0.999 and Δ = 1


def test_resume_continues_with_identical_state(tmp_path):
    cfg = TrainConfig(preset="tiny", crop=32, batch=2, steps=4, checkpoint_every=2, queue=4)
    torch.manual_seed(0)
    straight = train(_sampler(batch=2), cfg, tmp_path / "a", progress=False)
    torch.manual_seed(0)
    half = TrainConfig(**{**cfg.to_dict(), "steps": 2})
    train(_sampler(batch=2), half, tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 2
    torch.manual_seed(99)  # resuming must not depend on fresh initialisation
    resumed = train(_sampler(batch=2), cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.step_count == 4
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(straight.moco.queue, resumed.moco.queue)
    la = [json.loads(x)["total"] for x in (tmp_path / "a" / LOG_FILE).read_text().splitlines()]
    lb = [json.loads(x)["total"] for x in (tmp_path / "b" / LOG_FILE).read_text().splitlines()]
    assert la == lb


def test_resume_with_a_different_preset_is_refused(tmp_path):
    from redegrade.errors import ConfigError

    cfg = TrainConfig(preset="tiny", crop=32, batch=2, steps=1, queue=4)
    train(_sampler(batch=2), cfg, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="preset"):
        train(_sampler(batch=2), TrainConfig(**{**cfg.to_dict(), "preset": "small"}), tmp_path, resume=True,
              progress=False)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_help_explains_a_run():
    res = CliRunner().invoke(train_cli, ["--help"])
    assert res.exit_code == 0
    for word in ("--data", "--preset", "--perceptual", "--resume", "--lambda-diver", "--gan", "checkpoint.pt"):
        assert word in res.output


def test_cli_run_writes_a_checkpoint_the_redegrader_loads(tmp_path):
    from redegrade.redegrader import Redegrader

    data = tmp_path / "photos"
    data.mkdir()
    for i, im in enumerate(synthetic_images(2, 64)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(data / f"{i}.png")
    out = tmp_path / "run"
    res = CliRunner().invoke(train_cli, ["--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2",
                                         "--batch", "2", "--crop", "32", "--no-progress", "--device", "cpu",
                                         "--gan"])
    assert res.exit_code == 0, res.output
    state = torch.load(out / CHECKPOINT, weights_only=True)
    assert state["step"] == 2 and state["critic"] and state["config"]["widths"] == [4, 8, 8]
    assert len((out / LOG_FILE).read_text().splitlines()) == 2
    for path in (out / CHECKPOINT, out / "redegrader"):
        r = Redegrader.from_pretrained(path)
        x = _photo(32)
        r.reset(x, generator=torch.Generator().manual_seed(0))
        assert r(x).shape == x.shape


def test_cli_reports_missing_images_in_one_line(tmp_path):
    res = CliRunner().invoke(train_cli, ["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--steps", "1"])
    assert res.exit_code == 2
    assert "no .jpg/.jpeg/.png images" in res.output


def test_with_pairs_each_sample_is_synthesised_from_its_partners_code():
    torch.manual_seed(0)
    trainer = Trainer(build_model("tiny"), TrainConfig(preset="tiny", lambda_contra=0.0, lambda_diver=0.0))
    b = _sampler(crop=32, batch=4).sample(0)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    own = trainer.losses(b.x, b.y, b.y_pos, g())[2]
    same = trainer.losses(b.x, b.y, b.y_pos, g(), torch.arange(4))[2]
    swapped = trainer.losses(b.x, b.y, b.y_pos, g(), torch.tensor([1, 0, 3, 2]))[2]
    torch.testing.assert_close(own, same)
    assert (own - swapped).abs().max() > 1e-4


def test_average_cli_writes_the_mean_of_the_checkpoints_weights(tmp_path):
    from redegrade.model import ModelConfig, UniversalDegradationModel, load_state
    from redegrade.model.io import save_state
    from redegrade.train.average import average_models
    from redegrade.train.average import main as average_cli

    torch.manual_seed(0)
    a, b = (UniversalDegradationModel(ModelConfig.preset("tiny")) for _ in range(2))
    save_state(a, tmp_path / "a")
    save_state(b, tmp_path / "b")
    r = CliRunner().invoke(average_cli, [str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "avg")])
    assert r.exit_code == 0, r.output
    avg = load_state(tmp_path / "avg")
    w = "synthesis.conv_first.0.weight"
    torch.testing.assert_close(avg.state_dict()[w], (a.state_dict()[w] + b.state_dict()[w]) / 2)
    with pytest.raises(Exception, match="different configs"):
        average_models([a, UniversalDegradationModel(ModelConfig.preset("small"))])


def test_train_only_updates_just_the_named_parts():
    torch.manual_seed(0)
    model = build_model("tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, TrainConfig(preset="tiny", crop=32, batch=4, train_only="synthesis.conv_last,hden.head"))
    trainer.step(_sampler(crop=32, batch=4))
    # the entropy quantiles too: their medians are the codes' rounding grid
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("synthesis.conv_last", "hden.head")) for n in changed), changed
    with pytest.raises(Exception, match="matches no parameter"):
        Trainer(build_model("tiny"), TrainConfig(preset="tiny", train_only="nothing.here"))


def test_a_graft_with_freeze_bn_keeps_the_inits_batchnorm_statistics(tmp_path):
    """Re-estimating the frozen encoders' statistics changes the codes a graft must keep; a whole-model
    fine-tune with --freeze-bn still re-estimates them."""
    from redegrade.model.io import save_state

    torch.manual_seed(0)
    init = build_model("tiny")
    save_state(init, tmp_path / "init")
    stats = {k: v.clone() for k, v in init.state_dict().items() if "running" in k}
    for train_only, kept in (("synthesis.conv_last", True), ("", False)):
        cfg = TrainConfig(preset="tiny", crop=32, batch=2, steps=1, freeze_bn=True, init=str(tmp_path / "init"),
                          train_only=train_only, lambda_contra=0.0, checkpoint_every=1)
        model = train(_sampler(batch=2), cfg, tmp_path / f"run{kept}", progress=False).model
        same = all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
        assert same == kept, train_only


def test_the_teacher_term_holds_renders_without_noise_to_the_init_and_needs_one(tmp_path):
    from redegrade.errors import ConfigError
    from redegrade.model.io import save_state

    torch.manual_seed(0)
    init = build_model("tiny")
    save_state(init, tmp_path / "init")
    init.eval()
    fixed = _sampler(batch=4).sample(0)
    x, y = fixed.x, fixed.y

    def drift(lambda_teacher: float, noisy: bool) -> float:
        """Mean |ŷ − init's ŷ| after 15 steps on a batch whose samples are all (not) noisy."""
        fixed.noisy = torch.full((4,), noisy)
        cfg = TrainConfig(preset="tiny", crop=32, batch=4, lr=5e-3, steps=15, init=str(tmp_path / "init"),
                          lambda_teacher=lambda_teacher, lambda_contra=0.0, lambda_clean=0.0, seed=1)
        model = train(_FixedBatch(fixed), cfg, tmp_path / f"run{lambda_teacher}{noisy}", progress=False).model.eval()
        with torch.no_grad():
            noise = init.sample_noise(x, torch.Generator().manual_seed(2))
            code = lambda m: m.quantize(m.encode(y), "round")[0]  # noqa: E731
            return float((model.synthesize(x, code(model), noise) - init.synthesize(x, code(init), noise)).abs().mean())

    free, held, noisy = drift(0.0, False), drift(200.0, False), drift(200.0, True)
    assert held < 0.5 * free, (held, free)
    assert noisy > 0.8 * free, (noisy, free)               # noisy samples are free to change
    with pytest.raises(ConfigError, match="--init"):
        train(_FixedBatch(fixed), TrainConfig(preset="tiny", lambda_teacher=1.0), tmp_path / "x", progress=False)


def test_the_teacher_lets_go_of_samples_the_student_measures_as_upsampled_and_it_cannot():
    """A teacher without the ``resized`` extra paints the resize; held to it, the student would be too."""
    import dataclasses

    from redegrade.image import resize
    from redegrade.model import ModelConfig, UniversalDegradationModel

    torch.manual_seed(0)
    tiny = ModelConfig.preset("tiny")
    student = UniversalDegradationModel(dataclasses.replace(tiny, extras=(*tiny.extras, "resized")))
    teacher = UniversalDegradationModel(tiny)
    trainer = Trainer(student, TrainConfig(preset="tiny", lambda_teacher=1.0), teacher=teacher)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.cat([x[:1], resize(resize(x[1:], 8), 32)])
    noise = student.sample_noise(x, torch.Generator().manual_seed(2))
    factor = student.encode(y).factor
    assert factor.tolist() == [1, 4]
    y_hat = torch.zeros_like(x)
    both = trainer._teacher_loss(x, y, y_hat, noise, None, None, None)
    first = trainer._teacher_loss(x, y, y_hat, noise, None, None, factor)
    with torch.no_grad():
        code = teacher.quantize(teacher.encode(y), "round", rate=False)[0]
        per_sample = teacher.synthesize(x, code, noise).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(both, per_sample.mean())
    torch.testing.assert_close(first, per_sample[0] / 2)
