"""Read one DICOM series into volumes: :func:`read_series`.

What it does, in order:

1. Reads every file (pixel data deferred). Files that are not grey images
   (SEG, SR, PR, KO, RT, documents, colour/RGB images, unreadable files) are
   rejected one by one with the reason.
2. Describes every 2D frame: classic images, enhanced multi-frame images
   (geometry and rescale from shared + per-frame functional groups) and
   Siemens mosaics (tiles, with the mosaic position correction).
3. Groups frames into stacks by orientation, ImageType/FrameType, echo time,
   temporal position, stack ID and b-value; images that repeat positions are
   further split by AcquisitionNumber when that separates them. A series with
   several stacks gives keys ``<uid>.1``, ``<uid>.2``, ... in a stable order.
4. Drops localizers with a rejection: ImageType LOCALIZER, or a stack of at
   most three slices whose plane is orthogonal to another stack of the series.
5. Sorts each stack along the slice normal (``ImagePositionPatient . normal``,
   never file name or InstanceNumber), refuses single slices, fewer than
   ``min_slices`` slices, mixed Rows/Columns or spacing, repeated positions
   and uneven spacing (missing slices); resamples a gantry tilt onto an
   orthogonal grid (see :mod:`dicom_io._stack`); applies rescale
   slope/intercept; returns float32 ``hd.Volume`` objects. Slice gaps may
   vary by 0.02 mm + 5 % of the median gap (scanner rounding); the affine uses
   the mean gap. ImageOrientationPatient rounded in the file is made
   orthonormal (Gram-Schmidt); MONOCHROME1 values are kept as stored (after
   rescale), not inverted.

One bad stack never prevents the others: each becomes a :class:`Rejection`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_io._frames import FrameInfo, describe_frames
from dicom_io._geometry import are_orthogonal, same_orientation
from dicom_io._instances import read_instance, strip_pixels
from dicom_io._stack import sort_and_check, stack_volume
from dicom_io.scan import SeriesFiles
from dicom_io.volume import Rejection, SeriesReadResult, SeriesVolume
from segnode_errors import InputRejected, NotSegmented

__all__ = ["read_series", "SeriesReadResult", "SeriesVolume", "Rejection"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_LOCALIZER_MAX_SLICES = 3


def _refuse_oversized(stack: list[FrameInfo], max_voxels: int | None) -> None:
    """Refuse a stack with more voxels than ``max_voxels``, before decoding it."""
    voxels = len(stack) * stack[0].rows * stack[0].columns
    if max_voxels is not None and voxels > max_voxels:
        raise InputRejected(f"{len(stack)} slices of {stack[0].rows} x {stack[0].columns} are "
                            f"{voxels / 1e6:.1f} M voxels, more than the limit of "
                            f"{max_voxels / 1e6:.1f} M")


def read_series(files: SeriesFiles, *, min_slices: int = 3,
                max_voxels: int | None = None) -> SeriesReadResult:
    """Read the files of one series into one volume per image stack.

    Parameters
    ----------
    files : SeriesFiles
        The files of the series (from :func:`dicom_io.scan.find_series`).
    min_slices : int, optional
        Fewest slices a stack needs to be a volume (default 3; one slice is
        always refused).
    max_voxels : int, optional
        Most voxels a volume may have; a larger stack is refused before its
        pixels are decoded. No limit when omitted.

    Returns
    -------
    SeriesReadResult
        ``volumes``: one :class:`SeriesVolume` per valid stack, float32,
        rescale applied, affine to LPS; ``rejected``: every file or stack not
        read, with a precise reason naming the series key or file.
    """
    uid = files.series_uid
    datasets, paths, rejected = _read_all(files)
    frames: list[FrameInfo] = []
    for index, (ds, path) in enumerate(zip(datasets, paths, strict=True)):
        try:
            frames.extend(describe_frames(ds, index, path.name))
        except InputRejected as exc:
            rejected.append(Rejection(uid, f"series {uid}: {exc}", (str(path),),
                                      ignored=isinstance(exc, NotSegmented)))
    stacks = _group(frames, datasets)
    volumes: list[SeriesVolume] = []
    for n, stack in enumerate(stacks, start=1):
        key = uid if len(stacks) == 1 else f"{uid}.{n}"
        stack_paths = tuple(sorted({str(paths[f.ds_index]) for f in stack}))
        try:
            _refuse_localizer(stack, stacks)
            _refuse_oversized(stack, max_voxels)
            volumes.append(_build(key, stack, datasets, min_slices=min_slices))
        except (InputRejected, ValueError) as exc:  # ValueError: geometry hd.Volume refuses
            rejected.append(Rejection(key, f"series {key}: {exc}", stack_paths,
                                      ignored=isinstance(exc, NotSegmented)))
            logger.info("series %s: stack rejected: %s", key, exc)
    for ds in datasets:
        strip_pixels(ds)
    logger.info("series %s: %d volume(s), %d rejection(s)", uid, len(volumes), len(rejected))
    return SeriesReadResult(volumes=volumes, rejected=rejected)


def _read_all(files: SeriesFiles) -> tuple[list[Dataset], list[Path], list[Rejection]]:
    datasets: list[Dataset] = []
    paths: list[Path] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for path in files.paths:
        try:
            ds = read_instance(Path(path))
        except InputRejected as exc:
            rejected.append(Rejection(files.series_uid, f"series {files.series_uid}: {exc}",
                                      (str(path),), ignored=isinstance(exc, NotSegmented)))
            continue
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        if sop_uid and sop_uid in seen:
            logger.info("series %s: %s repeats SOP instance %s; ignored",
                        files.series_uid, Path(path).name, sop_uid)
            continue
        seen.add(sop_uid)
        datasets.append(ds)
        paths.append(Path(path))
    return datasets, paths, rejected


def _group(frames: Sequence[FrameInfo], datasets: Sequence[Dataset]) -> list[list[FrameInfo]]:
    """Split frames into stacks of one orientation and one grouping key."""
    groups: list[list[FrameInfo]] = []
    for info in frames:
        for group in groups:
            head = group[0]
            if head.group == info.group and same_orientation(head.orientation, info.orientation):
                group.append(info)
                break
        else:
            groups.append([info])
    stacks: list[list[FrameInfo]] = []
    for group in groups:
        stacks.extend(_split_repeats(group, datasets))
    # numbering follows the instances' UIDs, so it does not depend on file names
    return sorted(stacks, key=lambda stack: min(
        (str(datasets[f.ds_index].get("SOPInstanceUID", "")), f.frame or 0, f.tile or 0)
        for f in stack))


def _split_repeats(group: list[FrameInfo], datasets: Sequence[Dataset]) -> list[list[FrameInfo]]:
    """Split by AcquisitionNumber when positions repeat and that separates them."""
    positions = {tuple(round(float(v), 2) for v in f.position) for f in group}
    if len(positions) == len(group) or len(positions) == 1:
        return [group]
    parts: dict[object, list[FrameInfo]] = defaultdict(list)
    for info in group:
        parts[datasets[info.ds_index].get("AcquisitionNumber", None)].append(info)
    unique = all(
        len({tuple(round(float(v), 2) for v in f.position) for f in part}) == len(part)
        for part in parts.values()
    )
    return list(parts.values()) if unique and len(parts) > 1 else [group]


def _refuse_localizer(stack: list[FrameInfo], stacks: list[list[FrameInfo]]) -> None:
    if any(f.localizer for f in stack):
        raise NotSegmented(f"localizer (ImageType LOCALIZER, {len(stack)} images); "
                            "localizers are never segmented")
    if len(stack) <= _LOCALIZER_MAX_SLICES and any(
        other is not stack and are_orthogonal(stack[0].orientation, other[0].orientation)
        for other in stacks
    ):
        raise NotSegmented(f"localizer: {len(stack)} slice(s) orthogonal to another plane of "
                            "the series; localizers are never segmented")


def _frame_of_reference(ds: Dataset) -> str | None:
    """FrameOfReferenceUID (None when absent); refuses a value that is not one valid UID."""
    value = ds.get("FrameOfReferenceUID", None)
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not UID(value).is_valid:
        raise InputRejected(f"FrameOfReferenceUID {str(value)[:80]!r} is not a valid UID")
    return str(value)


def _build(key: str, stack: list[FrameInfo], datasets: Sequence[Dataset], *,
           min_slices: int) -> SeriesVolume:
    ordered = sort_and_check(stack, min_slices=min_slices)
    first_ds = datasets[ordered[0].ds_index]
    volume = stack_volume(ordered, datasets, _frame_of_reference(first_ds))
    sources = [datasets[f.ds_index] for f in ordered]
    if ordered[0].frame is not None:
        if len({id(ds) for ds in sources}) > 1:
            raise InputRejected("a stack spanning several multi-frame instances is not supported")
        source, frames, layout = (first_ds,), tuple(f.frame for f in ordered), "enhanced"
    elif ordered[0].tile is not None:
        source, frames, layout = (first_ds,), (), "mosaic"
    else:
        source, frames, layout = tuple(sources), (), "classic"
    logger.info("series %s: volume %s (%s), spacing %s mm", key, volume.spatial_shape,
                layout, tuple(round(float(s), 4) for s in volume.spacing))
    return SeriesVolume(
        volume=volume,
        key=key,
        source=source,
        modality=str(first_ds.get("Modality", "")),
        study_uid=str(first_ds.get("StudyInstanceUID", "")),
        series_uid=str(first_ds.get("SeriesInstanceUID", "")),
        description=str(first_ds.get("SeriesDescription", "")),
        source_frames=frames,
        layout=layout,
    )
