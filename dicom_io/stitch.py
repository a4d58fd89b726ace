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

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk

from segnode_errors import InputRejected

__all__ = ["Gap", "StitchResult", "stitch", "labels_to_station", "stitched_grid"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

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


def _resample(station: hd.Volume, reference: sitk.Image) -> np.ndarray:
    image = station.astype(np.float32).to_simpleitk()
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32)
    return hd.Volume.from_simpleitk(resampled).array


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


def _slab(array: np.ndarray, axis: int, start: float, stop: float) -> np.ndarray:
    lo, hi = int(np.ceil(start)), int(np.floor(stop)) + 1
    index = [slice(None)] * 3
    index[axis] = slice(max(lo, 0), max(hi, 0))
    return array[tuple(index)]


def _foreground(values: np.ndarray) -> float:
    positive = values[values > 0]
    return float(_FOREGROUND_FRACTION * np.percentile(positive, 99)) if positive.size else 0.0


def _ratio(previous: np.ndarray, current: np.ndarray, prev_high: float, cur_low: float,
           axis: int, spacing_mm: float) -> float:
    """Mean of the previous station over mean of the current one where they meet.

    Overlapping stations are compared voxel by voxel over the overlap (both in
    the foreground); touching stations over slabs on either side of the
    junction. Across a gap nothing is comparable and the factor is 1.
    """
    if prev_high > cur_low:
        a = _slab(previous, axis, cur_low, prev_high)
        b = _slab(current, axis, cur_low, prev_high)
        both = (a > _foreground(a)) & (b > _foreground(b))
        a, b = a[both], b[both]
    elif (cur_low - prev_high) * spacing_mm <= ADJACENT_TOLERANCE_MM + spacing_mm:
        width = _BORDER_SLAB_MM / spacing_mm
        a = _slab(previous, axis, prev_high - width, prev_high)
        b = _slab(current, axis, cur_low, cur_low + width)
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
    reference = hd.Volume(np.zeros(shape, np.uint8), affine, coordinate_system="PATIENT",
                          frame_of_reference_uid=stations[0].frame_of_reference_uid)
    reference_image = reference.to_simpleitk()
    spacing_mm = float(np.linalg.norm(affine[:3, axis]))
    weights = _ramps(boxes, order, axis, shape[axis])
    numerator = np.zeros(shape, np.float32)
    denominator = np.zeros(shape, np.float32)
    scales = [1.0] * len(stations)
    previous: np.ndarray | None = None
    for rank, station in enumerate(order):
        resampled = _resample(stations[station], reference_image)
        if match_intensities and previous is not None:
            factor = _ratio(previous, resampled, boxes[order[rank - 1]][1][axis],
                            boxes[station][0][axis], axis, spacing_mm)
            scales[station] = scales[order[rank - 1]] * factor
        covered = _covered(resampled.shape, boxes[station])
        shape_1d = [1, 1, 1]
        shape_1d[axis] = shape[axis]
        weight = (weights[station].reshape(shape_1d) * covered).astype(np.float32)
        previous = resampled
        numerator += weight * resampled * np.float32(scales[station])
        denominator += weight
    image = np.divide(numerator, denominator, out=np.zeros_like(numerator),
                      where=denominator > 0)
    gaps = _gaps(boxes, order, axis, spacing_mm)
    for gap in gaps:
        logger.warning("gap of %.1f mm after station %d (in stacking order)", gap.size_mm,
                       gap.after)
    volume = hd.Volume(image, affine, coordinate_system="PATIENT",
                       frame_of_reference_uid=stations[0].frame_of_reference_uid)
    return StitchResult(volume, tuple(order), tuple(scales), gaps, axis)


def _covered(shape: tuple[int, ...], box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """1 inside a station's extent on the stitched grid, 0 outside (broadcastable mask)."""
    low, high = box
    masks = []
    for axis, n in enumerate(shape):
        index = np.arange(n)
        view = [1, 1, 1]
        view[axis] = n
        masks.append(((index >= low[axis]) & (index <= high[axis])).reshape(view))
    return masks[0] & masks[1] & masks[2]


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
    """Labels on the stitched grid resampled onto ``station``'s grid (nearest neighbour)."""
    source = labels.astype(np.uint16).to_simpleitk()
    target = hd.Volume(np.zeros(station.spatial_shape, np.uint8), station.affine,
                       coordinate_system="PATIENT",
                       frame_of_reference_uid=station.frame_of_reference_uid).to_simpleitk()
    resampled = sitk.Resample(source, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              sitk.sitkUInt16)
    array = hd.Volume.from_simpleitk(resampled).array
    return hd.Volume(np.ascontiguousarray(array.astype(labels.dtype)), station.affine.copy(),
                     coordinate_system="PATIENT",
                     frame_of_reference_uid=station.frame_of_reference_uid)
