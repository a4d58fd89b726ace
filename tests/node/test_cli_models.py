"""``segnode models list|install`` through the real command line."""

from __future__ import annotations

import hashlib
import json
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


def test_verify_rechecks_every_checkpoint_against_the_install(tmp_path: Path) -> None:
    archive, digest = _zip_model(tmp_path)
    models = tmp_path / "models"
    installed = run_cli("models", "--models-dir", models, "install", str(archive),
                        "--sha256", digest, "--name", "tiny")
    assert installed.returncode == 0, installed.stderr[-2000:]
    meta = json.loads((models / "tiny" / "segnode.json").read_text())
    assert meta["archive_sha256"] == digest
    checkpoint = models / "tiny" / "fold_0" / "checkpoint_final.pth"
    assert meta["checkpoints"] == {
        "fold_0/checkpoint_final.pth": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    verified = run_cli("models", "--models-dir", models, "verify", "tiny")
    assert verified.returncode == 0 and "tiny: 1 checkpoint(s) verified" in verified.stdout
    listed = run_cli("models", "--models-dir", models, "list")
    assert "licence unknown" in listed.stdout and "licence Apache-2.0" in listed.stdout
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte, same size
    checkpoint.write_bytes(bytes(data))
    broken = run_cli("models", "--models-dir", models, "verify")
    assert broken.returncode == 1
    assert "demo: 1 checkpoint(s) verified" in broken.stdout
    assert "tiny: fold_0/checkpoint_final.pth changed - expected SHA-256 " in broken.stdout
    assert meta["checkpoints"]["fold_0/checkpoint_final.pth"] in broken.stdout
    assert hashlib.sha256(bytes(data)).hexdigest() in broken.stdout
