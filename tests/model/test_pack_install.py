"""Installing shipped packs: pinned checksums, local archives, folders; failures leave none."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from model import store as store_module
from model.descriptors import PackDescriptor, descriptor, descriptors
from model.engine import SegmentationEngine
from model.store import ModelStore
from segnode_errors import ModelError
from tests.model.standins import sha256_of, write_standin_archives, write_standin_models


def _leftovers(root: Path) -> list[str]:
    tmp = root / ".tmp"
    return sorted([p.name for p in root.iterdir() if p.name != ".tmp"]
                  + ([p.name for p in tmp.iterdir()] if tmp.is_dir() else []))


@pytest.fixture(scope="module")
def mrseg_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    item = descriptor("mrsegmentator")
    assert item is not None
    folder = write_standin_archives(item, tmp_path_factory.mktemp("mrseg"))
    return folder / item.archives[0].file


def test_descriptors_are_valid_and_named_after_their_files() -> None:
    assert set(descriptors()) == {
        "mrsegmentator", "mrsegmentator-bodycomp", "totalseg-mr", "totalseg-mr-fast",
        "mrannotator-abdomen", "mrannotator-shoulder-knee", "mrannotator-pelvis",
        "mrannotator-spine"}
    mrseg = descriptor("mrsegmentator")
    assert mrseg is not None and mrseg.archives[0].url == (
        "https://github.com/hhaentze/MRSegmentator/releases/download/v1.2.0/weights.zip")
    assert mrseg.archives[0].sha256 == (
        "dd26c1b511908a1f2a752b7fe8f5ca9c5603fc3e69fa52f57bf3ccdd52ceb286")
    total = descriptor("totalseg-mr")
    assert total is not None and [(m.label_count, m.label_offset) for m in total.models] == [
        (29, 0), (21, 29)]
    assert all(not d.commercial_use for n, d in descriptors().items()
               if n.startswith("mrannotator"))


def test_invalid_descriptor_names_the_field(tmp_path: Path) -> None:
    raw = descriptor("mrannotator-pelvis").model_dump()  # type: ignore[union-attr]
    raw["input_orientation"] = "LPX"
    with pytest.raises(ValueError, match="input_orientation"):
        PackDescriptor.model_validate(raw)
    raw = descriptor("mrannotator-pelvis").model_dump()  # type: ignore[union-attr]
    raw["models"][0]["label_count"] = 3
    with pytest.raises(ValueError, match=r"cover label values \[1, 2, 3\]"):
        PackDescriptor.model_validate(raw)


def test_pinned_checksum_refuses_a_different_archive(tmp_path: Path, mrseg_zip: Path) -> None:
    """The stand-in is not the published zip: the descriptor's SHA-256 stops the install."""
    root = tmp_path / "models"
    with pytest.raises(ModelError) as info:
        ModelStore(root).install("mrsegmentator", from_path=mrseg_zip)
    message = str(info.value)
    assert "dd26c1b511908a1f2a752b7fe8f5ca9c5603fc3e69fa52f57bf3ccdd52ceb286" in message
    assert sha256_of(mrseg_zip) in message and "Nothing was installed" in message
    assert _leftovers(root) == []


def test_right_checksum_installs_and_records_it(tmp_path: Path, mrseg_zip: Path) -> None:
    store = ModelStore(tmp_path / "models")
    pack = store.install("mrsegmentator", from_path=mrseg_zip, sha256=sha256_of(mrseg_zip))
    meta = json.loads((pack.folder / "segnode.json").read_text())
    assert meta["archives"] == {"weights.zip": sha256_of(mrseg_zip)}
    assert meta["archive_check"] == "checked" and pack.archive_check == "checked"
    assert sorted(meta["checkpoints"]) == [f"base/fold_{f}/checkpoint_final.pth"
                                           for f in range(5)]
    assert _leftovers(tmp_path / "models") == ["mrsegmentator"]


def test_download_path_fetches_the_descriptors_url(tmp_path: Path, mrseg_zip: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --from the archive is fetched from the descriptor's URL (served from disk here)."""
    fetched = []
    real = store_module._download

    def from_disk(url: str, target: Path) -> Path:
        fetched.append(url)
        return real(mrseg_zip.as_uri(), target)

    monkeypatch.setattr(store_module, "_download", from_disk)
    pack = ModelStore(tmp_path / "models").install("mrsegmentator",
                                                   sha256=sha256_of(mrseg_zip))
    assert fetched == [descriptor("mrsegmentator").archives[0].url]  # type: ignore[union-attr]
    assert pack.models[0].folds == (0, 1, 2, 3, 4)


def test_manual_download_pack_needs_a_local_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="Google Drive") as info:
        ModelStore(tmp_path / "models").install("mrannotator-spine")
    assert "--from" in str(info.value) and "CC-BY-NC" in str(info.value)
    assert _leftovers(tmp_path / "models") == []


