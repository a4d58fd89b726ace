"""DICOM-SEG writer and reader on the grid of the source images.

The label volume is resampled onto nothing: it must be on the same voxel grid
as the source images. Each source frame is located in the volume by its own
ImagePositionPatient / ImageOrientationPatient / PixelSpacing (inverse
affine), so the frames land on the right slices whatever the order of the
volume's k axis or the order of the source files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicom_io import _equipment
from dicom_io._seg_frames import complete_seg, is_multiframe_source, probe_sources
from dicom_io.content import AlgorithmInfo, SegmentInfo
from dicom_io.uids import derived_uid
from segnode_errors import ExportError

__all__ = [
    "SegType",
    "build_seg",
    "labels_in_source_order",
    "read_seg_labels",
    "segment_tracking_uid",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

SegType = Literal["binary", "labelmap"]

_LATERALITY = {
    "left": hd.sr.CodedConcept("7771000", "SCT", "Left"),
    "right": hd.sr.CodedConcept("24028007", "SCT", "Right"),
    "bilateral": hd.sr.CodedConcept("51440002", "SCT", "Bilateral"),
}
_TOLERANCE_VOXELS = 0.05


def segment_tracking_uid(source_series_uid: str, algorithm: AlgorithmInfo, label: int) -> str:
    """Return the TrackingUID of one structure, shared by the SEG and the SR.

    Parameters
    ----------
    source_series_uid : str
        SeriesInstanceUID of the source images.
    algorithm : AlgorithmInfo
        The model; its name and version enter the UID.
    label : int
        The structure's value in the label volume.

    Returns
    -------
    str
        A deterministic ``2.25`` UID.
    """
    return derived_uid("tracking", source_series_uid, algorithm.name, algorithm.version, str(label))


def _frame_geometries(source_images: Sequence[Dataset]) -> list[tuple[np.ndarray, ...]]:
    """Return (position, row cosine, column cosine, pixel spacing) per source frame."""
    if is_multiframe_source(source_images):
        src = source_images[0]
        shared = src.SharedFunctionalGroupsSequence[0]
        out = []
        for item in src.PerFrameFunctionalGroupsSequence:
            def _get(seq: str, attr: str, item: Dataset = item) -> object:
                holder = item if seq in item else shared
                return getattr(getattr(holder, seq)[0], attr)
            out.append(_geometry(
                _get("PlanePositionSequence", "ImagePositionPatient"),
                _get("PlaneOrientationSequence", "ImageOrientationPatient"),
                _get("PixelMeasuresSequence", "PixelSpacing"),
            ))
        return out
    return [
        _geometry(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing)
        for ds in source_images
    ]


def _geometry(position: object, orientation: object, spacing: object) -> tuple[np.ndarray, ...]:
    iop = np.asarray(orientation, dtype=float)
    return (
        np.asarray(position, dtype=float),
        iop[:3],
        iop[3:],
        np.asarray(spacing, dtype=float),
    )


def _frame_steps(
    inverse: np.ndarray, geometry: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-index origin, row step and column step of one source frame, checked on-grid.

    Raises
    ------
    ExportError
        If the frame's pixels do not fall on voxel centres of the volume grid.
    """
    position, row_cos, col_cos, spacing = geometry
    origin = inverse[:3, :3] @ position + inverse[:3, 3]
    col_step = inverse[:3, :3] @ (row_cos * spacing[1])
    row_step = inverse[:3, :3] @ (col_cos * spacing[0])
    for name, vec in (("origin", origin), ("row step", row_step), ("column step", col_step)):
        if np.abs(vec - np.round(vec)).max() > _TOLERANCE_VOXELS:
            raise ExportError(
                f"Source frame {name} is not on the label volume grid: index {vec.round(3)}."
            )
    return (np.round(origin).astype(np.int64), np.round(row_step).astype(np.int64),
            np.round(col_step).astype(np.int64))


