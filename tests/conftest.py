"""Shared test set-up: offline, isolated cache, deterministic and single-threaded torch."""
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    # Tests never touch the user's cache or the network.
    monkeypatch.setenv("REDEGRADE_HOME", str(tmp_path_factory.getbasetemp() / "redegrade_home"))
    monkeypatch.setenv("REDEGRADE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
