"""Volumes and mean intensities of labelled structures.

One pass over the volume with ``numpy.bincount``; the voxel volume comes from
the label Volume's affine (true slice spacing from positions, never
SliceThickness).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import highdicom as hd
import numpy as np

from model.qc import touches_fov_edge

__all__ = ["StructureMeasurement", "measure"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class StructureMeasurement:
    """Volumetry of one structure.

    Parameters
    ----------
    label : int
        Label value.
    name : str
        Label name.
    voxel_count : int
        Number of voxels with this label.
    volume_ml : float
        ``voxel_count * voxel volume (mm3) / 1000``.
    mean_intensity : float or None
        Mean image value over the structure; None without an image.
    intensity_unit : str or None
        Unit of ``mean_intensity`` (e.g. ``"HU"``), as given to
        :func:`measure`.
    touches_fov_edge : bool
        The structure reaches an outer face of the grid, so its volume may
        be incomplete.
    """

    label: int
    name: str
    voxel_count: int
    volume_ml: float
    mean_intensity: float | None
    intensity_unit: str | None
    touches_fov_edge: bool


def _validate(labels: hd.Volume, image: hd.Volume | None) -> None:
    if labels.array.ndim != 3 or not np.issubdtype(labels.array.dtype, np.integer):
        raise ValueError(
            "Argument 'labels' must be a 3D integer volume, got "
            f"{labels.array.dtype} with shape {labels.array.shape}."
        )
    if labels.array.size and labels.array.min() < 0:
        raise ValueError("Argument 'labels' must not hold negative values.")
    if image is not None and (
        image.array.shape != labels.array.shape
        or not np.allclose(image.affine, labels.affine, atol=1e-4)
    ):
        raise ValueError(
            "Argument 'image' must be on the grid of 'labels': got shape "
            f"{image.array.shape} vs {labels.array.shape} or a different affine."
        )


def measure(
    labels: hd.Volume,
    image: hd.Volume | None,
    label_names: Mapping[int, str],
    *,
    intensity_unit: str | None = None,
) -> list[StructureMeasurement]:
    """Measure every named structure present in a label volume.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer labels, array (k, j, i), affine to LPS mm.
    image : highdicom.Volume or None
        The image on the same grid (rescaled values, e.g. HU for CT); when
        None, mean intensities are None.
    label_names : mapping of int to str
        Label value to name; labels not in it are ignored (and logged).
    intensity_unit : str, optional
        Unit of the image values, copied into the results.

    Returns
    -------
    list of StructureMeasurement
        One per named label present, in label order.

    Raises
    ------
    ValueError
        If ``labels`` is not a 3D non-negative integer volume or ``image``
        is not on its grid.
    """
    _validate(labels, image)
    counts, sums = _counts_and_sums(labels.array, None if image is None else image.array)
    voxel_mm3 = float(abs(np.linalg.det(labels.affine[:3, :3])))
    edge = touches_fov_edge(labels)
    unnamed = [v for v in np.flatnonzero(counts)[1:] if int(v) not in label_names]
    if unnamed:
        logger.warning("Ignoring %d label values without a name: %s", len(unnamed), unnamed)
    out = []
    for value in np.flatnonzero(counts):
        value = int(value)
        if value == 0 or value not in label_names:
            continue
        n = int(counts[value])
        out.append(StructureMeasurement(
            label=value, name=label_names[value], voxel_count=n,
            volume_ml=n * voxel_mm3 / 1000.0,
            mean_intensity=float(sums[value] / n) if sums is not None else None,
            intensity_unit=intensity_unit if sums is not None else None,
            touches_fov_edge=value in edge,
        ))
    return out


def _counts_and_sums(labels: np.ndarray, image: np.ndarray | None,
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Voxel count and intensity sum (float64) per label value, one plane at a time.

    Plane by plane the int64 and float64 copies bincount needs stay small
    (a whole-volume call makes a copy eight times the size of the labels).
    """
    length = int(labels.max()) + 1
    counts = np.zeros(length, np.int64)
    sums = None if image is None else np.zeros(length, np.float64)
    for k in range(labels.shape[0]):
        plane = labels[k].ravel()
        counts += np.bincount(plane, minlength=length)
        if sums is not None:
            sums += np.bincount(plane, weights=image[k].ravel().astype(np.float64),
                                minlength=length)
    return counts, sums
