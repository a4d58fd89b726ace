"""NIfTI read/write: world positions survive the RAS <-> LPS and index-order change."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest

from dicom_io.nifti import read_nifti, write_label_nifti
from segnode_errors import ExportError, InputRejected


def _oblique_affine() -> np.ndarray:
    """Oblique, anisotropic affine (k, j, i) -> LPS with orthogonal columns."""
    rotation, _ = np.linalg.qr(np.array([[0.2, 0.9, 0.1], [0.8, -0.1, 0.3], [0.3, 0.2, -0.9]]))
    affine = np.eye(4)
    affine[:3, :3] = rotation * [2.9, 0.8, 0.9]
    affine[:3, 3] = [-50.0, 20.0, 100.0]
    return affine


AFFINE = _oblique_affine()


def _labels(max_label: int = 7) -> hd.Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(0, max_label + 1, size=(4, 5, 6)).astype(np.int32)
    return hd.Volume(array, AFFINE, coordinate_system="PATIENT")


def test_written_voxels_keep_their_world_position(tmp_path):
    labels = _labels()
    path = write_label_nifti(labels, tmp_path / "labels.nii.gz")
    image = nib.load(path)
    assert image.get_data_dtype() == np.uint8
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
    data = np.asarray(image.dataobj)
    for k, j, i in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        lps = (AFFINE @ [k, j, i, 1])[:3]
        ras = (image.affine @ [i, j, k, 1])[:3]
        np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-4)
        assert data[i, j, k] == labels.array[k, j, i]


def test_round_trip_through_read_nifti(tmp_path):
    labels = _labels(300)
    path = write_label_nifti(labels, tmp_path / "labels.nii")
    assert nib.load(path).get_data_dtype() == np.uint16
    back = read_nifti(path)
    np.testing.assert_array_equal(back.array, labels.array)
    np.testing.assert_allclose(back.affine, AFFINE, atol=1e-4)


@pytest.mark.parametrize("bad", [-1, 70000])
def test_out_of_range_labels_are_refused(tmp_path, bad):
    labels = _labels()
    array = labels.array.copy()
    array[0, 0, 0] = bad
    with pytest.raises(ExportError, match="0..65535"):
        write_label_nifti(labels.with_array(array), tmp_path / "x.nii.gz")


def test_read_nifti_applies_scaling_and_drops_singleton_time(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4, 1)
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    ras[:3, 3] = [10, 20, 30]
    image = nib.Nifti1Image(data, ras)
    image.header.set_slope_inter(0.5, -1)
    nib.save(image, tmp_path / "t.nii.gz")
    volume = read_nifti(tmp_path / "t.nii.gz")
    assert volume.array.shape == (4, 3, 2) and volume.array.dtype == np.float32
    assert volume.array[3, 2, 1] == data[1, 2, 3, 0] * 0.5 - 1
    # voxel (i=1, j=2, k=3) is at RAS (12, 26, 42) = LPS (-12, -26, 42)
    np.testing.assert_allclose(volume.affine @ [3, 2, 1, 1], [-12, -26, 42, 1])


def test_read_nifti_refuses_4d_and_garbage(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.int16), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(InputRejected, match="expected a 3D image"):
        read_nifti(tmp_path / "4d.nii")
    (tmp_path / "bad.nii").write_bytes(b"nope")
    with pytest.raises(InputRejected, match="not a readable NIfTI"):
        read_nifti(tmp_path / "bad.nii")
