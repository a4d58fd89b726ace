"""Stitch the stations of a multi-station acquisition into one volume, and map labels back.

:func:`stitch` resamples every station onto one grid in patient space
(SimpleITK, linear), matches the intensity of each station to its
neighbour's over their overlap (MR signal differs from station to station:
a multiplicative factor, chained from the first station), and blends
overlaps with a linear ramp along the stacking axis. The grid has the
orientation of the first station, the finest in-plane spacing and the
finest slice spacing of the stations, and covers the union of their
extents. Where no station reaches (a gap between stations) the stitched
image is 0 and the gap is reported.

:func:`labels_to_station` maps a label volume on the stitched grid back
onto one station's own grid (nearest neighbour), so a SEG can be written
for that station's series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk

from segnode_errors import InputRejected

__all__ = ["Gap", "StitchResult", "stitch", "labels_to_station", "stitched_grid"]

#: Stations whose extents are this close (mm) count as adjacent, not as a gap.
ADJACENT_TOLERANCE_MM = 0.5
_ORIENTATION_ATOL = 1e-3
#: Share of a station's robust maximum above which an overlap voxel is foreground.
_FOREGROUND_FRACTION = 0.1
#: Width (mm) of the slabs compared for intensity matching when stations only touch.
_BORDER_SLAB_MM = 10.0


@dataclass(frozen=True)
class Gap:
    """A stretch along the stacking axis that no station covers.

    ``after`` is the index (in stacking order) of the station before the gap;
    ``size_mm`` its length.
    """

    after: int
    size_mm: float


@dataclass(frozen=True)
class StitchResult:
    """The stitched image and how it was made.

    Attributes
    ----------
    volume : highdicom.Volume
        float32 image on the stitched grid (frame of reference of the first station).
    order : tuple of int
        Indices of the input stations in stacking order.
    scales : tuple of float
        Intensity factor applied to each input station (input order).
    gaps : tuple of Gap
        Stretches no station covers.
    stack_axis : int
        Array axis (0, 1, 2 = k, j, i) of the stitched grid along which the
        stations follow each other.
    """

    volume: hd.Volume
    order: tuple[int, ...]
    scales: tuple[float, ...]
    gaps: tuple[Gap, ...]
    stack_axis: int


def _corners(volume: hd.Volume) -> np.ndarray:
    """LPS positions (8, 3) of the outer corners of a volume's voxels."""
    shape = np.asarray(volume.spatial_shape, dtype=float)
    lows, highs = -0.5 * np.ones(3), shape - 0.5
    grid = np.array(np.meshgrid(*zip(lows, highs, strict=True), indexing="ij")).reshape(3, -1)
    return (volume.affine[:3, :3] @ grid).T + volume.affine[:3, 3]


def _check_orientations(stations: Sequence[hd.Volume]) -> np.ndarray:
    """The unit axes of the first station; every station must share them up to sign."""
    axes = stations[0].direction
    for index, station in enumerate(stations[1:], start=1):
        # Axis by axis (k with k, j with j, i with i); only the sign may differ.
        dots = np.abs(np.sum(axes * station.direction, axis=0))
        if not np.allclose(dots, 1.0, atol=_ORIENTATION_ATOL):
            raise InputRejected(
                f"Station {index} is oriented differently from station 0; stations must share "
                "their patient orientation to be stitched.")
    return axes


