"""Model store and packs: install from zip / file:// URL / folder, checksums, resolve."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from model.packs import DEMO_PACK_NAME, find_folds, load_pack, weights_sha256
from model.store import ModelStore
from segnode_errors import ModelError


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory: pytest.TempPathFactory, make_tiny_model, make_zip) -> Path:
    """A zip with the model folder nested one level deep, as release zips often are."""
    base = tmp_path_factory.mktemp("zips")
    folder = make_tiny_model(base / "src", labels={"background": 0, "liver": 1, "spleen": 2},
                              folds=(0, 1, 2))
    (folder / "version.json").write_text(json.dumps({"weights_version": 1.5}))
    return make_zip(folder, base / "organs.zip", prefix="weights/")


@pytest.fixture
def demo_dir(tmp_path: Path, make_tiny_model) -> Path:
    return make_tiny_model(tmp_path / "demo_model", labels={"background": 0, "liver": 1},
                            metadata={"name": "demo", "version": "1", "description": "d",
                                      "input_orientation": "LPS"})


def _leftovers(root: Path) -> list[Path]:
    tmp = root / ".tmp"
    return [p for p in root.iterdir() if p.name != ".tmp"] + (
        list(tmp.iterdir()) if tmp.is_dir() else [])


def test_install_from_zip(tmp_path: Path, model_zip: Path, demo_dir: Path) -> None:
    store = ModelStore(tmp_path / "models", demo_folder=demo_dir)
    pack = store.install(str(model_zip), sha256=_sha256(model_zip))
    assert pack.name == "organs"
    assert pack.folder == (tmp_path / "models" / "organs").resolve()
    assert pack.folds == (0, 1, 2)
    assert pack.version == "1.5"  # from MRSegmentator-style version.json
    assert pack.input_orientation == "LPS"
    assert [s.name for s in pack.labels] == ["liver", "spleen"]
    assert pack.weights_sha256 == weights_sha256(pack.folder)
    meta = json.loads((pack.folder / "segnode.json").read_text())
    assert meta["name"] == "organs" and meta["source"] == str(model_zip)
    assert [p.name for p in store.list()] == ["demo", "organs"]
    assert store.resolve("organs").folder == pack.folder
    assert not list((tmp_path / "models" / ".tmp").iterdir())


def test_install_from_file_url_with_name(tmp_path: Path, model_zip: Path) -> None:
    store = ModelStore(tmp_path / "models", demo_folder=tmp_path / "none")
    pack = store.install(model_zip.as_uri(), sha256=_sha256(model_zip).upper(), name="abdo")
    assert pack.name == "abdo"
    assert store.resolve("abdo").folds == (0, 1, 2)
    assert [p.name for p in store.list()] == ["abdo"]  # no demo folder here


def test_wrong_checksum_installs_nothing(tmp_path: Path, model_zip: Path) -> None:
    root = tmp_path / "models"
    store = ModelStore(root)
    bad = "0" * 64
    with pytest.raises(ModelError) as info:
        store.install(model_zip.as_uri(), sha256=bad)
    message = str(info.value)
    assert bad in message and _sha256(model_zip) in message
    assert "expected" in message and "received" in message
    assert _leftovers(root) == []


def test_zip_that_is_not_a_model(tmp_path: Path) -> None:
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
        zf.writestr("sub/plans.json", "{}")  # plans.json alone is not a model
    root = tmp_path / "models"
    with pytest.raises(ModelError, match="not an nnU-Net v2 model"):
        ModelStore(root).install(str(archive))
    assert _leftovers(root) == []
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="not a valid zip"):
        ModelStore(root).install(str(garbage))
    assert _leftovers(root) == []


def test_unsafe_zip_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ModelError, match="unsafe path"):
        ModelStore(tmp_path / "models").install(str(archive))
    assert not (tmp_path / "escape.txt").exists()


def test_reinstall_replaces_atomically(tmp_path: Path, model_zip: Path) -> None:
    store = ModelStore(tmp_path / "models")
    first = store.install(str(model_zip), name="m")
    second = store.install(str(model_zip), name="m")
    assert first.folder == second.folder and second.folds == (0, 1, 2)
    assert _leftovers(tmp_path / "models") == [tmp_path / "models" / "m"]


def test_install_from_folder_and_bad_sources(tmp_path: Path, demo_dir: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.install(str(demo_dir), name="copy").labels.by_index(1).name == "liver"
    with pytest.raises(ModelError, match="Invalid model source"):
        store.install(str(tmp_path / "missing.zip"))
    with pytest.raises(ModelError, match="reserved"):
        store.install(str(demo_dir), name=DEMO_PACK_NAME)
    with pytest.raises(ModelError, match="Could not download"):
        store.install((tmp_path / "absent.zip").as_uri())
    with pytest.raises(ModelError, match="Invalid URL"):
        store.install("ftp://example.org/x.zip")


def test_resolve(tmp_path: Path, demo_dir: Path, tiny_model_dir: Path) -> None:
    store = ModelStore(tmp_path / "models", demo_folder=demo_dir)
    demo = store.resolve(None)
    assert demo.name == "demo" and demo.builtin
    assert store.resolve("demo").folder == demo.folder
    assert store.resolve(str(tiny_model_dir)).name == "tiny"
    with pytest.raises(ModelError, match="installed: \\['demo'\\]"):
        store.resolve("nothere")
    with pytest.raises(ModelError, match="models install"):
        store.resolve("mrsegmentator")
    with pytest.raises(ModelError, match="demo model is missing"):
        ModelStore(tmp_path / "models", demo_folder=tmp_path / "nope").resolve(None)


def test_weights_sha256_is_cached(tmp_path: Path, make_tiny_model) -> None:
    folder = make_tiny_model(tmp_path / "m", folds=(0, 1))
    first = weights_sha256(folder)
    assert (folder / ".segnode-weights.json").is_file()
    lines = "".join(
        f"fold_{f}/checkpoint_final.pth  {_sha256(folder / f'fold_{f}/checkpoint_final.pth')}\n"
        for f in (0, 1))
    assert first == hashlib.sha256(lines.encode()).hexdigest()
    assert weights_sha256(folder) == first
    make_tiny_model(folder, folds=(1,), seed=5)  # fold 1 changes -> hash changes
    assert weights_sha256(folder) != first


def test_load_pack_rejects_incomplete_folder(tmp_path: Path, make_tiny_model) -> None:
    folder = make_tiny_model(tmp_path / "m")
    (folder / "fold_0" / "checkpoint_final.pth").unlink()
    assert find_folds(folder) == ()
    with pytest.raises(ModelError, match="not an nnU-Net v2 model folder"):
        load_pack(folder)


def test_load_pack_rejects_bad_orientation(tmp_path: Path, make_tiny_model) -> None:
    folder = make_tiny_model(tmp_path / "m", metadata={"input_orientation": "XYZ"})
    with pytest.raises(ModelError, match="input_orientation"):
        load_pack(folder)


def test_builtin_demo_pack_if_present() -> None:
    """The real demo model (built by a colleague) loads as the 'demo' pack when present."""
    from model.packs import DEMO_PACK_DIR, is_nnunet_folder

    if not is_nnunet_folder(DEMO_PACK_DIR):
        pytest.skip("model/demo_model not built yet")
    pack = ModelStore(Path("/nonexistent-models")).resolve(None)
    assert pack.name == "demo" and pack.builtin and len(pack.labels) >= 1