def _frame(array: np.ndarray, steps: tuple[np.ndarray, np.ndarray, np.ndarray],
           rows: int, cols: int) -> np.ndarray:
    """The (rows, cols) labels of one source frame.

    A frame whose row and column steps are single voxel steps along two
    different axes (always so for labels on the source grid) is a strided
    view of the volume; any other is gathered index by index.

    Raises
    ------
    ExportError
        If the frame lies outside the volume.
    """
    origin, row_step, col_step = steps
    shape = array.shape[:3]
    last = origin + (rows - 1) * row_step + (cols - 1) * col_step
    if origin.min() < 0 or last.min() < 0 or np.any(origin >= shape) or np.any(last >= shape):
        raise ExportError(f"Source frame lies outside the label volume (shape {shape}).")
    row_axes, col_axes = np.flatnonzero(row_step), np.flatnonzero(col_step)
    if (len(row_axes) == 1 and len(col_axes) == 1 and row_axes[0] != col_axes[0]
            and abs(row_step[row_axes[0]]) == 1 and abs(col_step[col_axes[0]]) == 1):
        ra, ca = int(row_axes[0]), int(col_axes[0])
        index: list[object] = [int(v) for v in origin]
        for axis, step, count in ((ra, int(row_step[ra]), rows), (ca, int(col_step[ca]), cols)):
            start = int(origin[axis])
            stop = start + step * count
            index[axis] = slice(start, stop if stop >= 0 else None, step)
        view = array[tuple(index)]
        return view if ra < ca else view.T
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    return array[tuple(origin[a] + r * row_step[a] + c * col_step[a] for a in range(3))]


def labels_in_source_order(labels: hd.Volume, source_images: Sequence[Dataset]) -> np.ndarray:
    """Sample the label volume frame by frame in source-image order.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer labels on the grid of the source images, any axis order.
    source_images : sequence of pydicom.Dataset
        Single-frame source headers (any order), or one multi-frame image.

    Returns
    -------
    numpy.ndarray
        Array (n_frames, Rows, Columns): frame ``f`` holds the labels of
        source frame ``f`` pixel for pixel.

    Raises
    ------
    ExportError
        If a source frame is not on the label grid or not inside it.
    """
    _validate_frame_of_reference(labels, source_images)
    rows, cols = int(source_images[0].Rows), int(source_images[0].Columns)
    inverse = np.linalg.inv(labels.affine)
    array = labels.array
    frames = [_frame(array, _frame_steps(inverse, geometry), rows, cols)
              for geometry in _frame_geometries(source_images)]
    return np.stack(frames)


def _validate_frame_of_reference(labels: hd.Volume, source_images: Sequence[Dataset]) -> None:
    if not source_images:
        raise ExportError("Argument 'source_images' must not be empty.")
    for_uid = getattr(source_images[0], "FrameOfReferenceUID", None)
    if labels.frame_of_reference_uid not in (None, for_uid):
        raise ExportError(
            f"Label volume frame of reference {labels.frame_of_reference_uid} differs "
            f"from the source images' {for_uid}."
        )
    if labels.array.ndim != 3:
        raise ExportError(
            f"Argument 'labels' must be a 3D label volume, got shape {labels.array.shape}."
        )


def _code(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def _algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    if algorithm.family != "Artificial Intelligence":
        raise ExportError(
            f"Unsupported algorithm family {algorithm.family!r}: expected "
            "'Artificial Intelligence'."
        )
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.DCM.ArtificialIntelligence,
        version=algorithm.version,
        source=_equipment.MANUFACTURER,
        parameters={"weights_sha256": algorithm.weights_sha256},
    )


def _segment_description(
    number: int, info: SegmentInfo, algorithm: AlgorithmInfo, source_series_uid: str
) -> hd.seg.SegmentDescription:
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=info.label,
        segmented_property_category=_code(info.category_code),
        segmented_property_type=_code(info.type_code),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_identification(algorithm),
        tracking_uid=segment_tracking_uid(source_series_uid, algorithm, info.number),
        tracking_id=info.tracking_id,
        display_color=hd.color.CIELabColor.from_rgb(*info.rgb),
        anatomic_regions=[_code(info.region)] if info.region else None,
    )
    if info.laterality is not None:
        modifier = desc.SegmentedPropertyTypeCodeSequence[0]
        modifier.SegmentedPropertyTypeModifierCodeSequence = [_LATERALITY[info.laterality]]
    return desc


def label_counts(frames: np.ndarray) -> np.ndarray:
    """Voxel count of every label value on every frame: (n_frames, max label + 1)."""
    if frames.dtype.kind not in "uib" or (frames.dtype.kind == "i" and frames.min() < 0):
        raise ExportError(f"Label volume must hold integers 0 and up, got {frames.dtype}.")
    length = int(frames.max()) + 1
    return np.stack([np.bincount(frame.ravel(), minlength=length) for frame in frames])


