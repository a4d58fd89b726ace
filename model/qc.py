"""Quality-control flags on a label volume.

All checks work on a ``highdicom.Volume`` of integer labels and plain label
names; no DICOM datasets. Flags are advisory: they are shown to the reader
(SR qualitative evaluation, dashboard), they never stop a job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from scipy import ndimage

from model.components import component_sizes

__all__ = [
    "FOV_EDGE",
    "LATERALITY",
    "FRAGMENTED",
    "QCFlag",
    "touches_fov_edge",
    "laterality_flags",
    "fragment_flags",
    "check",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

FOV_EDGE = "fov_edge"
LATERALITY = "laterality_swapped"
FRAGMENTED = "fragmented"


@dataclass(frozen=True)
class QCFlag:
    """One finding of a QC check.

    Parameters
    ----------
    label : int
        Label value the flag is about.
    code : str
        ``"fov_edge"``, ``"laterality_swapped"`` or ``"fragmented"``.
    message : str
        Human-readable explanation (no patient data).
    """

    label: int
    code: str
    message: str


def touches_fov_edge(labels: hd.Volume) -> set[int]:
    """Return the labels with at least one voxel on an outer face of the grid.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer labels, array (k, j, i).

    Returns
    -------
    set of int
        Non-zero labels found on the first/last slice or on the in-plane
        edges (first/last row and column) of any slice.
    """
    a = labels.array
    faces = (a[0], a[-1], a[:, 0, :], a[:, -1, :], a[:, :, 0], a[:, :, -1])
    found: set[int] = set()
    for face in faces:
        found.update(int(v) for v in np.unique(face))
    found.discard(0)
    return found


def _centroids_lps(labels: hd.Volume, wanted: set[int]) -> dict[int, np.ndarray]:
    """Centroid in LPS mm of each wanted label, computed on its bounding box."""
    a = labels.array
    boxes = ndimage.find_objects(a, max_label=max(wanted)) if wanted else []
    out: dict[int, np.ndarray] = {}
    for value in wanted:
        box = boxes[value - 1] if value - 1 < len(boxes) else None
        if box is None:
            continue
        idx = np.argwhere(a[box] == value).mean(axis=0)
        idx += [s.start for s in box]
        out[value] = labels.affine[:3, :3] @ idx + labels.affine[:3, 3]
    return out


def _pairs(label_names: Mapping[int, str]) -> list[tuple[int, int, str]]:
    """(left label, right label, structure) for every left_*/right_* pair."""
    by_name = {name: value for value, name in label_names.items()}
    pairs = []
    for name, value in sorted(by_name.items()):
        if name.startswith("left_") and f"right_{name[5:]}" in by_name:
            pairs.append((value, by_name[f"right_{name[5:]}"], name[5:]))
    return pairs


def laterality_flags(labels: hd.Volume, label_names: Mapping[int, str]) -> list[QCFlag]:
    """Flag left/right pairs whose centroids are on the wrong sides.

    In LPS, +x points to the patient's left, so the centroid of ``left_X``
    must have a larger x than that of ``right_X``. Both labels of a flagged
    pair get a flag.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer labels with an LPS affine.
    label_names : mapping of int to str
        Label value to name (``left_*`` / ``right_*`` pairs are checked).

    Returns
    -------
    list of QCFlag
    """
    pairs = _pairs(label_names)
    centroids = _centroids_lps(labels, {v for p in pairs for v in p[:2]})
    flags = []
    for left, right, structure in pairs:
        if left in centroids and right in centroids and centroids[left][0] <= centroids[right][0]:
            msg = (f"left_{structure} centroid (x={centroids[left][0]:.1f} mm) is not left of "
                   f"right_{structure} (x={centroids[right][0]:.1f} mm): sides may be swapped")
            flags += [QCFlag(left, LATERALITY, msg), QCFlag(right, LATERALITY, msg)]
    return flags


def fragment_flags(
    labels: hd.Volume, label_names: Mapping[int, str], *, min_largest_fraction: float = 0.9
) -> list[QCFlag]:
    """Flag structures whose largest connected component is too small a share.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer labels.
    label_names : mapping of int to str
        Names for the messages; every present label is checked.
    min_largest_fraction : float
        A structure is flagged when its largest 26-connected component holds
        less than this fraction of its voxels.

    Returns
    -------
    list of QCFlag
    """
    a = labels.array
    boxes = ndimage.find_objects(a)
    flags = []
    for index, box in enumerate(boxes):
        if box is None:
            continue
        value = index + 1
        sizes = component_sizes(a[box] == value)
        n = len(sizes)
        if n < 2:
            continue
        fraction = float(sizes.max() / sizes.sum())
        if fraction < min_largest_fraction:
            name = label_names.get(value, str(value))
            flags.append(QCFlag(value, FRAGMENTED, (
                f"{name} is in {n} pieces; the largest holds {fraction:.0%} of its voxels")))
    return flags


def check(
    labels: hd.Volume, label_names: Mapping[int, str], *, min_largest_fraction: float = 0.9
) -> list[QCFlag]:
    """Run every QC check.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer labels, array (k, j, i), LPS affine.
    label_names : mapping of int to str
        Label value to name.
    min_largest_fraction : float
        See :func:`fragment_flags`.

    Returns
    -------
    list of QCFlag
        Field-of-view edge flags (label order), then laterality, then
        fragment flags.
    """
    flags = [
        QCFlag(v, FOV_EDGE, f"{label_names.get(v, v)} touches the edge of the field of "
               "view: its volume may be incomplete")
        for v in sorted(touches_fov_edge(labels))
    ]
    flags += laterality_flags(labels, label_names)
    flags += fragment_flags(labels, label_names, min_largest_fraction=min_largest_fraction)
    logger.info("QC: %d flags", len(flags))
    return flags
