"""Backends are plugins: a backend that exists only as an installed distribution's entry point is
discovered, listed with its distribution, loaded and run — by the registry and by the restore CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from redegrade import backend
from redegrade.errors import BackendLoadError, UnknownBackendError
from redegrade.forward import Identity
from redegrade.image import load_image, save_image
from redegrade.restore import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The first ```python block of the README's "Writing a backend" section: tested as published."""
    section = README.read_text(encoding="utf-8").split("## Writing a backend", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


PLUGIN = readme_example()


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """``myplug.py`` plus a ``myplug-0.1.dist-info`` folder: what ``pip install myplug`` leaves behind."""
    (tmp_path / "myplug.py").write_text(PLUGIN)
    info = tmp_path / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[redegrade.backends]\nmine = myplug:Mine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    backend.refresh()
    yield tmp_path
    sys.modules.pop("myplug", None)
    monkeypatch.undo()
    backend.refresh()


def test_builtins_come_from_package_metadata():
    entries = {e.name: e for e in backend.available()}
    assert entries["rsg"].target == "redegrade_rsg:RSG" and entries["rsg"].distribution == "redegrade"
    assert entries["dps"].target == "redegrade_dps:DPS" and entries["dps"].distribution == "redegrade"


def test_plugin_is_discovered_listed_and_runs(plugin_dir):
    entries = {e.name: e for e in backend.available()}
    assert (entries["mine"].target, entries["mine"].distribution, entries["mine"].version) == ("myplug:Mine", "myplug", "0.1")
    assert "myplug" not in sys.modules  # listing imports nothing
    cls = backend.load("mine")
    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = cls(cls.Config(steps=3)).restore(y, Identity())
    assert out.image.shape == y.shape and len(out.history) == 3


def test_a_backend_must_say_its_resolution():
    class NoSize(backend.Backend):
        Config = dict

        def restore(self, y, forward_model, *, progress=None):
            raise AssertionError("never reached")

    with pytest.raises(TypeError, match="resolution"):
        NoSize()


def test_run_resets_the_forward_model_before_restore(plugin_dir):
    """The contract resets, not the callers: ``run`` hands ``restore`` a forward model reset on y with
    draws from the config's seed (or the generator given)."""
    cls = backend.load("mine")
    seen = []

    class Spy(Identity):
        def reset(self, y, *, generator=None):
            seen.append(("reset", y.clone(), torch.randint(1 << 30, (1,), generator=generator).item()))

        def forward(self, x):
            if not seen or seen[-1][0] != "forward":
                seen.append(("forward",))
            return x

    y = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cls(cls.Config(steps=1, seed=7)).run(y, Spy())
    assert [s[0] for s in seen] == ["reset", "forward"] and torch.equal(seen[0][1], y)
    assert seen[0][2] == torch.randint(1 << 30, (1,), generator=torch.Generator().manual_seed(7)).item()
    seen.clear()
    cls(cls.Config(steps=1, seed=7)).run(y, Spy(), generator=torch.Generator().manual_seed(3))
    assert seen[0][2] == torch.randint(1 << 30, (1,), generator=torch.Generator().manual_seed(3)).item()


def test_an_option_must_set_a_config_field(plugin_dir):
    (plugin_dir / "myplug.py").write_text(PLUGIN.replace('Option("--lr", "lr"', 'Option("--lr", "rate"'))
    with pytest.raises(BackendLoadError, match="--lr sets 'rate', which its Config lacks"):
        backend.load("mine")


def test_unknown_backend_lists_installed_ones(plugin_dir):
    with pytest.raises(UnknownBackendError) as err:
        backend.load("nope")
    for name in ("rsg (redegrade)", "dps (redegrade)", "mine (myplug)"):
        assert name in str(err.value)


def test_cli_unknown_backend_is_one_line_exit_2(tmp_path):
    img = tmp_path / "in.png"
    save_image(torch.zeros(1, 3, 32, 32), img)
    res = CliRunner().invoke(main, [str(img), "--backend", "nope"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "installed backends: " in res.stderr and "rsg" in res.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"in.png"}


def test_cli_lists_the_plugin_and_refuses_options_it_lacks(plugin_dir, tmp_path):
    listing = CliRunner().invoke(main, ["--list-backends"])
    assert listing.exit_code == 0
    assert any(line.startswith("mine ") and "(myplug 0.1)" in line and line.endswith("ok")
               for line in listing.output.splitlines())
    img = tmp_path / "in.png"
    save_image(torch.zeros(1, 3, 32, 32), img)
    bad = CliRunner().invoke(main, [str(img), "--backend", "mine", "--mode", "naive", "--generator", "x",
                                    "-o", str(tmp_path / "bad.png")])
    assert bad.exit_code == 2 and bad.stderr == "error: option --generator does not apply to backend mine (its options: --lr)\n"
    assert not (tmp_path / "bad.png").exists()


def _restore(plugin_dir: Path, *args: object) -> subprocess.CompletedProcess:
    """``python -m redegrade.restore`` in a fresh interpreter that finds the plugin through PYTHONPATH alone."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "redegrade.restore", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_runs_plugin_in_a_subprocess(plugin_dir, tmp_path):
    """The plugin is found by a fresh interpreter through PYTHONPATH alone: no registration code."""
    img = tmp_path / "in.png"
    save_image(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1, img)
    run = _restore(plugin_dir, img, "--backend", "mine", "--mode", "naive", "--set", "steps=4", "--no-progress",
                   "-o", tmp_path / "out.png")
    assert run.returncode == 0, run.stderr
    out = load_image(tmp_path / "out.png")
    assert out.shape == (1, 3, 32, 32) and out.std() > 0.05  # moved away from its grey start
    assert "resizing to the model's 32×32" in run.stderr


def test_plugin_declares_an_option_and_receives_it_from_the_cli(plugin_dir, tmp_path):
    """``Mine.options`` adds ``--lr`` to the restore CLI: with ``--lr 0`` the image never leaves grey,
    whereas the Config's default (0.05) would move it."""
    helped = _restore(plugin_dir, "--backend", "mine", "--help")
    assert helped.returncode == 0 and "--lr" in helped.stdout and "[mine] Adam step size" in helped.stdout
    img = tmp_path / "in.png"
    save_image(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1, img)
    run = _restore(plugin_dir, img, "--backend", "mine", "--lr", "0", "--mode", "naive", "--set", "steps=4",
                   "--no-progress", "-o", tmp_path / "out.png")
    assert run.returncode == 0, run.stderr
    out = load_image(tmp_path / "out.png")
    assert out.shape == (1, 3, 32, 32) and float((out - out.mean()).abs().max()) < 1 / 255
    bad = CliRunner().invoke(main, [str(img), "--backend", "mine", "--lr", "fast", "-o", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "--lr" in bad.stderr and bad.stderr.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
