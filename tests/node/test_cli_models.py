"""``segnode models list|install`` through the real command line."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.model.conftest import write_tiny_model, zip_folder
from tests.node.conftest import run_cli


def _zip_model(tmp_path: Path) -> tuple[Path, str]:
    folder = write_tiny_model(tmp_path / "src" / "tiny", metadata={"version": "0.3.1"})
    archive = zip_folder(folder, tmp_path / "tiny.zip", prefix="Dataset999_Tiny/")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_install_from_file_url_then_list(tmp_path: Path) -> None:
    archive, digest = _zip_model(tmp_path)
    models = tmp_path / "models"
    installed = run_cli("models", "--models-dir", models, "install", archive.as_uri(),
                        "--sha256", digest, "--name", "tiny")
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert "installed tiny" in installed.stdout
    listed = run_cli("models", "--models-dir", models, "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert names == ["demo", "tiny"]


def test_wrong_checksum_fails_and_installs_nothing(tmp_path: Path) -> None:
    archive, digest = _zip_model(tmp_path)
    models = tmp_path / "models"
    wrong = "0" * 64
    result = run_cli("models", "--models-dir", models, "install", str(archive),
                     "--sha256", wrong, "--name", "tiny")
    assert result.returncode == 2
    assert wrong in result.stderr and digest in result.stderr
    assert not (models / "tiny").exists()
    assert [p for p in models.rglob("*") if p.is_file()] == []  # no partial download or unpack
