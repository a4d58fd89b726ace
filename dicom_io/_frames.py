"""Describe every 2D frame of a DICOM image instance (private).

An instance is one of three layouts: a classic single-frame image, an
enhanced multi-frame image (geometry in shared + per-frame functional
groups) or a Siemens mosaic (one image holding a grid of slices). Each is
described as a list of :class:`FrameInfo` so stacking code treats them alike.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_io._geometry import orthonormal_orientation
from segnode_errors import InputRejected

__all__ = ["FrameInfo", "describe_frames", "frame_pixels"]

_MOSAIC_COUNT_TAG = (0x0019, 0x100A)


@dataclass(frozen=True)
class FrameInfo:
    """Geometry, rescale and grouping attributes of one 2D frame.

    ``frame`` is the 1-based frame number of an enhanced instance, ``tile`` the
    0-based tile index of a mosaic; both None for a classic image.
    """

    ds_index: int
    frame: int | None
    tile: int | None
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    group: tuple
    localizer: bool


def describe_frames(ds: Dataset, ds_index: int, where: str) -> list[FrameInfo]:
    """List the frames of one image instance.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance (pixel data may be deferred).
    ds_index : int
        Index of ``ds`` in the caller's list, stored in each FrameInfo.
    where : str
        File name used in error messages.

    Returns
    -------
    list of FrameInfo

    Raises
    ------
    InputRejected
        When a geometry attribute (position, orientation, pixel spacing) is
        missing or not finite, or a header value has the wrong type or count.
    """
    try:
        if "PerFrameFunctionalGroupsSequence" in ds:
            return _enhanced_frames(ds, ds_index, where)
        if _MOSAIC_COUNT_TAG in ds and "MOSAIC" in _image_type(ds):
            return _mosaic_frames(ds, ds_index, where)
        return [_classic_frame(ds, ds_index, where)]
    except (ValueError, TypeError, IndexError, KeyError, ArithmeticError) as exc:
        # Header values of the wrong type or shape (an empty number, a 4-value position).
        raise InputRejected(f"{where}: unusable header values ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from exc


def _image_type(ds: Dataset) -> tuple[str, ...]:
    return tuple(str(v).upper() for v in ds.get("ImageType", []) or [])


#: How many numbers each geometry attribute holds.
_VALUE_COUNTS = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}


def _required(item: Dataset | None, keyword: str, where: str) -> list[float]:
    if item is None or keyword not in item or item[keyword].value in (None, ""):
        raise InputRejected(f"{where}: missing {keyword}; cannot place the image in space")
    values = item[keyword].value
    numbers = [float(v) for v in (values if isinstance(values, MultiValue | list | tuple)
                                  else [values])]
    if not all(math.isfinite(v) for v in numbers):
        raise InputRejected(f"{where}: {keyword} {numbers} is not finite")
    expected = _VALUE_COUNTS.get(keyword)
    if expected is not None and len(numbers) != expected:
        raise InputRejected(f"{where}: {keyword} has {len(numbers)} values, not {expected}")
    return numbers


def _orientation(item: Dataset | None, where: str) -> np.ndarray:
    raw = _required(item, "ImageOrientationPatient", where)
    cleaned = orthonormal_orientation(np.array(raw)) if len(raw) == 6 else None
    if cleaned is None:
        raise InputRejected(f"{where}: ImageOrientationPatient {raw} is not two unit "
                            "vectors at right angles")
    return cleaned


def _rescale(item: Dataset) -> tuple[float, float]:
    slope = item.get("RescaleSlope", None)
    intercept = item.get("RescaleIntercept", None)
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )


def _classic_frame(ds: Dataset, ds_index: int, where: str) -> FrameInfo:
    image_type = _image_type(ds)
    echo = ds.get("EchoTime", None)
    group = (
        image_type,
        None if echo in (None, "") else round(float(echo), 3),
        ds.get("TemporalPositionIdentifier", None),
        _b_value(ds),
    )
    slope, intercept = _rescale(ds)
    spacing = _required(ds, "PixelSpacing", where)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows < 1 or columns < 1:
        raise InputRejected(f"{where}: Rows x Columns is {rows} x {columns}; no image")
    return FrameInfo(
        ds_index=ds_index,
        frame=None,
        tile=None,
        position=np.array(_required(ds, "ImagePositionPatient", where)),
        orientation=_orientation(ds, where),
        pixel_spacing=(spacing[0], spacing[1]),
        rows=rows,
        columns=columns,
        slope=slope,
        intercept=intercept,
        group=group,
        localizer="LOCALIZER" in image_type,
    )


def _b_value(ds: Dataset) -> float | None:
    value = ds.get("DiffusionBValue", None)
    return None if value in (None, "") else float(value)


def _functional_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """First item of ``keyword`` in frame ``index``'s groups, else the shared groups."""
    for groups in (ds.PerFrameFunctionalGroupsSequence[index], _shared(ds)):
        if groups is not None and keyword in groups and len(groups[keyword].value) > 0:
            return groups[keyword].value[0]
    return None


def _shared(ds: Dataset) -> Dataset | None:
    seq = ds.get("SharedFunctionalGroupsSequence", None)
    return seq[0] if seq else None


