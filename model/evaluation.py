"""How far a segmentation is from a reference: the metrics of the seed papers.

Per structure, on one voxel grid:

- **Dice** ``2|A∩B| / (|A|+|B|)``.
- **HD95**, the 95th-percentile Hausdorff distance in millimetres, MONAI's
  convention (``compute_hausdorff_distance(percentile=95)``): the surface of a
  mask is its voxels with a face neighbour outside it; for each surface voxel
  of one mask the distance to the nearest surface voxel of the other (computed
  with SimpleITK's ``SignedMaurerDistanceMap`` on the other's surface, in
  physical units from the grid's spacing); HD95 is the larger of the two
  directed 95th percentiles. Undefined (None) when one mask is empty.
- **Volumes** of both, in millilitres, from the voxel volume of the affine.
- **Vessel consistency** (MRSegmentator, Häntze et al.): whether a vessel
  structure is one 26-connected component; reported for vessel classes only.

Structures absent from both are not scored. Work is done in each structure's
bounding box (both masks, one voxel of margin), so a small organ in a
whole-body grid costs what the organ costs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from model.components import component_sizes
from model.labels import LabelTable, Structure

__all__ = ["StructureScore", "VESSEL_TYPE_CODES", "hd95_mm", "is_vessel", "score"]

#: SNOMED CT type codes of the vessel classes whose connectivity is reported: the
#: MRSegmentator vessels, which TotalSegmentator MRI and MRAnnotator share.
VESSEL_TYPE_CODES = frozenset({
    "15825003",   # aorta
    "64131007",   # inferior vena cava
    "110765007",  # portal vein and splenic vein
    "73634005",   # common iliac artery
    "46027005",   # common iliac vein
})

#: The face neighbourhood that defines a mask's surface (as scipy's and MONAI's erosion).
_FACES = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class StructureScore:
    """The metrics of one structure.

    Parameters
    ----------
    label, name
        Label value and name in the model pack's table.
    dice
        Dice coefficient, 0..1.
    hd95_mm
        95th-percentile Hausdorff distance (mm); None when one side is empty.
    volume_ml, reference_volume_ml
        Volumes of the evaluated segmentation and of the reference.
    connected, reference_connected
        For vessel classes, whether each is one 26-connected component
        (False when empty); None for other structures.
    """

    label: int
    name: str
    dice: float
    hd95_mm: float | None
    volume_ml: float
    reference_volume_ml: float
    connected: bool | None
    reference_connected: bool | None

    @property
    def volume_change_ml(self) -> float:
        """Reference volume minus evaluated volume (a correction's added volume)."""
        return self.reference_volume_ml - self.volume_ml

    @property
    def volume_change_pct(self) -> float | None:
        """Volume change relative to the evaluated volume; None when that is empty."""
        if self.volume_ml == 0:
            return None
        return 100.0 * self.volume_change_ml / self.volume_ml


def is_vessel(structure: Structure) -> bool:
    """True for the vessel classes whose connectivity is reported."""
    return structure.type_code.scheme == "SCT" and structure.type_code.value in VESSEL_TYPE_CODES


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the array axes (k, j, i)."""
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)


def _distance_to(surface: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest voxel of ``surface`` (0 on it)."""
    image = sitk.GetImageFromArray(surface.astype(np.uint8))
    image.SetSpacing(spacing[::-1])  # SimpleITK's x is the last array axis
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False,
                                            squaredDistance=False, useImageSpacing=True)
    return np.maximum(sitk.GetArrayViewFromImage(distance), 0.0)


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
    """The 95th-percentile Hausdorff distance between two boolean masks (None if one is empty).

    ``spacing`` is the voxel size in mm along the array axes. The masks are
    padded by one voxel so a mask touching the grid's edge has a surface there.
    """
    if not a.any() or not b.any():
        return None
    a = np.pad(a, 1)
    b = np.pad(b, 1)
    surface_a, surface_b = _surface(a), _surface(b)
    a_to_b = _distance_to(surface_b, spacing)[surface_a]
    b_to_a = _distance_to(surface_a, spacing)[surface_b]
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def _boxes(array: np.ndarray, labels: Iterable[int]) -> dict[int, tuple[slice, ...]]:
    wanted = sorted(set(labels))
    if not wanted:
        return {}
    top = max(wanted)
    clipped = np.where(array <= top, array, 0)
    found = ndimage.find_objects(clipped, max_label=top)
    return {label: found[label - 1] for label in wanted if found[label - 1] is not None}


def _union(first: tuple[slice, ...] | None, second: tuple[slice, ...] | None,
           shape: tuple[int, ...]) -> tuple[slice, ...]:
    boxes = [box for box in (first, second) if box is not None]
    return tuple(slice(max(0, min(b[axis].start for b in boxes) - 1),
                       min(shape[axis], max(b[axis].stop for b in boxes) + 1))
                 for axis in range(3))


def _check_grids(evaluated: hd.Volume, reference: hd.Volume) -> None:
    if evaluated.spatial_shape != reference.spatial_shape or not np.allclose(
            evaluated.affine, reference.affine, atol=1e-3):
        raise ValueError(
            "Arguments 'evaluated' and 'reference' must be on one grid, got shapes "
            f"{evaluated.spatial_shape} and {reference.spatial_shape} with affines "
            f"{np.round(evaluated.affine, 3).tolist()} and "
            f"{np.round(reference.affine, 3).tolist()}.")


def score(evaluated: hd.Volume, reference: hd.Volume, table: LabelTable, *,
          labels: Iterable[int] | None = None) -> list[StructureScore]:
    """Score ``evaluated`` against ``reference`` per structure of ``table``.

    Parameters
    ----------
    evaluated, reference
        Integer label volumes on one grid (the values are ``table``'s).
    table
        Names the labels and tells vessels apart.
    labels
        Restrict to these label values (default: every label of ``table``).

    Raises
    ------
    ValueError
        If the grids differ.
    """
    _check_grids(evaluated, reference)
    wanted = [s.index for s in table] if labels is None else sorted(set(labels))
    a_array, b_array = evaluated.array, reference.array
    a_boxes, b_boxes = _boxes(a_array, wanted), _boxes(b_array, wanted)
    spacing = _spacing(evaluated.affine)
    voxel_ml = abs(float(np.linalg.det(evaluated.affine[:3, :3]))) / 1000.0
    scores = []
    for label in wanted:
        if label not in a_boxes and label not in b_boxes:
            continue
        box = _union(a_boxes.get(label), b_boxes.get(label), a_array.shape)
        a, b = a_array[box] == label, b_array[box] == label
        count_a, count_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
        overlap = int(np.count_nonzero(a & b))
        structure = table.by_index(label) if label in table else None
        vessel = structure is not None and is_vessel(structure)
        scores.append(StructureScore(
            label=label,
            name=structure.name if structure is not None else f"label_{label}",
            dice=2.0 * overlap / (count_a + count_b),
            hd95_mm=hd95_mm(a, b, spacing),
            volume_ml=count_a * voxel_ml,
            reference_volume_ml=count_b * voxel_ml,
            connected=_one_component(a) if vessel else None,
            reference_connected=_one_component(b) if vessel else None,
        ))
    return scores


def _one_component(mask: np.ndarray) -> bool:
    return len(component_sizes(mask)) == 1

