"""read_series on a synthetic Enhanced MR multi-frame instance (functional groups)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_io.scan import find_series
from dicom_io.series import read_series

UID = "1.2.3.300"


def _item(**attrs) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _enhanced(frame_slices: list[int], *, per_frame_orientation: bool) -> Dataset:
    """Frames stored in the order ``frame_slices`` (slice index of each frame)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", UID, "1.2.9"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 5, 4, len(frame_slices)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    orientation = _item(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])  # sagittal
    shared = _item(
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=[0.5, 0.6], SliceThickness=1)]),
        PixelValueTransformationSequence=Sequence(
            [_item(RescaleSlope=2, RescaleIntercept=1, RescaleType="US")]),
    )
    if not per_frame_orientation:
        shared.PlaneOrientationSequence = Sequence([orientation])
    per_frame = []
    for k in frame_slices:
        item = _item(PlanePositionSequence=Sequence([_item(ImagePositionPatient=[3.0 * k, 0, 0])]),
                     FrameContentSequence=Sequence([_item(StackID="1", InStackPositionNumber=k)]))
        if per_frame_orientation:
            item.PlaneOrientationSequence = Sequence([orientation])
        per_frame.append(item)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    j, i = np.mgrid[0:5, 0:4]
    frames = np.stack([100 * k + 10 * j + i for k in frame_slices]).astype("<u2")
    ds.PixelData = frames.tobytes()
    return ds


def test_enhanced_frames_sorted_by_position_with_rescale(tmp_path):
    order = [2, 0, 3, 1]
    _enhanced(order, per_frame_orientation=True).save_as(tmp_path / "mf", enforce_file_format=True)
    (files,) = find_series(tmp_path)
    result = read_series(files)
    assert result.rejected == []
    (sv,) = result.volumes
    assert sv.layout == "enhanced" and len(sv.source) == 1
    # normal = cross(A, I) = (-1, 0, 0): ascending along it means decreasing x
    assert sv.source_frames == (3, 1, 4, 2)  # frames at x = 9, 6, 3, 0
    np.testing.assert_allclose(sv.volume.affine[:3, 0], [-3.0, 0, 0])
    np.testing.assert_allclose(sv.volume.affine[:3, 3], [9.0, 0, 0])
    j, i = np.mgrid[0:5, 0:4]
    np.testing.assert_allclose(sv.volume.array[0], (300 + 10 * j + i) * 2 + 1)
    assert "PixelData" not in sv.source[0]


def test_enhanced_shared_orientation_and_missing_frame(tmp_path):
    _enhanced([0, 1, 3, 4], per_frame_orientation=False).save_as(
        tmp_path / "mf", enforce_file_format=True)
    (files,) = find_series(tmp_path)
    result = read_series(files)
    assert result.volumes == []
    assert "uneven slice spacing" in result.rejected[0].reason