def _present_segments(counts: np.ndarray, segments: Sequence[SegmentInfo]) -> list[SegmentInfo]:
    """The described structures present, in ascending label order."""
    by_label = {s.number: s for s in segments}
    present = [int(v) for v in np.flatnonzero(counts.sum(axis=0)) if v != 0]
    missing = [v for v in present if v not in by_label]
    if missing:
        raise ExportError(f"Label values {_abbreviated(missing)} have no SegmentInfo.")
    return [by_label[v] for v in present]


def _abbreviated(values: Sequence[int], shown: int = 10) -> str:
    text = ", ".join(str(v) for v in values[:shown])
    return f"[{text}, ... {len(values)} in all]" if len(values) > shown else f"[{text}]"


def build_seg(
    labels: hd.Volume,
    source_images: Sequence[Dataset],
    segments: Sequence[SegmentInfo],
    algorithm: AlgorithmInfo,
    *,
    seg_type: SegType | str = "binary",
    series_number: int = 9001,
    series_description: str | None = None,
) -> Dataset:
    """Build a DICOM Segmentation of a label volume on its source images.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer label volume (0 and up) on the source images' grid (any k order).
    source_images : sequence of pydicom.Dataset
        Source headers (PixelData not needed): single-frame images of one
        series in any order, or one multi-frame image.
    segments : sequence of SegmentInfo
        Descriptions keyed by label value; must cover every label present.
    algorithm : AlgorithmInfo
        Model identification (name, version, weights hash).
    seg_type : {"binary", "labelmap"}
        ``"binary"`` (default): BINARY, Explicit VR Little Endian, empty
        frames omitted. ``"labelmap"``: LABELMAP SOP class, RLE Lossless.
    series_number : int
        SeriesNumber of the SEG.
    series_description : str, optional
        SeriesDescription; default ``"<model name> segmentation"``.

    Returns
    -------
    pydicom.Dataset
        The Segmentation highdicom builds for these frames (its header is
        highdicom's, the frames are encoded in bulk by
        :mod:`dicom_io._seg_frames`): segments only for the labels present,
        numbered 1..n in ascending label order. Series and SOP Instance UIDs
        derive from the source series, the model name/version and ``seg_type``.

    Raises
    ------
    ExportError
        If the volume is not on the source grid, no structure is present,
        a present label has no description, or the source images differ in
        orientation or share a position.
    """
    kind = _validate_seg_type(seg_type)
    frames = labels_in_source_order(labels, source_images)
    counts = label_counts(frames)
    present = _present_segments(counts, segments)
    if not present:
        raise ExportError("The label volume holds no structure: no SEG to write.")
    series_uid = source_images[0].SeriesInstanceUID
    descriptions = [
        _segment_description(n, info, algorithm, series_uid)
        for n, info in enumerate(present, start=1)
    ]
    probe_images, probe = probe_sources(source_images, frames.shape[1:])
    header = _highdicom_seg(
        probe_images, probe, descriptions, algorithm, kind,
        series_number=series_number,
        series_description=series_description or f"{algorithm.name} segmentation",
    )
    seg = complete_seg(header, source_images, frames, [info.number for info in present],
                       counts, _plane_positions(source_images))
    logger.info(
        "Built %s SEG %s with %d segments, %d frames for series %s",
        kind, seg.SOPInstanceUID, len(present), int(seg.NumberOfFrames), series_uid,
    )
    return seg


def _plane_positions(source_images: Sequence[Dataset]) -> list[hd.PlanePositionSequence]:
    """Each source plane's position as highdicom copies it into a derived image."""
    if is_multiframe_source(source_images):
        return hd.utils.get_plane_positions_of_image(source_images[0])
    iop = source_images[0].ImageOrientationPatient
    for image in source_images:
        if image.ImageOrientationPatient != iop:
            raise ExportError(
                f"Source image {image.SOPInstanceUID} differs in orientation from the "
                "first: a SEG needs one orientation."
            )
    return [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                     image.ImagePositionPatient)
            for image in source_images]


