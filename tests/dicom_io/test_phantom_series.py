"""dicom_io.phantom_series: phantom volumes written as MR/CT series and read back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_io.phantom_series import write_series

DCIODVFY = shutil.which("dciodvfy")


def _volume(orientation: str = "axial", *, reversed_slices: bool = False, ct: bool = False):
    """A small synthetic volume with a recognisable gradient, on a phantom-like grid."""
    from model.phantom import make_grid

    grid = make_grid(orientation, (7.0, 9.0, 8.0), reversed_slices=reversed_slices,
                     fov_mm=(70.0, 90.0, 120.0), rng=np.random.default_rng(2))
    k, j, i = np.indices(grid.shape, dtype=np.float32)
    values = 10 * k + 3 * j + i + (-1000.0 if ct else 100.0)
    return grid.volume(values.astype(np.float32))


def _read(paths: list[Path]) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in paths]
    return sorted(datasets, key=lambda ds: int(ds.InstanceNumber))


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal", "oblique"])
@pytest.mark.parametrize("reversed_slices", [False, True])
def test_geometry_matches_affine(tmp_path: Path, orientation: str, reversed_slices: bool) -> None:
    volume = _volume(orientation, reversed_slices=reversed_slices)
    paths = write_series(volume, tmp_path, modality="MR", uid_seed="geom",
                         shuffle_names=True, rng=np.random.default_rng(0))
    datasets = _read(paths)
    assert [p.name for p in paths] != sorted(p.name for p in paths) or len(paths) < 3
    affine = volume.affine
    for k, ds in enumerate(datasets):
        np.testing.assert_allclose(ds.ImagePositionPatient, (affine @ [k, 0, 0, 1])[:3], atol=1e-4)
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3]), ds.ImageOrientationPatient[3:]
        np.testing.assert_allclose(row_dir * ds.PixelSpacing[1], affine[:3, 2], atol=1e-5)
        np.testing.assert_allclose(np.array(col_dir) * ds.PixelSpacing[0], affine[:3, 1], atol=1e-5)
        np.testing.assert_array_equal(ds.pixel_array, np.round(volume.array[k]).astype(np.uint16))
    # highdicom rebuilds the same grid from the files (up to slice order)
    read = hd.get_volume_from_series(datasets)
    matched = read.match_orientation(volume)
    np.testing.assert_allclose(matched.affine, affine, atol=1e-4)
    np.testing.assert_allclose(matched.array, np.round(volume.array), atol=1e-3)


def test_ct_rescale_round_trip(tmp_path: Path) -> None:
    volume = _volume(ct=True)
    paths = write_series(volume, tmp_path, modality="CT", rescale=(1.0, -1024.0), uid_seed="ct")
    for k, ds in enumerate(_read(paths)):
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert ds.pixel_array.dtype == np.uint16
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(hu, volume.array[k], atol=0.5)


def test_ct_negative_stored_values_are_signed(tmp_path: Path) -> None:
    volume = _volume(ct=True)
    paths = write_series(volume, tmp_path, modality="CT", rescale=(0.5, 0.0), uid_seed="signed")
    ds = pydicom.dcmread(paths[0])
    assert ds.PixelRepresentation == 1
    np.testing.assert_allclose(ds.pixel_array * 0.5, volume.array[0], atol=0.25)


def test_uids_are_deterministic_with_a_seed(tmp_path: Path) -> None:
    volume = _volume()
    a = _read(write_series(volume, tmp_path / "a", uid_seed="same"))
    b = _read(write_series(volume, tmp_path / "b", uid_seed="same"))
    c = _read(write_series(volume, tmp_path / "c", uid_seed="other"))
    assert [x.SOPInstanceUID for x in a] == [x.SOPInstanceUID for x in b]
    assert a[0].StudyInstanceUID == b[0].StudyInstanceUID != c[0].StudyInstanceUID
    assert len({x.SOPInstanceUID for x in a}) == len(a)
    assert a[0].SeriesInstanceUID != a[0].StudyInstanceUID


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modality"):
        write_series(_volume(), tmp_path, modality="US")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rescale"):
        write_series(_volume(), tmp_path, modality="MR", rescale=(1.0, 0.0))


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (Debian package dicom3tools)")
@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_dciodvfy_reports_no_errors(tmp_path: Path, modality: str) -> None:
    volume = _volume("oblique", ct=modality == "CT")
    paths = write_series(volume, tmp_path, modality=modality, uid_seed="vfy")
    for path in (paths[0], paths[-1]):
        result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, report
