"""read_series on synthetic classic series written to disk."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicom_io.scan import find_series
from dicom_io.series import read_series

UID = "1.2.3.100"


def _read(folder):
    (files,) = find_series(folder)
    return read_series(files)


def _expected(k: int, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    j, i = np.mgrid[0:5, 0:4]
    return (100 * k + 10 * j + i) * slope + intercept


def test_shuffled_file_names_are_sorted_by_position(tmp_path, synth):
    stack = synth.axial_stack(UID, 6)
    for ds in stack:
        ds.InstanceNumber = random.Random(ds.InstanceNumber).randint(1, 99)  # meaningless order
    names = [f"f{n:02d}" for n in (4, 1, 5, 0, 3, 2)]
    synth.save_all(tmp_path, stack, names)
    result = _read(tmp_path)
    assert result.rejected == []
    (sv,) = result.volumes
    assert sv.key == UID and sv.series_uid == UID and sv.modality == "CT"
    assert sv.volume.array.dtype == np.float32
    for k in range(6):
        np.testing.assert_array_equal(sv.volume.array[k], _expected(k))
    assert [float(ds.ImagePositionPatient[2]) for ds in sv.source] == [30, 32, 34, 36, 38, 40]
    assert all("PixelData" not in ds for ds in sv.source)
    assert sv.volume.frame_of_reference_uid == "1.2.3.5"


def test_reversed_instance_order_gives_ascending_normal(tmp_path, synth):
    stack = synth.axial_stack(UID, 4)
    for n, ds in enumerate(reversed(stack)):
        ds.InstanceNumber = n + 1
    synth.save_all(tmp_path, stack[::-1], ["1", "2", "3", "4"])
    (sv,) = _read(tmp_path).volumes
    np.testing.assert_allclose(sv.volume.affine[:3, 0], [0, 0, 2.0])
    np.testing.assert_allclose(sv.volume.affine[:3, 3], [-10, -20, 30])
    np.testing.assert_array_equal(sv.volume.array[3], _expected(3))


def test_affine_maps_voxels_to_lps(tmp_path, synth):
    synth.save_all(tmp_path, synth.axial_stack(UID, 3), ["a", "b", "c"])
    (sv,) = _read(tmp_path).volumes
    # voxel (k=2, j=4, i=3): x = -10 + 3 * 0.8 (column spacing), y = -20 + 4 * 0.7, z = 34
    np.testing.assert_allclose(sv.volume.affine @ [2, 4, 3, 1], [-7.6, -17.2, 34.0, 1])


def test_oblique_orientation_geometry(tmp_path, synth):
    angle = np.radians(25.0)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([0.0, np.sin(0.3), -np.cos(0.3)])
    col = col - row * np.dot(row, col)
    col /= np.linalg.norm(col)
    orientation = [*row, *col]
    normal = np.cross(row, col)
    origin = np.array([5.0, -3.0, 12.0])
    stack = synth.axial_stack(UID, 5, gap=1.5, origin=origin, orientation=orientation)
    synth.save_all(tmp_path, stack, [f"s{n}" for n in (3, 0, 4, 1, 2)])
    (sv,) = _read(tmp_path).volumes
    for k, j, i in [(0, 0, 0), (4, 4, 3), (2, 1, 2)]:
        world = origin + k * 1.5 * normal + j * 0.7 * col + i * 0.8 * row
        np.testing.assert_allclose(sv.volume.affine @ [k, j, i, 1], [*world, 1], atol=1e-4)
        assert sv.volume.array[k, j, i] == 100 * k + 10 * j + i


@pytest.mark.parametrize(("modality", "slope", "intercept"), [("CT", 1.0, -1024.0),
                                                               ("MR", 0.5, 3.0)])
def test_rescale_is_applied(tmp_path, synth, modality, slope, intercept):
    stack = synth.axial_stack(UID, 3, modality=modality, slope=slope, intercept=intercept)
    synth.save_all(tmp_path, stack, ["a", "b", "c"])
    (sv,) = _read(tmp_path).volumes
    np.testing.assert_allclose(sv.volume.array[1], _expected(1, slope, intercept))


def test_missing_slice_is_refused(tmp_path, synth):
    stack = synth.axial_stack(UID, 6)
    del stack[3]
    synth.save_all(tmp_path, stack, list("abcde"))
    result = _read(tmp_path)
    assert result.volumes == []
    (rejection,) = result.rejected
    assert rejection.key == UID
    assert UID in rejection.reason and "uneven slice spacing" in rejection.reason
    assert "4.000" in rejection.reason and len(rejection.paths) == 5


def test_a_volume_over_the_voxel_limit_is_refused_before_decoding(tmp_path, synth):
    synth.save_all(tmp_path, synth.axial_stack(UID, 6), list("abcdef"))  # 6 x 5 x 4 = 120
    (files,) = find_series(tmp_path)
    assert len(read_series(files, max_voxels=120).volumes) == 1
    result = read_series(files, max_voxels=119)
    assert result.volumes == []
    (rejection,) = result.rejected
    assert UID in rejection.reason and "6 slices of 5 x 4" in rejection.reason
    assert "more than the limit" in rejection.reason and len(rejection.paths) == 6


def test_single_slice_is_refused(tmp_path, synth):
    synth.save_all(tmp_path, synth.axial_stack(UID, 1), ["only"])
    (rejection,) = _read(tmp_path).rejected
    assert "single slice" in rejection.reason and UID in rejection.reason


def test_mixed_rows_is_refused(tmp_path, synth):
    stack = synth.axial_stack(UID, 3)
    stack.append(synth.make_slice(series_uid=UID, position=(-10, -20, 36),
                                  pixels=np.zeros((6, 4), np.uint16)))
    synth.save_all(tmp_path, stack, list("abcd"))
    result = _read(tmp_path)
    assert result.volumes == []
    assert "mixed image sizes" in result.rejected[0].reason
    assert "5x4 (3 images)" in result.rejected[0].reason


def test_two_orientations_are_split(tmp_path, synth):
    axial = synth.axial_stack(UID, 4)
    sagittal = synth.axial_stack(UID, 5, orientation=(0, 1, 0, 0, 0, -1), origin=(0, 0, 0))
    synth.save_all(tmp_path, axial + sagittal, [f"i{n}" for n in range(9)])
    result = _read(tmp_path)
    assert result.rejected == []
    assert sorted(v.key for v in result.volumes) == [f"{UID}.1", f"{UID}.2"]
    shapes = sorted(v.volume.spatial_shape for v in result.volumes)
    assert shapes == [(4, 5, 4), (5, 5, 4)]
    sag = next(v for v in result.volumes if v.volume.spatial_shape[0] == 5)
    np.testing.assert_allclose(sag.volume.affine[:3, 0], [-2.0, 0, 0])  # normal = cross(A, I)


def test_localizer_image_type_is_never_a_volume(tmp_path, synth):
    loc = synth.axial_stack(UID, 3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    synth.save_all(tmp_path, loc, list("abc"))
    result = _read(tmp_path)
    assert result.volumes == []
    assert "localizer" in result.rejected[0].reason
    assert result.rejected[0].ignored  # never segmented by design: not a failure


def test_three_plane_localizer_is_ignored(tmp_path, synth):
    planes = [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)]
    stack = [synth.make_slice(series_uid=UID, position=(0, 0, 0), pixels=synth.pattern(0),
                              orientation=o, instance=n) for n, o in enumerate(planes)]
    synth.save_all(tmp_path, stack, list("abc"))
    result = _read(tmp_path)
    assert result.volumes == [] and len(result.rejected) == 3
    assert all("localizer" in r.reason for r in result.rejected)


def test_localizer_beside_a_volume_does_not_block_it(tmp_path, synth):
    axial = synth.axial_stack(UID, 4)
    loc = synth.make_slice(series_uid=UID, position=(0, 0, 0), pixels=synth.pattern(0),
                           orientation=(0, 1, 0, 0, 0, -1))
    synth.save_all(tmp_path, [*axial, loc], list("abcde"))
    result = _read(tmp_path)
    assert [v.volume.spatial_shape for v in result.volumes] == [(4, 5, 4)]
    assert "localizer" in result.rejected[0].reason


def test_two_echoes_are_split(tmp_path, synth):
    e1 = synth.axial_stack(UID, 3, modality="MR", extra={"EchoTime": 2.3})
    e2 = synth.axial_stack(UID, 3, modality="MR", extra={"EchoTime": 4.6})
    synth.save_all(tmp_path, e1 + e2, list("abcdef"))
    result = _read(tmp_path)
    assert len(result.volumes) == 2 and result.rejected == []


def test_repeated_positions_split_by_acquisition_number(tmp_path, synth):
    a1 = synth.axial_stack(UID, 3, extra={"AcquisitionNumber": 1})
    a2 = synth.axial_stack(UID, 3, extra={"AcquisitionNumber": 2})
    synth.save_all(tmp_path, a1 + a2, list("abcdef"))
    assert len(_read(tmp_path).volumes) == 2


def test_repeated_positions_without_separator_are_refused(tmp_path, synth):
    stack = synth.axial_stack(UID, 3) + synth.axial_stack(UID, 3)
    synth.save_all(tmp_path, stack, list("abcdef"))
    result = _read(tmp_path)
    assert result.volumes == []
    assert "6 images at only 3 distinct positions" in result.rejected[0].reason


def test_same_instance_twice_is_read_once(tmp_path, synth):
    stack = synth.axial_stack(UID, 3)
    synth.save_all(tmp_path, [*stack, stack[1]], ["a", "b", "c", "copy_of_b"])
    result = _read(tmp_path)
    assert [v.volume.spatial_shape for v in result.volumes] == [(3, 5, 4)]


def test_rgb_is_refused_with_a_reason(tmp_path, synth):
    stack = synth.axial_stack(UID, 3)
    for ds in stack:
        rgb = np.zeros((5, 4, 3), np.uint8)
        ds.PhotometricInterpretation = "RGB"
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = rgb.tobytes()
    synth.save_all(tmp_path, stack, list("abc"))
    result = _read(tmp_path)
    assert result.volumes == [] and len(result.rejected) == 3
    assert all("colour image (PhotometricInterpretation RGB" in r.reason for r in result.rejected)


def test_non_image_sop_class_is_refused_others_still_read(tmp_path, synth):
    stack = synth.axial_stack(UID, 3)
    sr = synth.make_slice(series_uid=UID, position=(0, 0, 0), pixels=synth.pattern(0))
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    del sr.PixelData
    synth.save_all(tmp_path, [*stack, sr], ["a", "b", "c", "sr"])
    result = _read(tmp_path)
    assert [v.volume.spatial_shape for v in result.volumes] == [(3, 5, 4)]
    (rejection,) = result.rejected
    assert rejection.paths[0].endswith("sr") and "not an image volume" in rejection.reason
    assert rejection.ignored


def test_a_refused_image_stack_is_not_ignored(tmp_path, synth):
    synth.save_all(tmp_path, synth.axial_stack(UID, 1), ["a"])
    (rejection,) = _read(tmp_path).rejected
    assert not rejection.ignored


def test_gantry_tilt_is_resampled_onto_orthogonal_grid(tmp_path, synth):
    """Each slice is shifted by one row (0.7 mm along y) per 2 mm step: ~19.3 deg tilt."""
    stack = [synth.make_slice(series_uid=UID, position=(0.0, 0.7 * k, 2.0 * k),
                              pixels=synth.pattern(k, rows=12), instance=k) for k in range(4)]
    synth.save_all(tmp_path, stack, list("abcd"))
    (sv,) = _read(tmp_path).volumes
    np.testing.assert_allclose(sv.volume.affine[:3, 0], [0, 0, 2.0], atol=1e-6)
    array = sv.volume.array
    for k in range(4):
        # target (k, j, i) sits where source slice k has row j - k
        np.testing.assert_allclose(array[k, k:12, :], synth.pattern(k, rows=12)[: 12 - k],
                                   atol=1e-3)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80",
                                    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1.99"])
def test_compressed_transfer_syntaxes_read_identically(tmp_path, synth, syntax):
    stack = [synth.make_slice(series_uid=UID, position=(0, 0, 2.0 * k), slope=2.0,
                              intercept=-5.0, pixels=synth.pattern(k, 32, 32)) for k in range(3)]
    for ds in stack:
        if syntax == "1.2.840.10008.1.2.1.99":
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    synth.save_all(tmp_path, stack, list("abc"))
    (sv,) = _read(tmp_path).volumes
    assert str(sv.source[0].file_meta.TransferSyntaxUID) == syntax
    np.testing.assert_array_equal(sv.volume.array[2], synth.pattern(2, 32, 32) * 2.0 - 5.0)


def test_split_numbering_does_not_depend_on_file_names(tmp_path, synth):
    axial = synth.axial_stack(UID, 5)
    sagittal = synth.axial_stack(UID, 4, orientation=(0, 1, 0, 0, 0, -1), origin=(0, 0, 0))
    keys = []
    for run, names in enumerate([list("abcdefghi"), list("ihgfedcba")]):
        folder = tmp_path / str(run)
        synth.save_all(folder, axial + sagittal, names)
        volumes = _read(folder).volumes
        keys.append({v.key: v.volume.spatial_shape for v in volumes})
    assert keys[0] == keys[1] and len(keys[0]) == 2


def test_rounded_oblique_orientation_is_accepted(tmp_path, synth):
    orientation = (0.7071, 0.7071, 0.0, 0.0, 0.0, -1.0)  # 4 decimals: not unit length
    stack = synth.axial_stack(UID, 3, orientation=orientation)
    synth.save_all(tmp_path, stack, list("abc"))
    (sv,) = _read(tmp_path).volumes
    np.testing.assert_allclose(np.linalg.norm(sv.volume.affine[:3, 2]), 0.8, atol=1e-9)


def test_damaged_orientation_is_refused(tmp_path, synth):
    stack = synth.axial_stack(UID, 3)
    stack[1].ImageOrientationPatient = [1, 0, 0, 0.5, 1, 0]
    synth.save_all(tmp_path, stack, list("abc"))
    result = _read(tmp_path)
    assert result.volumes == []
    assert any("is not two unit vectors at right angles" in r.reason for r in result.rejected)
