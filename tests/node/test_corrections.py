"""Radiologists' corrections, end to end on a running node.

One phantom series is processed by a node started in this process (real
listener, SQLite catalogue, worker, web server). SEGs are then sent to it
with DCMTK's storescu: a viewer's correction, another product's SEG, a
correction of a series the node never saw, the node's own SEG sent back.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_io.nifti import read_nifti
from dicom_io.scan import SeriesFiles
from dicom_io.series import read_series
from dicom_io.stitch import labels_to_station
from model.phantom import Phantom, make_grid
from model.store import ModelStore
from node.config import load_config
from node.dataset_export import ExportFilter, export_dataset, parse_day
from node.demo import write_station_phantom
from node.service import Node
from segnode_errors import ExportError
from tests.node.conftest import PhantomCase, _write_case, run_cli
from tests.node.correction_segs import (
    job_labels,
    moved_and_reshaped,
    neoplasm_template,
    segment_templates,
    write_seg,
)
from tests.peers import dcmtk_available, free_local_port, poll_until, storescu

pytestmark = pytest.mark.skipif(dcmtk_available() is not None,
                                reason=str(dcmtk_available()))

LIVER = 4  # the demo pack's liver
TUMOUR = 99  # a label value no pack has


@dataclass
class Processed:
    """A node that has processed one phantom series."""

    node: Node
    root: Path
    config: Path
    case: PhantomCase
    sources: list[Dataset]
    folder: Path
    our_seg: Dataset
    predicted: object  # hd.Volume

    def send(self, path: Path) -> None:
        # -R: propose the files' own SOP classes (storescu's default list lacks SEG).
        sent = storescu(path, "127.0.0.1", self.node.config.node.port, called_aet="SEGNODE",
                        calling_aet="VIEWER", extra_args=["-R"])
        assert sent.returncode == 0, sent.stderr

    def examined(self, sop_uid: str) -> dict:
        def row() -> dict | None:
            rows = [r for r in self.node.catalogue.list_corrections()
                    if r["sop_instance_uid"] == sop_uid and r["state"] != "examining"]
            return rows[0] if rows else None

        found = poll_until(row, timeout=60, interval=0.2)
        assert found is not None, f"SEG {sop_uid} was not examined within 60 s"
        return found

    def get(self, path: str) -> bytes:
        web = self.node.config.web
        with urllib.request.urlopen(f"http://127.0.0.1:{web.port}{path}", timeout=10) as reply:
            return reply.read()


def _config(root: Path, whole_study: bool = False) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({
        "node": {"ae_title": "SEGNODE", "host": "127.0.0.1", "port": free_local_port()},
        "callers": [{"ae_title": ae, "addresses": ["127.0.0.1"]} for ae in ("STORESCU", "VIEWER")],
        "rules": [{"name": "mr", "match": {"modality": ["MR"]}, "whole_study": whole_study}],
        "timing": {"series_quiet_s": 0.5, "study_quiet_s": 0.5, "poll_interval_s": 0.2},
        "storage": {"spool_dir": str(root / "spool"), "output_dir": str(root / "out"),
                    "quarantine_dir": str(root / "quarantine"),
                    "corrections_dir": str(root / "corrections"),
                    "models_dir": str(root / "models"), "min_free_disk_mb": 0},
        "database": {"url": f"sqlite:///{root / 'segnode.db'}"},
        "processing": {"device": "cpu", "tile_step_size": 1.0},
        "web": {"enabled": True, "host": "127.0.0.1", "port": free_local_port()},
    }))
    return path


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processed]:
    root = tmp_path_factory.mktemp("corrections")
    config = _config(root)
    node = Node(load_config(config))
    # Reversed slice order and shuffled names: SEG frames must still land on their slices.
    case = _write_case(root, "axial_reversed_shuffled", 0)
    node.start()
    try:
        sent = storescu(case.folder, "127.0.0.1", node.config.node.port, called_aet="SEGNODE")
        assert sent.returncode == 0, sent.stderr
        job = poll_until(lambda: next((j for j in node.queue.list() if j.state == "done"), None),
                         timeout=120, interval=0.2)
        assert job is not None, "the phantom series was not processed within 120 s"
        folder = Path(job.output_dir) / case.series_uid
        our_seg, predicted = job_labels(folder)
        sources = [pydicom.dcmread(p) for p in sorted(case.folder.glob("*.dcm"))]
        yield Processed(node, root, config, case, sources, folder, our_seg, predicted)
    finally:
        node.stop()


def _independent_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """HD95 by scipy's exact EDT (not SimpleITK): max of the directed 95th percentiles."""
    faces = ndimage.generate_binary_structure(3, 1)
    a, b = np.pad(a, 1), np.pad(b, 1)
    surface_a = a & ~ndimage.binary_erosion(a, faces)
    surface_b = b & ~ndimage.binary_erosion(b, faces)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return float(max(np.percentile(to_b, 95), np.percentile(to_a, 95)))


