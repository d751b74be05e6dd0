"""Checkpoint registry and ``python -m redegrade.weights``: offline errors, atomic verified downloads, CLI."""
from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from redegrade.errors import CheckpointError, MissingCheckpointError
from redegrade.weights import REGISTRY, Checkpoint, cache_path, download, resolve
from redegrade.weights.__main__ import main

PAYLOAD = b"not really a network, but bytes with a known digest\n" * 100


def _ckpt(url: str, *, sha256: str | None = None, size: int | None = None, name: str = "test.blob") -> Checkpoint:
    return Checkpoint(name, url, "test-blob.bin", sha256, size, "CC0", "tests", "none")


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("REDEGRADE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def served(tmp_path):
    """PAYLOAD behind a local HTTP server on 127.0.0.1 (no outside network)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "blob.bin").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
    server.shutdown()
    server.server_close()


def test_offline_missing_is_one_actionable_line():
    res = CliRunner().invoke(main, ["fetch", "stylegan2.ffhq1024"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1
    dest = cache_path("stylegan2.ffhq1024")
    assert REGISTRY["stylegan2.ffhq1024"].url in lines[0] and str(dest) in lines[0] and "offline" in lines[0]
    assert not dest.exists()


def test_list_shows_every_checkpoint_and_help_names_the_commands():
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 0
    for name, c in REGISTRY.items():
        assert name in res.output and c.url in res.output
    assert "missing" in res.output
    help_ = subprocess.run([sys.executable, "-m", "redegrade.weights", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0
    assert all(cmd in help_.stdout for cmd in ("list", "fetch", "convert", "verify", "path"))


def test_http_download_is_verified_and_atomic(online, served, tmp_path):
    good = _ckpt(served, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    dest = tmp_path / "cache" / "blob.bin"
    assert download(good, dest, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["blob.bin"]      # no temp file left behind


def test_bad_sha256_leaves_nothing(online, served, tmp_path):
    bad = _ckpt(served, sha256="0" * 64)
    dest = tmp_path / "cache" / "blob.bin"
    with pytest.raises(CheckpointError, match="sha256"):
        download(bad, dest, progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    with pytest.raises(CheckpointError, match="bytes, expected"):
        download(_ckpt(served, size=len(PAYLOAD) + 1), dest, progress=False)
    assert not dest.exists()


def test_fetch_from_file_url_through_the_cli_then_resolve_offline(online, tmp_path, monkeypatch):
    src = tmp_path / "source.bin"
    src.write_bytes(PAYLOAD)
    ckpt = _ckpt(src.as_uri(), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    monkeypatch.setitem(REGISTRY, ckpt.name, ckpt)
    res = CliRunner().invoke(main, ["fetch", ckpt.name])
    assert res.exit_code == 0, res.output
    assert cache_path(ckpt).read_bytes() == PAYLOAD
    monkeypatch.setenv("REDEGRADE_OFFLINE", "1")                        # cached: no network needed
    assert resolve(ckpt.name) == cache_path(ckpt)
    assert CliRunner().invoke(main, ["verify", ckpt.name]).exit_code == 0
    cache_path(ckpt).write_bytes(PAYLOAD[:-1])                          # corrupted cache is caught
    res = CliRunner().invoke(main, ["verify", ckpt.name])
    assert res.exit_code == 2 and "sha256" in res.output


def test_unreachable_url_names_file_url_and_destination(online, tmp_path):
    ckpt = _ckpt((tmp_path / "nowhere.bin").as_uri())
    with pytest.raises(MissingCheckpointError) as err:
        download(ckpt, tmp_path / "d.bin", progress=False)
    assert ckpt.url in str(err.value) and str(tmp_path / "d.bin") in str(err.value)


def test_unknown_name_or_path():
    with pytest.raises(MissingCheckpointError, match="known:"):
        resolve("stylegan2.does-not-exist")
    res = CliRunner().invoke(main, ["fetch", "nope"])
    assert res.exit_code == 2 and "stylegan2.ffhq1024" in res.output
