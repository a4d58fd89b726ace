"""Compare a written DICOM-SEG with the analytic phantom in patient coordinates.

Independent of segnode's own reader: source slice positions come from the
source files' headers, SEG frames are matched to them by
ImagePositionPatient, and the truth is the phantom evaluated at each pixel's
LPS position.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from model.phantom import Phantom


def pixel_positions(ds: pydicom.Dataset) -> np.ndarray:
    """LPS mm of every pixel centre of a single-frame image, shape (rows*cols, 3)."""
    origin = np.asarray(ds.ImagePositionPatient, dtype=float)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    along_row, along_column = iop[:3], iop[3:]
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    return (
        origin
        + c.reshape(-1, 1) * column_spacing * along_row
        + r.reshape(-1, 1) * row_spacing * along_column
    )


def _position_key(position: object) -> tuple[float, ...]:
    return tuple(np.round(np.asarray(position, dtype=float), 2))


def seg_masks_by_position(seg: pydicom.Dataset) -> dict[tuple[float, ...], dict[str, np.ndarray]]:
    """BINARY SEG frames as {slice position: {tracking id: mask}}."""
    names = {item.SegmentNumber: str(item.TrackingID) for item in seg.SegmentSequence}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    found: dict[tuple[float, ...], dict[str, np.ndarray]] = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        position = item.PlanePositionSequence[0].ImagePositionPatient
        found.setdefault(_position_key(position), {})[names[number]] = frame.astype(bool)
    return found


def dice_against_phantom(
    seg_path: Path, series_folder: Path, phantom: Phantom
) -> dict[str, float]:
    """Dice per phantom structure between the SEG and the phantom's truth."""
    seg = pydicom.dcmread(seg_path)
    masks = seg_masks_by_position(seg)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series_folder.iterdir()]
    names = phantom.label_names
    overlap = dict.fromkeys(names.values(), 0)
    truth_count = dict.fromkeys(names.values(), 0)
    seg_count = dict.fromkeys(names.values(), 0)
    matched = 0
    for ds in sources:
        truth = phantom.labels_at(pixel_positions(ds)).reshape(ds.Rows, ds.Columns)
        frame_masks = masks.get(_position_key(ds.ImagePositionPatient), {})
        matched += bool(frame_masks)
        for label, name in names.items():
            t = truth == label
            p = frame_masks.get(name, np.zeros_like(t))
            overlap[name] += int(np.count_nonzero(t & p))
            truth_count[name] += int(np.count_nonzero(t))
            seg_count[name] += int(np.count_nonzero(p))
    assert matched == len({k for k in masks}), "a SEG frame lies on no source slice"
    return {
        name: 2 * overlap[name] / (truth_count[name] + seg_count[name])
        for name in names.values()
        if truth_count[name] + seg_count[name] > 0
    }


def seg_voxel_counts(seg: pydicom.Dataset) -> dict[str, int]:
    """Number of voxels per segment (by TrackingID) in a BINARY SEG."""
    names = {item.SegmentNumber: str(item.TrackingID) for item in seg.SegmentSequence}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    counts = dict.fromkeys(names.values(), 0)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        counts[names[number]] += int(np.count_nonzero(frame))
    return counts


def source_voxel_mm3(series_folder: Path) -> float:
    """Voxel volume of a single-frame series from its headers (mm3).

    Pixel spacing times the median distance between neighbouring slice
    positions along the slice normal.
    """
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series_folder.iterdir()]
    iop = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    along = np.sort([float(np.dot(normal, ds.ImagePositionPatient)) for ds in sources])
    row_spacing, column_spacing = (float(v) for v in sources[0].PixelSpacing)
    return row_spacing * column_spacing * float(np.median(np.diff(along)))