def _correction(processed: Processed, name: str, *, tumour: bool = False
                ) -> tuple[Path, Dataset, np.ndarray]:
    """The liver moved and reshaped; with ``tumour`` also a segment no label table has."""
    predicted = processed.predicted.array
    corrected = moved_and_reshaped(predicted, LIVER, shift=2, cut=2)
    templates = segment_templates(processed.our_seg, predicted)
    drawn = corrected
    if tumour:
        drawn = corrected.copy()
        k, j, i = np.argwhere(corrected == LIVER)[len(np.argwhere(corrected == LIVER)) // 2]
        drawn[k, j - 1:j + 2, i - 1:i + 2] = TUMOUR
        templates[TUMOUR] = neoplasm_template()
    path = processed.root / f"{name}.dcm"
    seg = write_seg(path, processed.predicted.with_array(drawn), processed.sources, templates)
    return path, seg, np.where(drawn == TUMOUR, 0, drawn)


@pytest.mark.timeout(300)
def test_a_viewers_correction_is_recognised_linked_scored_shown_and_exported(
        processed: Processed, tmp_path: Path) -> None:
    path, seg, corrected = _correction(processed, "corrected", tumour=True)
    processed.send(path)
    row = processed.examined(str(seg.SOPInstanceUID))
    assert row["state"] == "correction", row["reason"]
    [job] = processed.node.queue.list()
    assert row["job_id"] == job.id and row["model"] == "demo"
    assert row["source_series_uid"] == processed.case.series_uid
    assert row["modality"] == "MR" and row["corrected_structures"] == 1
    # The tumour the radiologist drew maps to no label: kept in the SEG, reported.
    assert row["unmapped"] == [{
        "segment": "segment 1 'Segment_1' (SCT 108369006 Neoplasm)",  # numbered last first
        "reason": "its type code is no structure of the label table"}]
    assert row["reason"].endswith("; 1 segment(s) map to no label")
    # Never processed as an input: still the one job, and the SEG's series says why.
    seg_series = processed.node.catalogue.get_series(str(seg.SeriesInstanceUID))
    assert seg_series["decision"].startswith("never processed: SOP class")

    metrics = {m["structure"]: m for m in processed.node.catalogue.correction_metrics(
        correction_id=row["id"])}
    predicted = processed.predicted.array
    a, b = predicted == LIVER, corrected == LIVER
    expected_dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    spacing = tuple(np.linalg.norm(processed.predicted.affine[:3, :3], axis=0))
    liver = metrics["liver"]
    assert liver["dice"] == pytest.approx(expected_dice, abs=1e-9)
    assert 0.5 < liver["dice"] < 0.99
    assert liver["hd95_mm"] == pytest.approx(_independent_hd95(a, b, spacing), abs=1e-3)
    voxel_ml = abs(np.linalg.det(processed.predicted.affine[:3, :3])) / 1000
    assert liver["corrected_volume_ml"] == pytest.approx(np.count_nonzero(b) * voxel_ml)
    unchanged = [m for name, m in metrics.items() if name != "liver"]
    assert unchanged and all(m["dice"] == 1.0 and m["hd95_mm"] == 0.0 for m in unchanged)
    assert metrics["aorta"]["connected"] is True  # the vessel metric, for vessels only
    assert metrics["spleen"]["connected"] is None

    # The quality page and its API show the pack, the structure and the case behind it.
    quality = json.loads(processed.get("/api/quality"))
    pack = next(p for p in quality["packs"] if p["model"] == "demo")
    assert pack["most_corrected"][0]["structure"] == "liver"
    liver_row = next(s for s in pack["structures"] if s["structure"] == "liver")
    assert liver_row["dice"]["median"] == pytest.approx(expected_dice, abs=1e-4)
    page = processed.get("/quality").decode()
    assert 'data-testid="row-demo-liver"' in page and "/quality/demo/liver" in page
    assert "(SCT 108369006 Neoplasm): its type code is no structure of the label table" in page
    cases = json.loads(processed.get("/api/quality/demo/liver"))
    assert [c["job_id"] for c in cases] == [job.id]

    # The training pair: the image the model saw and the corrected map, on one grid.
    out = tmp_path / "nnUNet_raw" / "Dataset501_SegnodeCorrections"
    exported = run_cli("dataset", "export", "--model", "demo", "--out", out,
                       "--config", processed.config)
    assert exported.returncode == 0, exported.stderr
    labels = read_nifti(out / "labelsTr" / "segnode_0001.nii.gz", dtype=np.uint16)
    assert np.array_equal(labels.array, corrected)
    image = read_nifti(out / "imagesTr" / "segnode_0001_0000.nii.gz")
    assert np.allclose(image.affine, labels.affine) and image.array.std() > 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MR"} and dataset["labels"]["liver"] == LIVER
    manifest = list(csv.DictReader(io.StringIO(
        (out.parent / f"{out.name}-manifest.csv").read_text())))
    assert [(m["case"], m["study_uid"]) for m in manifest] == [
        ("segnode_0001", processed.sources[0].StudyInstanceUID)]
    assert not any(processed.sources[0].StudyInstanceUID in p.name for p in out.rglob("*"))
    # Filters: modality, number of corrected structures, examination dates.
    table = ModelStore(processed.root / "models").resolve("demo").labels
    today = dt.date.today()
    for wanted in (ExportFilter("demo", modality="CT"),
                   ExportFilter("demo", min_corrected_structures=2),
                   ExportFilter("demo", since=parse_day(str(today + dt.timedelta(days=1)))),
                   ExportFilter("demo", until=parse_day(str(today - dt.timedelta(days=1)),
                                                        end=True))):
        with pytest.raises(ExportError, match="no corrected case of pack demo passes"):
            export_dataset(processed.node.catalogue, table, wanted, tmp_path / "none")
    assert export_dataset(processed.node.catalogue, table, ExportFilter(
        "demo", modality="mr", since=parse_day(str(today)), until=parse_day(str(today), end=True)),
        tmp_path / "today").cases == 1
    env = {**os.environ, "nnUNet_raw": str(out.parent),
           "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
           "nnUNet_results": str(tmp_path / "results")}
    check = subprocess.run(
        [str(Path(sys.executable).with_name("nnUNetv2_plan_and_preprocess")), "-d", "501",
         "--verify_dataset_integrity", "--no_pp", "-npfp", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]
    assert (tmp_path / "preprocessed" / out.name / "dataset_fingerprint.json").is_file()


def test_another_products_seg_of_a_processed_series_is_not_a_correction(
        processed: Processed) -> None:
    predicted = processed.predicted.array
    path = processed.root / "other-ai.dcm"
    seg = write_seg(path, processed.predicted.with_array(predicted), processed.sources,
                    segment_templates(processed.our_seg, predicted), manufacturer="Other AI",
                    algorithm_type="AUTOMATIC", algorithm_name="OrganNet")
    processed.send(path)
    row = processed.examined(str(seg.SOPInstanceUID))
    assert row["state"] == "not_correction"
    assert row["reason"] == "the automatic output of another algorithm (OrganNet)"
    assert processed.node.catalogue.correction_metrics(correction_id=row["id"]) == []


def _unseen_series(root: Path, name: str) -> tuple[list[Dataset], object]:
    """A phantom series the node never received, and a label map on its grid."""
    from dicom_io.phantom_series import write_series

    rng = np.random.default_rng(5)
    grid = make_grid("axial", (8.0, 8.0, 8.0), fov_mm=(64.0, 128.0, 128.0), rng=rng)
    image, labels = Phantom(seed=5).sample(grid, modality="MR", rng=rng)
    paths = write_series(image, root / name, modality="MR", uid_seed=f"unseen-{name}")
    return [pydicom.dcmread(p) for p in paths], labels


def test_a_seg_of_a_series_segnode_never_saw_is_not_a_correction(processed: Processed) -> None:
    sources, labels = _unseen_series(processed.root, "unseen-plain")
    templates = segment_templates(processed.our_seg, processed.predicted.array)
    array = np.where(np.isin(labels.array, list(templates)), labels.array, 0).astype(np.uint16)
    path = processed.root / "unrelated.dcm"
    seg = write_seg(path, labels.with_array(array), sources, templates, manufacturer="Other AI",
                    algorithm_type="AUTOMATIC", algorithm_name="OrganNet")
    processed.send(path)
    row = processed.examined(str(seg.SOPInstanceUID))
    assert row["state"] == "not_correction"
    assert row["reason"] == (f"references {sources[0].SeriesInstanceUID}, which segnode has "
                             "not processed")


def test_a_correction_of_a_series_segnode_never_processed_is_quarantined(
        processed: Processed) -> None:
    sources, labels = _unseen_series(processed.root, "unseen-corrected")
    templates = segment_templates(processed.our_seg, processed.predicted.array)
    array = np.where(np.isin(labels.array, list(templates)), labels.array, 0).astype(np.uint16)
    path = processed.root / "orphan-correction.dcm"
    # A viewer kept segnode's algorithm name (the pack, "demo") on edited segments.
    seg = write_seg(path, labels.with_array(array), sources, templates,
                    algorithm_type="SEMIAUTOMATIC", algorithm_name="demo")
    before = len(processed.node.catalogue.list_quarantine(100))
    processed.send(path)
    row = processed.examined(str(seg.SOPInstanceUID))
    assert row["state"] == "quarantined"
    assert row["reason"] == (f"a correction of demo output for {sources[0].SeriesInstanceUID}, "
                             "which segnode has not processed")
    quarantined = processed.node.catalogue.list_quarantine(100)
    assert len(quarantined) == before + 1 and quarantined[0]["reason"] == row["reason"]
    kept = pydicom.dcmread(quarantined[0]["path"])
    assert kept.SOPInstanceUID == seg.SOPInstanceUID and kept.PixelData == seg.PixelData


def test_a_correction_in_another_frame_of_reference_is_quarantined(
        processed: Processed) -> None:
    path, seg, _ = _correction(processed, "moved-frame")
    seg.FrameOfReferenceUID = "1.2.3.4.5"
    seg.save_as(path)
    processed.send(path)
    row = processed.examined(str(seg.SOPInstanceUID))
    assert row["state"] == "quarantined"
    assert row["reason"] == (f"correction of job {row['job_id']}: frame of reference 1.2.3.4.5 "
                             "is not the source series' "
                             f"{processed.sources[0].FrameOfReferenceUID}")


def test_a_correction_that_references_only_segnodes_seg_is_linked_through_it(
        processed: Processed) -> None:
    path, seg, _ = _correction(processed, "derived")
    reference = Dataset()
    reference.SeriesInstanceUID = processed.our_seg.SeriesInstanceUID
    instance = Dataset()
    instance.ReferencedSOPClassUID = processed.our_seg.SOPClassUID
    instance.ReferencedSOPInstanceUID = processed.our_seg.SOPInstanceUID
    reference.ReferencedInstanceSequence = [instance]
    seg.ReferencedSeriesSequence = [reference]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    seg.save_as(path)
    processed.send(path)
    row = processed.examined(str(seg.SOPInstanceUID))
    assert row["state"] == "correction", row["reason"]
    assert row["source_series_uid"] == processed.case.series_uid


def test_segnodes_own_seg_sent_back_is_not_a_correction(processed: Processed) -> None:
    processed.send(processed.folder / "seg.dcm")
    row = processed.examined(str(processed.our_seg.SOPInstanceUID))
    assert (row["state"], row["reason"]) == ("not_correction", "segnode's own output")


def test_corrections_import_takes_a_folder_of_segs(processed: Processed,
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "from-slicer"
    folder.mkdir()
    path, seg, _ = _correction(processed, "imported")
    (folder / "seg.dcm").write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "image.dcm").write_bytes(next(processed.case.folder.glob("*.dcm")).read_bytes())
    result = run_cli("corrections", "import", folder, "--config", processed.config)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"{folder / 'notes.txt'}: skipped, not a DICOM file" in lines
    assert f"{folder / 'image.dcm'}: skipped, not a DICOM-SEG" in lines
    assert any(line.startswith(f"{folder / 'seg.dcm'}: correction ") and
               " correction: correction of job " in line for line in lines), lines
    row = processed.examined(str(seg.SOPInstanceUID))
    assert row["state"] == "correction"
    listing = run_cli("corrections", "list", "--config", processed.config)
    assert listing.returncode == 0 and f"{row['id']:>5}  correction" in listing.stdout


@pytest.fixture(scope="module")
def stations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Path, Path, list]]:
    """A node that has stitched and segmented two whole-body stations."""
    root = tmp_path_factory.mktemp("station-corrections")
    config = _config(root, whole_study=True)
    # 224 mm stations overlapping by 48 mm: both on the stitched grid's slices (28 each).
    phantom = write_station_phantom(root / "stations", stations=2, overlap_mm=48.0,
                                    length_mm=400.0, spacing_mm=(8.0, 6.0, 6.0))
    node = Node(load_config(config))
    node.start()
    try:
        sent = storescu(root / "stations", "127.0.0.1", node.config.node.port,
                        called_aet="SEGNODE")
        assert sent.returncode == 0, sent.stderr
        job = poll_until(lambda: next((j for j in node.queue.list() if j.state == "done"), None),
                         timeout=120, interval=0.2)
        assert job is not None, "the stations were not processed within 120 s"
        [folder] = [p for p in Path(job.output_dir).iterdir() if p.is_dir()]
        yield node, config, folder, [f["image"] for f in phantom.folders]
    finally:
        node.stop()


