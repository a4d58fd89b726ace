"""Turn one stack of frames into a volume: sort, validate, decode, rescale (private).

Gantry tilt: a stack whose slices are shifted within their plane (stacking
direction not along the slice normal) is resampled with SimpleITK (linear
interpolation) onto an orthogonal grid with the same in-plane axes, pixel
size and slice planes; voxels outside the acquired field of view get the
stack's minimum value. The result is logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom.pixels
import SimpleITK as sitk
from pydicom.dataset import Dataset

from dicom_io._frames import FrameInfo, frame_pixels
from dicom_io._geometry import build_affine, check_even_spacing, slice_normal, tilt_angle_deg
from segnode_errors import InputRejected

__all__ = ["sort_and_check", "stack_array", "stack_volume", "TILT_TOLERANCE_DEG"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Stacking directions within this angle of the slice normal are not tilt.
TILT_TOLERANCE_DEG = 0.5


def sort_and_check(frames: Sequence[FrameInfo], *, min_slices: int) -> list[FrameInfo]:
    """Sort frames along the slice normal and check they form one regular stack.

    Parameters
    ----------
    frames : sequence of FrameInfo
        Frames of one orientation.
    min_slices : int
        Fewest slices accepted as a volume.

    Returns
    -------
    list of FrameInfo
        Sorted by ``ImagePositionPatient . normal``, ascending.

    Raises
    ------
    InputRejected
        Mixed image sizes or pixel spacings, too few slices, repeated
        positions, or uneven spacing (missing slices). Messages omit the
        series key (the caller adds it).
    """
    _check_uniform(frames, lambda f: f"{f.rows}x{f.columns}", "image sizes (Rows x Columns)")
    _check_uniform(frames, lambda f: "x".join(f"{v:.4f}" for v in f.pixel_spacing),
                   "PixelSpacing (mm)")
    if len(frames) == 1:
        raise InputRejected("a single slice is not a volume")
    if len(frames) < min_slices:
        raise InputRejected(f"only {len(frames)} slices; a volume needs at least {min_slices}")
    normal = slice_normal(frames[0].orientation)
    ordered = sorted(frames, key=lambda f: float(np.dot(f.position, normal)))
    offsets = np.array([float(np.dot(f.position, normal)) for f in ordered])
    distinct = len(np.unique(np.round(offsets, 2)))
    if distinct == 1:
        raise InputRejected(f"not a volume: all {len(frames)} images lie at the same position")
    if distinct < len(frames):
        raise InputRejected(
            f"{len(frames)} images at only {distinct} distinct positions: several volumes "
            "share these locations and no attribute (ImageType, echo time, temporal "
            "position, b-value, acquisition number) separates them"
        )
    problem = check_even_spacing(offsets)
    if problem is not None:
        raise InputRejected(problem)
    return ordered


def _check_uniform(frames: Sequence[FrameInfo], value, what: str) -> None:
    counts = Counter(value(f) for f in frames)
    if len(counts) > 1:
        found = ", ".join(f"{k} ({n} images)" for k, n in counts.most_common())
        raise InputRejected(f"mixed {what} in one stack: {found}")


def stack_array(frames: Sequence[FrameInfo], datasets: Sequence[Dataset]) -> np.ndarray:
    """Decode the frames (in the given order) and apply rescale slope/intercept.

    Returns
    -------
    numpy.ndarray
        float32 array (k, j, i).
    """
    out = np.empty((len(frames), frames[0].rows, frames[0].columns), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    for k, info in enumerate(frames):
        ds = datasets[info.ds_index]
        if info.ds_index not in cache:
            cache = {info.ds_index: _decode(ds)}
        stored = frame_pixels(ds, info, cache[info.ds_index])
        out[k] = stored.astype(np.float32) * np.float32(info.slope) + np.float32(info.intercept)
    return out


def _decode(ds: Dataset) -> np.ndarray:
    try:
        return pydicom.pixels.pixel_array(ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - any decoder failure (a Rust decoder's
        # PanicException derives from BaseException) is a rejection
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        raise InputRejected(
            f"SOP instance {ds.get('SOPInstanceUID', '?')}: pixel data in transfer syntax "
            f"{getattr(syntax, 'name', syntax)} could not be decoded ({exc})"
        ) from exc


def stack_volume(
    frames: Sequence[FrameInfo], datasets: Sequence[Dataset], frame_of_reference_uid: str | None
) -> hd.Volume:
    """Build the ``hd.Volume`` of sorted, checked frames (resampling a gantry tilt)."""
    first, last = frames[0], frames[-1]
    n = len(frames)
    array = stack_array(frames, datasets)
    normal = slice_normal(first.orientation)
    gap = float(np.dot(last.position - first.position, normal)) / (n - 1)
    tilt = tilt_angle_deg(first.orientation, first.position, last.position)
    if tilt > TILT_TOLERANCE_DEG:
        step = (last.position - first.position) / (n - 1)
        logger.info("gantry tilt of %.2f deg: resampling %d slices onto an orthogonal grid",
                    tilt, n)
        array = _resample_tilt(array, first, step, gap)
    affine = build_affine(first.position, first.orientation, first.pixel_spacing, normal * gap)
    return hd.Volume(array, affine, coordinate_system="PATIENT",
                     frame_of_reference_uid=frame_of_reference_uid)


def _resample_tilt(array: np.ndarray, first: FrameInfo, step: np.ndarray, gap: float) -> np.ndarray:
    """Resample a sheared stack (slice step ``step``) onto the orthogonal grid.

    Source grid: index (i, j, k) at ``p0 + i*dx*row + j*dy*col + k*step``; target:
    same but ``k*gap*normal``. Both are LPS, which is SimpleITK's convention.
    """
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    dy, dx = first.pixel_spacing
    length = float(np.linalg.norm(step))
    source = sitk.GetImageFromArray(array)
    source.SetOrigin(tuple(first.position))
    source.SetSpacing((dx, dy, length))
    source.SetDirection(tuple(np.column_stack([row_dir, col_dir, step / length]).ravel()))
    target = sitk.Image(source.GetSize(), sitk.sitkFloat32)
    target.SetOrigin(tuple(first.position))
    target.SetSpacing((dx, dy, abs(gap)))
    normal = slice_normal(first.orientation) * np.sign(gap)
    target.SetDirection(tuple(np.column_stack([row_dir, col_dir, normal]).ravel()))
    resampled = sitk.Resample(source, target, sitk.Transform(), sitk.sitkLinear,
                              float(array.min()), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled).astype(np.float32)