def stitched_grid(stations: Sequence[hd.Volume]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the grid covering all stations (see the module docstring)."""
    axes = _check_orientations(stations)
    spacing = np.min([_spacing_along(axes, s) for s in stations], axis=0)
    projected = np.concatenate([_corners(s) @ axes for s in stations])
    low, high = projected.min(axis=0), projected.max(axis=0)
    shape = tuple(int(n) for n in np.maximum(1, np.round((high - low) / spacing)))
    first_centre = low + spacing / 2
    affine = np.eye(4)
    affine[:3, :3] = axes * spacing
    affine[:3, 3] = axes @ first_centre
    return affine, shape  # type: ignore[return-value]


def _spacing_along(axes: np.ndarray, volume: hd.Volume) -> np.ndarray:
    """A station's voxel size along each of ``axes`` (mm)."""
    steps = np.abs(axes.T @ (volume.direction * np.asarray(volume.spacing)))
    return steps.max(axis=1)


def _box(volume: hd.Volume, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous index range (low, high) of a station's extent on the stitched grid."""
    inverse = np.linalg.inv(affine)
    corners = (inverse[:3, :3] @ _corners(volume).T).T + inverse[:3, 3]
    return corners.min(axis=0), corners.max(axis=0)


def _sitk_geometry(affine: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """SimpleITK origin, spacing and direction of a (k, j, i) affine (SimpleITK's x is i)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = (affine[:3, :3] / spacing)[:, ::-1]
    return affine[:3, 3].tolist(), spacing[::-1].tolist(), direction.flatten().tolist()


def _to_sitk(volume: hd.Volume, dtype: type) -> sitk.Image:
    """The volume as a SimpleITK image of ``dtype``, copied once (array order kept)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=dtype))
    origin, spacing, direction = _sitk_geometry(volume.affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def _resample_onto(image: sitk.Image, affine: np.ndarray, shape: Sequence[int],
                   interpolator: int, pixel_type: int) -> np.ndarray:
    """``image`` resampled onto the grid (affine, shape); returns a (k, j, i) array."""
    origin, spacing, direction = _sitk_geometry(affine)
    size = [int(n) for n in shape][::-1]
    resampled = sitk.Resample(image, size, sitk.Transform(), interpolator, origin, spacing,
                              direction, 0, pixel_type)
    return sitk.GetArrayFromImage(resampled)


def _index_box(box: tuple[np.ndarray, np.ndarray], shape: Sequence[int],
               margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Integer index range [lo, hi) of the voxel centres inside a continuous box."""
    low, high = box
    lo = np.maximum(np.ceil(low).astype(int) - margin, 0)
    hi = np.minimum(np.floor(high).astype(int) + 1 + margin, np.asarray(shape))
    return lo, hi


def _sub_affine(affine: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Affine of the sub-grid of ``affine`` starting at index ``lo``."""
    sub = affine.copy()
    sub[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return sub


def _ramps(boxes: list[tuple[np.ndarray, np.ndarray]], order: list[int], axis: int,
           length: int) -> dict[int, np.ndarray]:
    """Blend weight of each station along the stacking axis (linear over overlaps)."""
    index = np.arange(length, dtype=np.float64)
    weights = {}
    for rank, station in enumerate(order):
        low, high = boxes[station][0][axis], boxes[station][1][axis]
        weight = ((index >= low) & (index <= high)).astype(np.float64)
        if rank > 0:
            prev_high = boxes[order[rank - 1]][1][axis]
            if prev_high > low:
                weight *= np.clip((index - low) / (prev_high - low), 0.0, 1.0)
        if rank < len(order) - 1:
            next_low = boxes[order[rank + 1]][0][axis]
            if next_low < high:
                weight *= np.clip((high - index) / (high - next_low), 0.0, 1.0)
        weights[station] = np.maximum(weight, 1e-3 * (weight > 0))
    return weights


def _window(part: tuple[np.ndarray, np.ndarray], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The voxels of a resampled box (array, its first grid index) in grid range [lo, hi)."""
    array, start = part
    return array[tuple(slice(int(a - s), int(b - s))
                       for a, b, s in zip(lo, hi, start, strict=True))]


def _foreground(values: np.ndarray) -> float:
    positive = values[values > 0]
    return float(_FOREGROUND_FRACTION * np.percentile(positive, 99)) if positive.size else 0.0


def _ratio(previous: tuple[np.ndarray, np.ndarray], current: tuple[np.ndarray, np.ndarray],
           axis: int, spacing_mm: float) -> float:
    """Mean of the previous station over mean of the current one where they meet.

    Each station comes as its resampled box and the grid index of the box's
    first voxel. Overlapping stations are compared voxel by voxel over the
    common part of their boxes (both in the foreground); touching stations
    over slabs on either side of the junction. Across a gap nothing is
    comparable and the factor is 1.
    """
    (a_array, a_lo), (b_array, b_lo) = previous, current
    a_hi, b_hi = a_lo + np.asarray(a_array.shape), b_lo + np.asarray(b_array.shape)
    lo, hi = np.maximum(a_lo, b_lo), np.minimum(a_hi, b_hi)
    if hi[axis] > lo[axis]:
        a, b = _window(previous, lo, hi), _window(current, lo, hi)
        both = (a > _foreground(a)) & (b > _foreground(b))
        a, b = a[both], b[both]
    elif (b_lo[axis] - a_hi[axis]) * spacing_mm <= ADJACENT_TOLERANCE_MM + spacing_mm:
        width = max(1, int(round(_BORDER_SLAB_MM / spacing_mm)))
        a_lo_slab, b_hi_slab = a_lo.copy(), b_hi.copy()
        a_lo_slab[axis] = max(a_hi[axis] - width, a_lo[axis])
        b_hi_slab[axis] = min(b_lo[axis] + width, b_hi[axis])
        a, b = _window(previous, a_lo_slab, a_hi), _window(current, b_lo, b_hi_slab)
        a, b = a[a > _foreground(a)], b[b > _foreground(b)]
    else:
        return 1.0
    if a.size < 10 or b.size < 10 or b.mean() <= 0:
        return 1.0
    return float(a.mean() / b.mean())


def stitch(stations: Sequence[hd.Volume], *, match_intensities: bool = True) -> StitchResult:
    """Stitch ``stations`` (same patient orientation) into one volume.

    Parameters
    ----------
    stations : sequence of highdicom.Volume
        Two or more station images, in any order.
    match_intensities : bool
        Scale each station to its neighbour over their overlap (MR); off for CT.

    Returns
    -------
    StitchResult
        The stitched image, the stacking order, the intensity factors and the gaps.

    Raises
    ------
    InputRejected
        If fewer than two stations are given or their orientations differ.
    """
    if len(stations) < 2:
        raise InputRejected(f"Stitching needs at least two stations, got {len(stations)}.")
    affine, shape = stitched_grid(stations)
    boxes = [_box(s, affine) for s in stations]
    centres = np.array([(low + high) / 2 for low, high in boxes])
    axis = int(np.argmax(centres.max(axis=0) - centres.min(axis=0)))
    order = sorted(range(len(stations)), key=lambda n: centres[n][axis])
    spacing_mm = float(np.linalg.norm(affine[:3, axis]))
    weights = _ramps(boxes, order, axis, shape[axis])
    numerator = np.zeros(shape, np.float32)
    denominator = np.zeros(shape, np.float32)
    scales = [1.0] * len(stations)
    previous: tuple[np.ndarray, np.ndarray] | None = None
    for rank, station in enumerate(order):
        # Each station is resampled onto its own box of the grid only.
        lo, hi = _index_box(boxes[station], shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        resampled = _resample_onto(_to_sitk(stations[station], np.float32),
                                   _sub_affine(affine, lo), hi - lo, sitk.sitkLinear,
                                   sitk.sitkFloat32)
        current = (resampled, lo)
        if match_intensities and previous is not None:
            factor = _ratio(previous, current, axis, spacing_mm)
            scales[station] = scales[order[rank - 1]] * factor
        view = [1, 1, 1]
        view[axis] = int(hi[axis] - lo[axis])
        weight = weights[station][lo[axis]:hi[axis]].astype(np.float32).reshape(view)
        numerator[box] += resampled * (weight * np.float32(scales[station]))
        denominator[box] += weight
        previous = current
    # numerator is 0 wherever denominator is: dividing in place is exact.
    image = np.divide(numerator, denominator, out=numerator, where=denominator > 0)
    gaps = _gaps(boxes, order, axis, spacing_mm)
    volume = hd.Volume(image, affine, coordinate_system="PATIENT",
                       frame_of_reference_uid=stations[0].frame_of_reference_uid)
    return StitchResult(volume, tuple(order), tuple(scales), gaps, axis)


def _gaps(boxes: list[tuple[np.ndarray, np.ndarray]], order: list[int], axis: int,
          spacing_mm: float) -> tuple[Gap, ...]:
    gaps = []
    reach = boxes[order[0]][1][axis]
    for rank in range(1, len(order)):
        low, high = boxes[order[rank]][0][axis], boxes[order[rank]][1][axis]
        size_mm = (low - reach) * spacing_mm
        if size_mm > ADJACENT_TOLERANCE_MM:
            gaps.append(Gap(after=rank - 1, size_mm=round(float(size_mm), 1)))
        reach = max(reach, high)
    return tuple(gaps)


def labels_to_station(labels: hd.Volume, station: hd.Volume) -> hd.Volume:
    """Labels on the stitched grid resampled onto ``station``'s grid (nearest neighbour).

    Only the part of the label grid around the station (one voxel of margin)
    is converted and resampled.
    """
    lo, hi = _index_box(_box(station, labels.affine), labels.spatial_shape, margin=1)
    crop = labels.array[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))]
    pixel_type = sitk.sitkUInt8 if labels.array.max(initial=0) < 256 else sitk.sitkUInt16
    dtype = np.uint8 if pixel_type == sitk.sitkUInt8 else np.uint16
    cropped = hd.Volume(crop, _sub_affine(labels.affine, lo), coordinate_system="PATIENT")
    array = _resample_onto(_to_sitk(cropped, dtype), station.affine, station.spatial_shape,
                           sitk.sitkNearestNeighbor, pixel_type)
    return hd.Volume(array.astype(labels.dtype, copy=False), station.affine.copy(),
                     coordinate_system="PATIENT",
                     frame_of_reference_uid=station.frame_of_reference_uid)