def _station_correction(folder: Path, station: Path, label: int, name: str
                        ) -> tuple[Path, Dataset, np.ndarray, np.ndarray, object]:
    """Correct one station's SEG as a viewer would: ``label`` moved on that station's grid."""
    sources = [pydicom.dcmread(p) for p in sorted(station.glob("*.dcm"))]
    station_volume = read_series(SeriesFiles(str(sources[0].SeriesInstanceUID), tuple(
        sorted(station.glob("*.dcm"))))).volumes[0].volume
    stitched = read_nifti(folder / "labels.nii.gz", dtype=np.uint16)
    predicted = labels_to_station(stitched, station_volume)
    our_seg = pydicom.dcmread(folder / f"seg-{sources[0].SeriesInstanceUID}.dcm")
    corrected = moved_and_reshaped(predicted.array, label, shift=1, cut=1)
    path = folder.parent.parent / f"{name}.dcm"
    seg = write_seg(path, predicted.with_array(corrected), sources,
                    segment_templates(our_seg, predicted.array))
    return path, seg, predicted.array, corrected, station_volume


@pytest.mark.timeout(300)
def test_corrections_of_stitched_stations_score_per_station_and_merge_for_training(
        stations, tmp_path: Path) -> None:
    node, config, folder, station_folders = stations
    stitched = read_nifti(folder / "labels.nii.gz", dtype=np.uint16)
    sent = []
    for number, (station, label) in enumerate(zip(station_folders, (LIVER, 10), strict=True)):
        path, seg, predicted, corrected, volume = _station_correction(
            folder, station, label, f"station{number}")
        assert np.count_nonzero(predicted == label) > 0
        result = storescu(path, "127.0.0.1", node.config.node.port, called_aet="SEGNODE",
                          calling_aet="VIEWER", extra_args=["-R"])
        assert result.returncode == 0, result.stderr
        row = poll_until(lambda uid=str(seg.SOPInstanceUID): next(
            (r for r in node.catalogue.list_corrections()
             if r["sop_instance_uid"] == uid and r["state"] != "examining"), None),
            timeout=60, interval=0.2)
        assert row is not None and row["state"] == "correction", row
        assert row["source_series_uid"] == str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        metrics = {m["label"]: m for m in node.catalogue.correction_metrics(
            correction_id=row["id"])}
        a, b = predicted == label, corrected == label
        assert metrics[label]["dice"] == pytest.approx(
            2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))
        assert row["corrected_structures"] == 1
        sent.append((volume, corrected))
    # The training label map: the stitched prediction with both stations' regions corrected.
    out = tmp_path / "Dataset502_Stations"
    exported = run_cli("dataset", "export", "--model", "demo", "--out", out,
                       "--config", config)
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["segnode_0001.nii.gz"]
    merged = read_nifti(out / "labelsTr" / "segnode_0001.nii.gz", dtype=np.uint16)
    image = read_nifti(out / "imagesTr" / "segnode_0001_0000.nii.gz")
    assert merged.spatial_shape == stitched.spatial_shape == image.spatial_shape
    (first, first_corrected), (last, last_corrected) = sent
    assert np.array_equal(labels_to_station(merged, last).array, last_corrected)
    # Where the stations overlap the newer correction wins; elsewhere the first one stands.
    ones = last.with_array(np.ones(last.spatial_shape, dtype=np.uint8))
    overlap = labels_to_station(labels_to_station(ones, stitched), first).array > 0
    assert 0 < np.count_nonzero(overlap) < overlap.size
    on_first = labels_to_station(merged, first).array
    assert np.array_equal(on_first[~overlap], first_corrected[~overlap])
    assert not np.array_equal(merged.array, stitched.array)