def _enhanced_frames(ds: Dataset, ds_index: int, where: str) -> list[FrameInfo]:
    n_frames = int(ds.get("NumberOfFrames", 1))
    if len(ds.PerFrameFunctionalGroupsSequence) != n_frames:
        raise InputRejected(
            f"{where}: NumberOfFrames is {n_frames} but the per-frame functional "
            f"groups hold {len(ds.PerFrameFunctionalGroupsSequence)} items"
        )
    return [_enhanced_frame(ds, ds_index, i, where) for i in range(n_frames)]


def _enhanced_frame(ds: Dataset, ds_index: int, i: int, where: str) -> FrameInfo:
    label = f"{where} frame {i + 1}"
    position = _required(_functional_item(ds, i, "PlanePositionSequence"),
                         "ImagePositionPatient", label)
    orientation = _orientation(_functional_item(ds, i, "PlaneOrientationSequence"), label)
    spacing = _required(_functional_item(ds, i, "PixelMeasuresSequence"), "PixelSpacing", label)
    transform = _functional_item(ds, i, "PixelValueTransformationSequence")
    slope, intercept = _rescale(transform) if transform is not None else _rescale(ds)
    frame_type = _frame_type(ds, i)
    echo = _functional_item(ds, i, "MREchoSequence")
    content = _functional_item(ds, i, "FrameContentSequence")
    diffusion = _functional_item(ds, i, "MRDiffusionSequence")
    group = (
        frame_type,
        None if echo is None else round(float(echo.get("EffectiveEchoTime", 0) or 0), 3),
        None if content is None else content.get("TemporalPositionIndex", None),
        None if content is None else content.get("StackID", None),
        None if diffusion is None else diffusion.get("DiffusionBValue", None),
    )
    return FrameInfo(
        ds_index=ds_index,
        frame=i + 1,
        tile=None,
        position=np.array(position),
        orientation=orientation,
        pixel_spacing=(spacing[0], spacing[1]),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=slope,
        intercept=intercept,
        group=group,
        localizer="LOCALIZER" in frame_type or "LOCALIZER" in _image_type(ds),
    )


def _frame_type(ds: Dataset, i: int) -> tuple[str, ...]:
    for keyword in ("MRImageFrameTypeSequence", "CTImageFrameTypeSequence"):
        item = _functional_item(ds, i, keyword)
        if item is not None and "FrameType" in item:
            return tuple(str(v).upper() for v in item.FrameType)
    return _image_type(ds)


def _mosaic_frames(ds: Dataset, ds_index: int, where: str) -> list[FrameInfo]:
    """Tiles of a Siemens mosaic, with the mosaic position correction.

    ImagePositionPatient of a mosaic refers to the corner of the whole mosaic;
    the first tile's corner is shifted by half the size difference (the
    correction nibabel and dcm2niix apply). Slices follow the CSA
    SliceNormalVector when present, else ``cross(row_dir, col_dir)``.
    """
    base = _classic_frame(ds, ds_index, where)
    count = int(ds[_MOSAIC_COUNT_TAG].value)
    per_side = math.ceil(math.sqrt(count))
    rows, cols = base.rows // per_side, base.columns // per_side
    if count < 1 or rows < 1 or cols < 1:
        raise InputRejected(f"{where}: a mosaic of {count} images does not fit in "
                            f"{base.rows} x {base.columns} pixels")
    row_dir, col_dir = base.orientation[:3], base.orientation[3:]
    dy, dx = base.pixel_spacing
    first = (base.position + col_dir * dy * (base.rows - rows) / 2
             + row_dir * dx * (base.columns - cols) / 2)
    normal = _csa_slice_normal(ds)
    if normal is None:
        normal = np.cross(row_dir, col_dir)
    gap = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None)
    if gap in (None, ""):
        raise InputRejected(f"{where}: mosaic without SpacingBetweenSlices or SliceThickness")
    step = normal / np.linalg.norm(normal) * float(gap)
    return [
        FrameInfo(ds_index, None, t, first + t * step, base.orientation, base.pixel_spacing,
                  rows, cols, base.slope, base.intercept, base.group, base.localizer)
        for t in range(count)
    ]


def _csa_slice_normal(ds: Dataset) -> np.ndarray | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # nibabel: "readers experimental"
            from nibabel.nicom import csareader
        csa = csareader.get_csa_header(ds, "image")
        vector = csareader.get_vector(csa, "SliceNormalVector", 3) if csa else None
    except Exception:  # noqa: BLE001 - a damaged private header falls back to IOP
        return None
    return None if vector is None else np.asarray(vector, dtype=float)


def frame_pixels(ds: Dataset, info: FrameInfo, decoded: np.ndarray) -> np.ndarray:
    """The stored values of one frame, taken from the decoded instance array.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance (used for the mosaic grid size).
    info : FrameInfo
        The frame.
    decoded : numpy.ndarray
        ``pixel_array`` of the instance: (rows, cols) or (frames, rows, cols).
    """
    if info.frame is not None:
        return decoded[info.frame - 1] if decoded.ndim == 3 else decoded
    if info.tile is not None:
        per_side = int(ds.Columns) // info.columns
        r, c = divmod(info.tile, per_side)
        return decoded[r * info.rows:(r + 1) * info.rows, c * info.columns:(c + 1) * info.columns]
    return decoded
