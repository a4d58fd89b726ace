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


def test_available_lists_every_shipped_pack_with_licence(tmp_path: Path) -> None:
    from model.descriptors import descriptors

    result = run_cli("models", "--models-dir", tmp_path / "models", "available")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == set(descriptors())
    assert "manual download" in lines["mrannotator-spine"] and "CC-BY-NC" in lines[
        "mrannotator-spine"]
    assert "sha256 pinned" in lines["mrsegmentator"]
    assert "no published sha256" in lines["totalseg-mr"]


def test_install_a_shipped_pack_from_a_local_folder_then_show_and_verify(tmp_path: Path) -> None:
    """TotalSegmentator's two archives, downloaded by hand into one folder."""
    from model.descriptors import descriptor
    from tests.model.standins import write_standin_archives

    item = descriptor("totalseg-mr")
    assert item is not None
    archives = write_standin_archives(item, tmp_path / "downloads")
    models = tmp_path / "models"
    installed = run_cli("models", "--models-dir", models, "install", "totalseg-mr",
                        "--from", archives)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert "licence: Apache-2.0" in installed.stdout
    assert "No SHA-256 given" in installed.stderr  # TotalSegmentator publishes none
    shown = run_cli("models", "--models-dir", models, "show", "totalseg-mr")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "model organs: folds 0, trainer nnUNetTrainer_2000epochs_NoMirroring" in shown.stdout
    assert "model muscles: folds 0" in shown.stdout
    assert "input orientation RAS" in shown.stdout
    kidney = next(line for line in shown.stdout.splitlines() if " kidney_left " in line)
    assert "64033007 Kidney left" in kidney
    verified = run_cli("models", "--models-dir", models, "verify", "totalseg-mr")
    assert verified.returncode == 0 and "totalseg-mr: 2 checkpoint(s) verified" in verified.stdout
    listed = run_cli("models", "--models-dir", models, "list")
    line = next(x for x in listed.stdout.splitlines() if x.startswith("totalseg-mr "))
    assert "2 model(s)" in line and "archive recorded" in line and "licence Apache-2.0" in line


def test_segment_with_two_packs_from_the_command_line(tmp_path: Path) -> None:
    from model.descriptors import descriptor
    from tests.model.standins import sha256_of, write_standin_archives
    from tests.peers import write_phantom_series

    models = tmp_path / "models"
    for name in ("mrannotator-abdomen", "mrsegmentator-bodycomp"):
        item = descriptor(name)
        assert item is not None
        archive = write_standin_archives(item, tmp_path / name) / item.archives[0].file
        result = run_cli("models", "--models-dir", models, "install", name, "--from", archive,
                         "--sha256", sha256_of(archive))
        assert result.returncode == 0, result.stderr[-2000:]
    series = write_phantom_series(tmp_path / "in", fov_mm=(64.0, 96.0, 96.0))
    result = run_cli("segment", series.folder, "--out", tmp_path / "out", "--models-dir", models,
                     "--model", "mrannotator-abdomen", "--model", "mrsegmentator-bodycomp",
                     "--device", "cpu", "--tile-step", "1.0")
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / "out" / series.series_uid
    assert sorted(p.name for p in folder.glob("*.dcm")) == [
        "seg-mrannotator-abdomen.dcm", "seg-mrsegmentator-bodycomp.dcm", "sr.dcm"]
