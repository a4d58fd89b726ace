"""Conformance with established converters on real scanner data (../shared/data).

Each volume we read is compared voxel by voxel with the peer's NIfTI in world
coordinates: every voxel centre of ours is mapped to patient LPS with our
affine, then into the reference's index space with the inverse of its affine
(RAS converted to LPS by :func:`dicom_io.nifti.read_nifti`); it must land on a
reference voxel centre (within 0.01 voxel) whose value equals ours.

Value tolerances: references stored as integers (int16/uint16, the stored
values) must match exactly; dicom2nifti writes Philips enhanced MR as float32
after applying RescaleSlope/Intercept, so there we allow float32 rounding
(1e-5 relative to the largest value; the observed difference is 0).
Geometry tolerance: 1e-3 mm, well above the float32 rounding of NIfTI's sform
(about 1e-5 mm at 200 mm) and far below a voxel.
"""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest

from dicom_io.nifti import read_nifti
from dicom_io.scan import SeriesFiles, find_series
from dicom_io.series import read_series

pytestmark = pytest.mark.realdata


def _shared_data_dir() -> Path | None:
    """Same lookup as the ``shared_data`` fixture, needed at collection time."""
    env = os.environ.get("SEGNODE_SHARED_DATA")
    repo = Path(__file__).resolve().parents[2]
    candidate = Path(env) if env else (repo / ".." / "shared" / "data").resolve()
    return candidate if candidate.is_dir() else None


_DATA = _shared_data_dir()
_D2N = None if _DATA is None else _DATA / "dicom2nifti"
GEOMETRY_ATOL_MM = 1e-3


def _cases() -> list[str]:
    if _D2N is None:
        return ["<absent>"]
    found = sorted(p for p in _D2N.rglob("*_ground_truth.nii.gz") if "failing" not in p.parts)
    return [str(p.relative_to(_D2N)).removesuffix("_ground_truth.nii.gz") for p in found]


def _read_one(folder: Path):
    (files,) = find_series(folder)
    return read_series(files)


def world_mismatch(ours: hd.Volume, ref: hd.Volume) -> tuple[float, float]:
    """(max index misfit in voxels, max abs value difference) in world coordinates."""
    k, j, i = np.indices(ours.spatial_shape).reshape(3, -1)
    world = ours.affine @ np.stack([k, j, i, np.ones_like(k)])
    ref_index = (np.linalg.inv(ref.affine) @ world)[:3]
    nearest = np.rint(ref_index).astype(int)
    misfit = float(np.abs(ref_index - nearest).max())
    inside = np.all((nearest >= 0) & (nearest < np.array(ref.spatial_shape)[:, None]), axis=0)
    assert inside.all(), "our voxels fall outside the reference grid"
    ref_values = ref.array[tuple(nearest)].astype(np.float64)
    ours_values = ours.array.reshape(-1).astype(np.float64)
    return misfit, float(np.abs(ours_values - ref_values).max())


def _assert_same_grid(ours: hd.Volume, ref: hd.Volume) -> float:
    """Same grid up to axis order/flips; returns the max affine difference in mm."""
    assert sorted(ours.spatial_shape) == sorted(ref.spatial_shape)
    a, b = ours.to_patient_orientation("LPS"), ref.to_patient_orientation("LPS")
    assert a.spatial_shape == b.spatial_shape
    diff = float(np.abs(a.affine - b.affine).max())
    assert diff < GEOMETRY_ATOL_MM
    return diff