def test_mrannotator_installs_from_the_unpacked_folder(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    item = descriptor("mrannotator-spine")
    assert item is not None
    unpacked = write_standin_models(item, tmp_path / "MRAnnotator")
    pack = ModelStore(tmp_path / "models").install("mrannotator-spine", from_path=unpacked)
    assert len(pack.labels) == 22 and pack.licence.startswith("CC-BY-NC")
    assert "non-commercial use only" in caplog.text
    meta = json.loads((pack.folder / "segnode.json").read_text())
    assert meta["archives"] == {"mrannotator_weights.zip": None}  # no checksum to check
    assert pack.archive_check == "none"


def test_several_archives_need_a_folder(tmp_path: Path) -> None:
    item = descriptor("totalseg-mr")
    assert item is not None
    folder = write_standin_archives(item, tmp_path / "ts")
    with pytest.raises(ModelError, match="give '--from' a folder"):
        ModelStore(tmp_path / "models").install("totalseg-mr",
                                                from_path=folder / item.archives[0].file)
    with pytest.raises(ModelError, match="'--sha256' names one archive"):
        ModelStore(tmp_path / "models").install("totalseg-mr", from_path=folder, sha256="0" * 64)


def test_archive_of_another_model_is_refused(tmp_path: Path) -> None:
    """The body-composition zip given for the base model: label values do not match."""
    item = descriptor("mrsegmentator-bodycomp")
    assert item is not None
    archive = write_standin_archives(item, tmp_path / "bc") / item.archives[0].file
    with pytest.raises(ModelError, match=r"dataset.json has label values \[1, .*10\], "
                                         r"expected 1..40"):
        ModelStore(tmp_path / "models").install("mrsegmentator", from_path=archive,
                                                sha256=sha256_of(archive))
    assert _leftovers(tmp_path / "models") == []


def test_missing_model_folder_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("README.txt", "no model here")
    with pytest.raises(ModelError, match="model 'pelvis': no nnU-Net model folder"):
        ModelStore(tmp_path / "models").install("mrannotator-pelvis", from_path=empty)


def test_interrupted_install_leaves_nothing(tmp_path: Path, mrseg_zip: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the middle of unpacking: no pack, no work folder."""
    real = store_module._unzip

    def interrupted(archive: Path, target: Path) -> None:
        real(archive, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_unzip", interrupted)
    root = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        ModelStore(root).install("mrsegmentator", from_path=mrseg_zip,
                                 sha256=sha256_of(mrseg_zip))
    assert _leftovers(root) == []


def test_killed_install_is_cleaned_up_by_the_next(tmp_path: Path, mrseg_zip: Path) -> None:
    """A process killed mid-install leaves its work folder; the next install removes it."""
    root = tmp_path / "models"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = root / ".tmp" / f"mrsegmentator-pid{dead.pid}-abc123"
    (abandoned / "unpacked").mkdir(parents=True)
    (abandoned / "unpacked" / "half.pth").write_bytes(b"\0" * 1024)
    ModelStore(root).install("mrsegmentator", from_path=mrseg_zip, sha256=sha256_of(mrseg_zip))
    assert _leftovers(root) == ["mrsegmentator"]


def test_checkpoint_of_another_trainer_is_refused_at_load(tmp_path: Path) -> None:
    item = descriptor("mrannotator-pelvis")
    assert item is not None
    raw = item.model_dump()
    raw["models"][0]["trainer"] = "nnUNetTrainer"  # the stand-in then says nnUNetTrainer
    forged = PackDescriptor.model_validate(raw)
    unpacked = write_standin_models(forged, tmp_path / "forged")
    pack = ModelStore(tmp_path / "models").install("mrannotator-pelvis", from_path=unpacked)
    with pytest.raises(ModelError, match="trainer_name 'nnUNetTrainer', but the pack declares "
                                         "'nnUNetTrainerNoMirroring'"):
        SegmentationEngine(pack, device="cpu")
