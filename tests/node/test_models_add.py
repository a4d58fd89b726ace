"""``segnode models add``: a site's own nnU-Net model with its own codes, through the CLI."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml

from model.store import ModelStore
from segnode_errors import ModelError
from tests.model.conftest import write_tiny_model
from tests.node.conftest import run_cli
from tests.peers import write_phantom_series

LABELS = {"background": 0, "liver": 1, "left_kidney": 2, "right_kidney": 3, "fat": 4}
GOOD = {"labels": {
    1: {"name": "liver", "code": "10200004", "meaning": "Liver", "colour": [221, 130, 101]},
    2: {"name": "left_kidney", "code": "64033007", "meaning": "Kidney", "laterality": "left",
        "colour": [185, 102, 83]},
    3: {"name": "right_kidney", "code": "64033007", "meaning": "Kidney",
        "laterality": "right", "colour": [120, 60, 50]},
    4: {"name": "fat", "code": "55603005", "meaning": "Fat", "colour": [230, 220, 120],
        "category": {"code": "85756007", "meaning": "Tissue"}},
}}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("own") / "Dataset501_Own", labels=LABELS)


def _labels(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "labels.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_add_then_segment_writes_the_sites_codes(model_folder: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    added = run_cli("models", "--models-dir", models, "add", "own", "--nnunet-folder",
                    model_folder, "--labels", _labels(tmp_path, GOOD))
    assert added.returncode == 0, added.stderr[-2000:]
    assert "added own (4 labels)" in added.stdout
    assert run_cli("models", "--models-dir", models, "verify", "own").returncode == 0
    series = write_phantom_series(tmp_path / "in", fov_mm=(120.0, 160.0, 160.0))
    result = run_cli("segment", series.folder, "--out", tmp_path / "out", "--model", "own",
                     "--models-dir", models, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    seg_path = tmp_path / "out" / series.series_uid / "seg.dcm"
    assert seg_path.is_file(), result.stdout
    seg = pydicom.dcmread(seg_path)
    assert seg.SegmentSequence, "the tiny model found nothing to write"
    for item in seg.SegmentSequence:
        label = next(v for v in GOOD["labels"].values()
                     if v["name"].replace("_", " ").capitalize() == item.SegmentLabel)
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodeMeaning) == (label["code"], label["meaning"])
        category = item.SegmentedPropertyCategoryCodeSequence[0].CodeValue
        assert category == label.get("category", {}).get("code", "91723000")
        if "laterality" in label:
            modifier = prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
            assert modifier.lower() == label["laterality"]


@pytest.mark.parametrize("change, words", [
    (lambda d: d["labels"][1].update(code="10200005"),
     "label 1: code '10200005' is not a valid SNOMED CT concept identifier"),
    (lambda d: d["labels"].pop(4), "missing: [4]"),
    (lambda d: d["labels"][3].update(colour=[185, 102, 83]), "share the colour"),
    (lambda d: d["labels"][3].update(code="10200004", meaning="Liver"),
     "must share their code and differ only in laterality"),
    (lambda d: d["labels"][2].update(laterality="both"), "'laterality' must be left, right"),
    (lambda d: d["labels"][2].update(color=[1, 2, 3]), "unknown key(s) color"),
], ids=["bad code", "missing label", "shared colour", "left/right codes", "laterality",
        "unknown key"])
def test_bad_label_files_are_refused_and_nothing_is_installed(
    model_folder: Path, tmp_path: Path, change, words: str,
) -> None:
    document = yaml.safe_load(yaml.safe_dump(GOOD))
    change(document)
    labels = _labels(tmp_path, document)
    models = tmp_path / "models"
    with pytest.raises(ModelError) as raised:
        ModelStore(models).add("own", model_folder, labels)
    assert words in str(raised.value) and str(labels) in str(raised.value)
    assert not (models / "own").exists()


def test_a_bad_label_file_stops_the_cli_with_its_reason(model_folder: Path,
                                                        tmp_path: Path) -> None:
    document = yaml.safe_load(yaml.safe_dump(GOOD))
    document["labels"][1]["code"] = "10200005"
    labels = _labels(tmp_path, document)
    result = run_cli("models", "--models-dir", tmp_path / "models", "add", "own",
                     "--nnunet-folder", model_folder, "--labels", labels)
    assert result.returncode == 2
    assert "code '10200005' is not a valid SNOMED CT concept identifier" in result.stderr
    assert "Traceback" not in result.stderr