def _highdicom_seg(
    source_images: Sequence[Dataset],
    pixel_array: np.ndarray,
    descriptions: list[hd.seg.SegmentDescription],
    algorithm: AlgorithmInfo,
    kind: str,
    *,
    series_number: int,
    series_description: str,
) -> hd.seg.Segmentation:
    """highdicom's Segmentation of ``pixel_array`` (segment numbers) on ``source_images``.

    :func:`build_seg` calls it on the probe of :func:`probe_sources` for the
    header. highdicom copies the source pixel measures and adds
    SpacingBetweenSlices computed from the source positions (omitted if they
    are not evenly spaced).
    """
    parts = (source_images[0].SeriesInstanceUID, algorithm.name, algorithm.version, kind)
    with _equipment.no_phi_warnings():
        return hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues[kind.upper()],
            segment_descriptions=descriptions,
            series_instance_uid=derived_uid("seg-series", *parts),
            series_number=series_number,
            sop_instance_uid=derived_uid("seg-instance", *parts),
            instance_number=1,
            manufacturer=_equipment.MANUFACTURER,
            manufacturer_model_name=_equipment.MODEL_NAME,
            software_versions=_equipment.SOFTWARE_VERSION,
            device_serial_number=_equipment.DEVICE_SERIAL_NUMBER,
            transfer_syntax_uid=RLELossless if kind == "labelmap" else ExplicitVRLittleEndian,
            series_description=series_description,
            omit_empty_frames=True,
            specific_character_set=_equipment.source_character_set(source_images[0]),
        )


def _validate_seg_type(seg_type: str) -> str:
    kind = str(seg_type).lower()
    if kind not in ("binary", "labelmap"):
        raise ExportError(
            f"Argument 'seg_type' must be 'binary' or 'labelmap', got {seg_type!r}."
        )
    return kind


def _source_affine(source_images: Sequence[Dataset]) -> np.ndarray:
    """Affine (k, j, i) -> LPS of the source frames in the given order."""
    geometries = _frame_geometries(source_images)
    position, row_cos, col_cos, spacing = geometries[0]
    if len(geometries) > 1:
        slice_step = (geometries[-1][0] - position) / (len(geometries) - 1)
    else:
        slice_step = np.cross(row_cos, col_cos)
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = col_cos * spacing[0]
    affine[:3, 2] = row_cos * spacing[1]
    affine[:3, 3] = position
    return affine


def read_seg_labels(
    seg_ds: Dataset,
    source_images: Sequence[Dataset],
    segments: Sequence[SegmentInfo] | None = None,
) -> hd.Volume:
    """Read a SEG back into a label volume on the source grid.

    Parameters
    ----------
    seg_ds : pydicom.Dataset
        A BINARY or LABELMAP Segmentation of single-frame source images.
    source_images : sequence of pydicom.Dataset
        The source headers; slice k of the result is ``source_images[k]``.
    segments : sequence of SegmentInfo, optional
        When given, segment numbers are mapped back to label values by
        SegmentLabel; otherwise the voxel values are SEG segment numbers.

    Returns
    -------
    highdicom.Volume
        uint16 labels, array (k, j, i) in source order, affine from the
        source positions, the source frame of reference.

    Raises
    ------
    ExportError
        If a segment label is not among ``segments``.
    """
    seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=False)
    uids = [ds.SOPInstanceUID for ds in source_images]
    array = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, skip_overlap_checks=True, dtype=np.uint16,
    )
    if segments is not None:
        array = _segment_numbers_to_labels(seg, array, segments)
    return hd.Volume(
        array=array,
        affine=_source_affine(source_images),
        coordinate_system="PATIENT",
        frame_of_reference_uid=source_images[0].FrameOfReferenceUID,
    )


def _segment_numbers_to_labels(
    seg: hd.seg.Segmentation, array: np.ndarray, segments: Sequence[SegmentInfo]
) -> np.ndarray:
    by_name = {s.label: s.number for s in segments}
    lookup = np.zeros(max(seg.segment_numbers) + 1, dtype=np.uint16)
    for item in seg.SegmentSequence:
        if item.SegmentNumber == 0:  # the LABELMAP background segment
            continue
        if item.SegmentLabel not in by_name:
            raise ExportError(f"SEG segment label {item.SegmentLabel!r} is not in 'segments'.")
        lookup[item.SegmentNumber] = by_name[item.SegmentLabel]
    return lookup[array]
