"""``segnode segment`` on whole-body station series: stitched once, one SEG per station, one SR.

The phantom is written as overlapping axial stations with their own
intensity factors (node.demo.write_station_phantom), and once more as a
single series covering the same body, so the stitched result can be compared
with the unsplit one segmented by the same model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_io.phantom_series import write_series
from dicom_io.scan import find_series
from dicom_io.seg import read_seg_labels
from dicom_io.series import read_series
from dicom_io.sr import STATION_GAP
from dicom_io.stitch import labels_to_station
from model.phantom import make_grid
from node.demo import StationPhantom, write_station_phantom
from tests.node.conftest import run_cli

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Run:
    """One ``segnode segment`` run and its outputs."""

    out: Path
    stderr: str
    folders: list[Path]

    def only_folder(self) -> Path:
        assert len(self.folders) == 1, [f.name for f in self.folders]
        return self.folders[0]


def _segment(root: Path, input_folder: Path, *extra: str) -> Run:
    out = root / f"out-{input_folder.name}{''.join(extra)}"
    result = run_cli("segment", input_folder, "--out", out, "--device", "cpu",
                     "--models-dir", root / "models", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return Run(out, result.stderr, sorted(p for p in out.iterdir() if p.is_dir()))


def _table(folder: Path) -> dict:
    return json.loads((folder / "volumes.json").read_text())


def _volumes(folder: Path) -> dict[str, float]:
    return {row["structure"]: row["volume_ml"] for row in _table(folder)["structures"]}


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StationPhantom, Run, Run]:
    """Four stations (own intensity factors) and the same body as one series, both segmented."""
    root = tmp_path_factory.mktemp("stations")
    phantom = write_station_phantom(root / "stations", stations=4, overlap_mm=30.0,
                                    scales=(1.0, 0.6, 1.5, 0.8))
    grid = make_grid("axial", (4.0, 3.0, 3.0), fov_mm=(600.0, 300.0, 400.0))
    image, _ = phantom.phantom.sample(grid, modality="MR", rng=np.random.default_rng(11))
    write_series(image, root / "unsplit" / "series", modality="MR", uid_seed="unsplit-body",
                 series_description="t1_vibe_dixon_tra")
    stitched = _segment(root, root / "stations")
    unsplit = _segment(root, root / "unsplit")
    return root, phantom, stitched, unsplit


def test_stations_give_one_folder_with_a_seg_per_station_and_one_sr(body) -> None:
    _, phantom, stitched, _ = body
    folder = stitched.only_folder()
    assert folder.name.startswith(phantom.study_uid + ".stations-")
    segs = sorted(folder.glob("seg-*.dcm"))
    assert len(segs) == 4 and (folder / "sr.dcm").is_file()
    sr = pydicom.dcmread(folder / "sr.dcm")
    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in segs} <= evidence
    table = _table(folder)
    assert len(table["stations"]) == 4 and all(s["segmented"] for s in table["stations"])
    assert not [f for f in table["qc_flags"] if f["code"] == "station_gap"]
    # Stations are matched to the first in stacking order: the feet (factor 0.8).
    expected = sorted(phantom.scales[-1] / factor for factor in phantom.scales)
    assert sorted(table["intensity_scales"].values()) == pytest.approx(expected, rel=0.03)


def test_volumes_match_the_unsplit_body(body) -> None:
    """Volumes are measured once on the stitched grid: no double counting in the overlaps.

    Every structure agrees with the same body segmented as one series within
    1 % (measured here: at most 0.9 %, stomach and aorta; the run is
    deterministic on the CPU).
    """
    _, _, stitched, unsplit = body
    split, whole = _volumes(stitched.only_folder()), _volumes(unsplit.only_folder())
    assert set(split) == set(whole)
    for name, volume in whole.items():
        assert split[name] == pytest.approx(volume, rel=0.01), name


def test_each_station_seg_lands_on_its_own_slices(body) -> None:
    root, _, stitched, _ = body
    folder = stitched.only_folder()
    nifti = nib.load(folder / "labels.nii.gz")
    from dicom_io.nifti import read_nifti

    labels = read_nifti(folder / "labels.nii.gz", dtype=np.uint16)
    assert labels.spatial_shape == tuple(nifti.shape[::-1])
    for files in find_series(root / "stations"):
        (station,) = read_series(files).volumes
        seg = pydicom.dcmread(folder / f"seg-{station.key}.dcm")
        from_seg = read_seg_labels(seg, station.source)
        expected = labels_to_station(labels, station.volume)
        # Segment numbers count the labels present in this SEG, in label order.
        present = sorted(int(v) for v in np.unique(expected.array) if v)
        renumbered = np.zeros_like(expected.array)
        for number, label in enumerate(present, start=1):
            renumbered[expected.array == label] = number
        assert np.array_equal(from_seg.array, renumbered), station.key
        assert np.allclose(from_seg.affine, station.volume.affine, atol=1e-3)


def test_dixon_stations_are_segmented_once_with_four_segs_per_station(tmp_path: Path) -> None:
    # 8 x 6 x 6 mm over 400 mm: five runs of the demo model, each a few patches.
    write_station_phantom(tmp_path / "dixon", stations=3, overlap_mm=40.0, dixon=True,
                          length_mm=400.0, spacing_mm=(8.0, 6.0, 6.0))
    run = _segment(tmp_path, tmp_path / "dixon")
    folder = run.only_folder()
    assert len(list(folder.glob("seg-*.dcm"))) == 12
    assert len(list(folder.glob("sr.dcm"))) == 1
    stations = _table(folder)["stations"]
    assert sorted({s["contrast"] for s in stations}) == ["fat", "in", "opp", "water"]
    assert {s["contrast"] for s in stations if s["segmented"]} == {"opp"}
    assert run.stderr.count("Built volumetry SR") == 1
    each = _segment(tmp_path, tmp_path / "dixon", "--each-contrast", "--write-stitched")
    assert sorted(f.name.rsplit(".", 1)[1] for f in each.folders) == [
        "fat", "in", "opp", "water"]
    assert all(len(list(f.glob("seg-*.dcm"))) == 3 and (f / "stitched.nii.gz").is_file()
               for f in each.folders)


def test_missing_middle_station_is_processed_and_flagged(tmp_path: Path) -> None:
    slice_mm = 8.0
    phantom = write_station_phantom(tmp_path / "gap", stations=4, overlap_mm=30.0, skip=(1,),
                                    spacing_mm=(slice_mm, 6.0, 6.0))
    run = _segment(tmp_path, tmp_path / "gap")
    folder = run.only_folder()
    assert len(list(folder.glob("seg-*.dcm"))) == 3
    (flag,) = [f for f in _table(folder)["qc_flags"] if f["code"] == "station_gap"]
    neighbours = [str(pydicom.dcmread(next(phantom.folders[n]["image"].iterdir()),
                                      stop_before_pixels=True).SeriesInstanceUID)
                  for n in (0, 2)]
    assert sorted(flag["between"]) == sorted(neighbours)
    gap_mm = float(flag["message"].split("gap of ")[1].split(" mm")[0])
    station_mm = phantom.grids[1].shape[0] * slice_mm
    assert gap_mm == pytest.approx(station_mm - 2 * 30.0, abs=slice_mm)
    assert "gap of" in run.stderr
    sr = pydicom.dcmread(folder / "sr.dcm")
    codes = {item.ConceptCodeSequence[0].CodeValue
             for item in _walk(sr) if "ConceptCodeSequence" in item}
    assert STATION_GAP[0] in codes


def test_no_stations_option_segments_each_series(body, tmp_path: Path) -> None:
    root, _, _, _ = body
    source = tmp_path / "two"
    for name in ("station1", "station2"):
        shutil.copytree(root / "stations" / name, source / name)
    run = _segment(tmp_path, source, "--no-stations")
    assert len(run.folders) == 2
    assert all((f / "seg.dcm").is_file() for f in run.folders)


def _walk(dataset: pydicom.Dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _walk(item)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_station_seg_and_multi_seg_sr_pass_dciodvfy(body) -> None:
    _, _, stitched, _ = body
    folder = stitched.only_folder()
    for path in (next(folder.glob("seg-*.dcm")), folder / "sr.dcm"):
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                                 check=False)
        errors = [line for line in checked.stderr.splitlines() if line.startswith("Error")]
        assert not errors, (path.name, errors)
