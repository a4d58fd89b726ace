"""Volumetry: volumes from the true voxel size, means by label, edge flags."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from model.volumetry import measure

NAMES = {1: "liver", 2: "spleen", 3: "left_kidney"}


def _affine(slice_step=3.0, row=0.8, col=0.7, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, 0] = rot @ [0, 0, slice_step]
    affine[:3, 1] = rot @ [0, row, 0]
    affine[:3, 2] = rot @ [col, 0, 0]
    affine[:3, 3] = [-10, 20, 30]
    return affine


def _labels(angle=0.0, slice_step=3.0):
    a = np.zeros((8, 20, 24), np.uint8)
    a[2:5, 3:9, 4:10] = 1          # 3*6*6 = 108 voxels, interior
    a[0:3, 10:12, 20:24] = 2       # 3*2*4 = 24 voxels, cut by first slice and last column
    a[6, 15, 15] = 7               # unnamed label: ignored
    return hd.Volume(a, _affine(slice_step, angle=angle), "PATIENT", "1.2.3")


@pytest.mark.parametrize("angle", [0.0, 0.5], ids=["axial", "oblique"])
def test_volume_from_true_spacing(angle):
    # the slices are 3.0 mm apart (from positions); a DICOM SliceThickness of,
    # say, 5.0 mm plays no part: only the affine counts
    result = {m.name: m for m in measure(_labels(angle), None, NAMES)}
    assert set(result) == {"liver", "spleen"}
    assert result["liver"].voxel_count == 108
    assert result["liver"].volume_ml == pytest.approx(108 * 0.8 * 0.7 * 3.0 / 1000)
    assert result["spleen"].volume_ml == pytest.approx(24 * 0.8 * 0.7 * 3.0 / 1000)
    assert result["liver"].volume_ml != pytest.approx(108 * 0.8 * 0.7 * 5.0 / 1000)
    assert result["liver"].mean_intensity is None


def test_mean_intensity_and_unit():
    labels = _labels()
    image = np.full(labels.array.shape, -1000.0, np.float32)
    image[labels.array == 1] = 60.0
    image[2, 3, 4] = 168.0  # one liver voxel brighter
    hu = hd.Volume(image, labels.affine, "PATIENT", "1.2.3")
    liver = measure(labels, hu, NAMES, intensity_unit="HU")[0]
    assert liver.mean_intensity == pytest.approx(61.0)
    assert liver.intensity_unit == "HU"


def test_edge_flag():
    result = {m.name: m for m in measure(_labels(), None, NAMES)}
    assert result["spleen"].touches_fov_edge
    assert not result["liver"].touches_fov_edge


def test_image_off_grid_rejected():
    labels = _labels()
    other = hd.Volume(np.zeros(labels.array.shape, np.float32), _affine(2.0), "PATIENT")
    with pytest.raises(ValueError, match="grid"):
        measure(labels, other, NAMES)


def test_float_labels_rejected():
    vol = hd.Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), "PATIENT")
    with pytest.raises(ValueError, match="integer"):
        measure(vol, None, NAMES)