@pytest.mark.parametrize("case", _cases())
def test_dicom2nifti_cases_match_ground_truth(shared_data, case):
    folder = shared_data / "dicom2nifti" / case
    result = _read_one(folder)
    if case.startswith("generic/rgb"):
        assert result.volumes == []
        assert all("colour image (PhotometricInterpretation RGB" in r.reason
                   for r in result.rejected)
        return
    assert result.rejected == []
    (sv,) = result.volumes
    ref = read_nifti(folder.parent / f"{folder.name}_ground_truth.nii.gz")
    _assert_same_grid(sv.volume, ref)
    misfit, value_diff = world_mismatch(sv.volume, ref)
    assert misfit < 0.01
    on_disk = nib.load(folder.parent / f"{folder.name}_ground_truth.nii.gz").get_data_dtype()
    if np.issubdtype(on_disk, np.integer):
        assert value_diff == 0
    else:  # float32 written after rescale: allow float32 rounding
        assert value_diff <= 1e-5 * max(1.0, float(np.abs(ref.array).max()))


FAILING = {
    "sliceincrement/001": "uneven slice spacing: gaps range 5.000 to 10.000 mm",
    "sliceincrement/002": "uneven slice spacing: gaps range 0.750 to 1.499 mm",
    "slicecount/001": "only 2 slices; a volume needs at least 3",
    "notavolume/001": "not a volume: all 4 images lie at the same position",
}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_dicom2nifti_failing_cases_are_refused(shared_data, case):
    result = _read_one(shared_data / "dicom2nifti" / "failing" / case)
    assert result.volumes == []
    (rejection,) = result.rejected
    assert FAILING[case] in rejection.reason
    assert rejection.key in rejection.reason and len(rejection.paths) >= 2


def test_gantry_tilt_is_resampled_to_an_orthogonal_grid(shared_data):
    """dicom2nifti refuses this CT (14 deg tilt); we resample (documented choice)."""
    result = _read_one(shared_data / "dicom2nifti" / "failing" / "gantrytilting" / "001")
    (sv,) = result.volumes
    volume = sv.volume
    orientation = np.array(sv.source[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    step = volume.affine[:3, 0]
    assert abs(np.dot(step / np.linalg.norm(step), normal)) == pytest.approx(1.0, abs=1e-9)
    # 5 mm table increment seen along a normal tilted by 14 deg
    assert np.linalg.norm(step) == pytest.approx(5.0 * np.cos(np.radians(14.0)), abs=0.01)
    np.testing.assert_allclose(volume.affine[:3, 3], sv.source[0].ImagePositionPatient)
    assert volume.array.min() >= -1024 and volume.array.max() > -1000


def test_dcm_qa_ts_nine_transfer_syntaxes_equal_reference(shared_data):
    folder = shared_data / "dcm_qa_ts"
    arrays = []
    for n in range(1, 10):
        result = read_series(SeriesFiles("dcm_qa_ts", (folder / "In" / f"{n}.dcm",)))
        (sv,) = result.volumes
        assert sv.layout == "mosaic" and sv.volume.spatial_shape == (35, 64, 64)
        ref = read_nifti(folder / "Ref" / f"{n}.nii")
        _assert_same_grid(sv.volume, ref)
        misfit, value_diff = world_mismatch(sv.volume, ref)
        assert misfit < 0.01 and value_diff == 0
        arrays.append(sv.volume.array)
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])


# TotalSegmentator v2 "total" CT label map: 1 spleen, 5 liver
SPLEEN, LIVER = 1, 5


def test_totalsegmentator_ct_lines_up_with_its_segmentation(shared_data):
    folder = shared_data / "totalsegmentator"
    (sv,) = _read_one(folder / "example_ct_dicom").volumes
    seg = read_nifti(folder / "example_seg_dicom.nii.gz")
    assert len(np.unique(seg.array)) - 1 == 31
    _assert_same_grid(sv.volume, seg)
    ct = sv.volume.to_patient_orientation("LPS").array
    labels = seg.to_patient_orientation("LPS").array
    assert np.mean(ct[labels == LIVER]) == pytest.approx(89, abs=3)
    assert np.mean(ct[labels == SPLEEN]) == pytest.approx(80, abs=3)
    # the check has teeth: the same labels on row-flipped CT give nothing organ-like
    assert np.mean(ct[:, ::-1][labels == LIVER]) < 0
