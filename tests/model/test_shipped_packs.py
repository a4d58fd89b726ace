"""The shipped packs, each through install, verify, inference, SEG and SR on stand-in weights.

Every descriptor in ``model/pack_descriptors`` is installed from stand-in
archives laid out as its publisher ships them (see :mod:`tests.model.standins`),
verified, run on a phantom series by the same pipeline ``segnode segment``
uses, and its SEG and SR are read back: each segment carries the pack's
name, type code, category, laterality modifier and region. The merge of the
two TotalSegmentator parts is checked against the parts run on their own, and
the network input of every pack has the orientation the pack declares.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from dicom_io.scan import find_series
from model.descriptors import descriptors
from model.engine import SegmentationEngine
from model.labels import LabelTable
from model.packs import ModelPack, load_pack, verify_checkpoints
from model.sctid import is_valid_sctid
from model.store import ModelStore
from node.pipeline import Pipeline
from node.runner import run_series_set
from node.settings import RunSettings
from tests.model.standins import sha256_of, write_standin_archives
from tests.model.test_orientation_at_network import _expected_network_input, _ramp_phantom
from tests.peers import write_phantom_series

NAMES = sorted(descriptors())
TISSUE, ANATOMY = "85756007", "91723000"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """Every shipped pack installed from its stand-in archives."""
    root = tmp_path_factory.mktemp("shipped")
    store = ModelStore(root / "models", demo_folder=root / "no-demo")
    for name in NAMES:
        item = descriptors()[name]
        source = write_standin_archives(item, root / "archives" / name)
        if len(item.archives) == 1:
            archive = source / item.archives[0].file
            store.install(name, from_path=archive, sha256=sha256_of(archive))
        else:
            store.install(name, from_path=source)
    return store


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_series(tmp_path_factory.mktemp("mr"), uid_seed="shipped-mr",
                                fov_mm=(64.0, 96.0, 96.0)).folder


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_series(tmp_path_factory.mktemp("ct"), modality="CT",
                                uid_seed="shipped-ct", fov_mm=(64.0, 96.0, 96.0)).folder


def _run(store: ModelStore, models: tuple[str, ...], series: Path, out: Path,
         reports: tuple[str, ...] = ()) -> list:
    settings = RunSettings(models=models, models_dir=store.root, device="cpu",
                           tile_step_size=1.0, reports=reports)
    return run_series_set(Pipeline(settings), find_series(series), out, live=False)


# -- the tables -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_label_table_codes_are_checked(name: str) -> None:
    table: LabelTable = descriptors()[name].label_table()
    colours = [s.rgb for s in table]
    assert len(set(colours)) == len(colours), "two structures share a colour"
    for s in table:
        for code in (s.type_code, s.category, s.laterality_code, s.region):
            if code is not None:
                assert code.scheme == "SCT" and is_valid_sctid(code.value), (s.name, code)
        assert s.category.value in (ANATOMY, TISSUE), s.name
        if s.category.value == TISSUE:
            assert "fat" in s.name, s.name  # only fat depots are tissue classes
        words = set(s.name.split("_"))
        assert s.laterality == ("left" if "left" in words else "right" if "right" in words
                                else s.laterality), s.name
    by_name = {s.name: s for s in table}
    pairs = [(s, by_name[s.name.replace("left", "right")]) for s in table
             if "left" in s.name.split("_") and s.name.replace("left", "right") in by_name]
    assert pairs or name.startswith(("mrannotator-abdomen", "mrannotator-pelvis",
                                     "mrannotator-spine"))
    for left, right in pairs:
        assert left.type_code == right.type_code and left.category == right.category
        assert (left.laterality_code.value, right.laterality_code.value) == ("7771000",
                                                                             "24028007")


def test_no_descriptor_uses_body_structure_as_category() -> None:
    """123037004 is "Body structure", the wrong category both TS and MRSegmentator write."""
    for item in descriptors().values():
        assert all(s.category.value != "123037004" for s in item.label_table())


# -- install and verify ---------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_installed_pack_matches_its_descriptor(store: ModelStore, name: str) -> None:
    item = descriptors()[name]
    pack = store.resolve(name)
    assert [m.id for m in pack.models] == [m.id for m in item.models]
    assert [(s.index, s.name, s.type_code, s.laterality, s.region) for s in pack.labels] == [
        (s.index, s.name, s.type_code, s.laterality, s.region) for s in item.label_table()]
    assert pack.input_orientation == item.input_orientation
    assert pack.licence == item.licence and pack.modalities == item.modalities
    assert pack.defaults["cpu"].folds == item.settings.cpu.folds
    assert verify_checkpoints(pack) == []
    meta = json.loads((pack.folder / "segnode.json").read_text())
    assert set(meta["archives"]) == {a.file for a in item.archives}


# -- inference, SEG and SR ------------------------------------------------------


def _assert_segments_carry_the_packs_codes(seg: pydicom.Dataset, pack: ModelPack) -> None:
    assert seg.SegmentSequence, "the stand-in found nothing"
    for item in seg.SegmentSequence:
        structure = pack.labels.by_name(item.TrackingID)
        assert item.SegmentLabel == structure.label
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodeMeaning) == (structure.type_code.value,
                                                      structure.type_code.meaning)
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == structure.category.value
        modifiers = [m.CodeValue for m in prop.get("SegmentedPropertyTypeModifierCodeSequence",
                                                   [])]
        expected = [structure.laterality_code.value] if structure.laterality_code else []
        assert modifiers == expected, structure.name
        regions = [r.CodeValue for r in item.get("AnatomicRegionSequence", [])]
        assert regions == ([structure.region.value] if structure.region else []), structure.name
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == pack.name and algorithm.AlgorithmVersion == pack.version


@pytest.mark.parametrize("name", NAMES)
def test_pack_segments_a_phantom_into_coded_seg_and_sr(store: ModelStore, mr_series: Path,
                                                       tmp_path: Path, name: str) -> None:
    results = _run(store, (name,), mr_series, tmp_path)
    assert [r.status for r in results] == ["done"], results
    folder = results[0].folder
    pack = store.resolve(name)
    seg = pydicom.dcmread(folder / "seg.dcm")
    _assert_segments_carry_the_packs_codes(seg, pack)
    sr = hd.sr.srread(folder / "sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(seg.SegmentSequence)
    for group in groups:
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    with (folder / "volumes.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows} == {name}


def test_several_packs_one_seg_each_and_one_sr(store: ModelStore, mr_series: Path,
                                               tmp_path: Path) -> None:
    packs = ("mrsegmentator", "mrsegmentator-bodycomp")
    results = _run(store, packs, mr_series, tmp_path, reports=("pdf", "sc"))
    folder = results[0].folder
    assert sorted(p.name for p in folder.glob("*.dcm")) == [
        "preview-sc-mrsegmentator-bodycomp.dcm", "preview-sc-mrsegmentator.dcm",
        "report.dcm", "seg-mrsegmentator-bodycomp.dcm", "seg-mrsegmentator.dcm", "sr.dcm"]
    assert sorted(p.name for p in folder.glob("preview*.png")) == [
        "preview-mrsegmentator-bodycomp.png", "preview-mrsegmentator.png"]
    pdf = pydicom.dcmread(folder / "report.dcm")
    assert pdf.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert pdf.StudyInstanceUID == pydicom.dcmread(next(mr_series.iterdir())).StudyInstanceUID
    assert sorted(p.name for p in folder.glob("labels*.nii.gz")) == [
        "labels-mrsegmentator-bodycomp.nii.gz", "labels-mrsegmentator.nii.gz"]
    segs = {}
    for name in packs:
        segs[name] = pydicom.dcmread(folder / f"seg-{name}.dcm")
        _assert_segments_carry_the_packs_codes(segs[name], store.resolve(name))
    assert segs[packs[0]].SeriesInstanceUID != segs[packs[1]].SeriesInstanceUID
    sr = hd.sr.srread(folder / "sr.dcm")
    referenced = [g.referenced_segment.referenced_sop_instance_uid
                  for g in sr.content.get_volumetric_roi_measurement_groups()]
    assert referenced == ([segs[packs[0]].SOPInstanceUID] * len(segs[packs[0]].SegmentSequence)
                          + [segs[packs[1]].SOPInstanceUID] * len(segs[packs[1]].SegmentSequence))
    assert sr.SeriesDescription == "mrsegmentator+mrsegmentator-bodycomp volumetry"
    table = json.loads((folder / "volumes.json").read_text())
    assert {r["model"] for r in table["structures"]} == set(packs)
    assert [p["name"] for p in table["model"]["packs"]] == list(packs)


def test_pack_not_meant_for_the_modality_is_skipped(store: ModelStore, ct_series: Path,
                                                    tmp_path: Path) -> None:
    results = _run(store, ("mrsegmentator", "mrsegmentator-bodycomp"), ct_series, tmp_path)
    folder = results[0].folder
    assert sorted(p.name for p in folder.glob("*.dcm")) == ["seg-mrsegmentator.dcm", "sr.dcm"]
    table = json.loads((folder / "volumes.json").read_text())
    assert table["skipped_models"] == [{"model": "mrsegmentator-bodycomp",
                                        "reason": "meant for MR, not CT"}]
    only_mr = _run(store, ("totalseg-mr-fast",), ct_series, tmp_path / "mr-only")
    assert [r.status for r in only_mr] == ["failed"]
    assert "totalseg-mr-fast is meant for MR, not CT" in only_mr[0].reason


# -- merging and orientation ------------------------------------------------------


def test_totalsegmentator_parts_merge_as_totalsegmentator_does(store: ModelStore,
                                                               tmp_path: Path) -> None:
    """Muscles (values + 29) overwrite organs wherever the muscles part found something."""
    pack = store.resolve("totalseg-mr")
    image = _ramp_phantom("oblique")
    merged = SegmentationEngine(pack, device="cpu", tile_step_size=1.0).segment(image).array
    parts = []
    for model in pack.models:
        alone = shutil.copytree(model.folder, tmp_path / model.id)
        (alone / "segnode.json").write_text(json.dumps({"input_orientation": "RAS"}))
        parts.append(SegmentationEngine(load_pack(alone), device="cpu",
                                        tile_step_size=1.0).segment(image).array)
    organs, muscles = parts
    assert muscles.any() and (organs.astype(bool) & (muscles == 0)).any(), "merge not exercised"
    expected = organs.copy()
    expected[muscles != 0] = muscles[muscles != 0] + 29
    assert np.array_equal(merged, expected)
    assert merged.max() <= 50


@pytest.mark.parametrize("grid", ["oblique", "coronal"])
@pytest.mark.parametrize("name", NAMES)
def test_network_input_has_the_declared_orientation(store: ModelStore, name: str,
                                                    grid: str) -> None:
    pack = store.resolve(name)
    engine = SegmentationEngine(pack, device="cpu", tile_step_size=1.0)
    image = _ramp_phantom(grid)
    seen: dict[str, torch.Tensor] = {}
    handles = [runner.predictor.networks[0].register_forward_pre_hook(
        lambda _m, args, model=runner.model.id: seen.setdefault(model, args[0].detach().clone()))
        for runner in engine._runners]
    try:
        engine.segment(image)
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(seen) == sorted(m.id for m in pack.models)
    expected = _expected_network_input(image, descriptors()[name].input_orientation)
    for received in seen.values():
        np.testing.assert_allclose(received.cpu().numpy()[0, 0], expected, atol=1e-4)
