"""Shared test set-up: offline, isolated cache, deterministic and single-threaded torch."""
import pytest
import torch

# Tiny test networks gain nothing from intra-op threads, and on shared or busy cores two OpenMP
# threads wait on each other (measured: 20 ms → 1–6 s per tiny forward), so the suite runs single-threaded.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    # Tests never touch the user's cache or the network.
    monkeypatch.setenv("REDEGRADE_HOME", str(tmp_path_factory.getbasetemp() / "redegrade_home"))
    monkeypatch.setenv("REDEGRADE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
