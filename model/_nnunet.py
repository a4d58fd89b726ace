"""The one conversion between ``highdicom.Volume`` and nnU-Net's arrays.

Axis conventions
----------------
``highdicom.Volume``
    ``array[k, j, i]`` (slice, row, column); ``affine`` maps ``(k, j, i, 1)``
    to patient LPS millimetres; ``spacing`` is given per array axis
    ``(k, j, i)``.
nnU-Net
    The image array is ``(c, z, y, x)`` and ``properties["spacing"]`` is
    ``(sz, sy, sx)`` in mm, i.e. one spacing per array axis in array order.
    nnU-Net's default reader (SimpleITK) produces this as
    ``GetArrayFromImage(image)`` of an ITK image whose voxel axes are
    ``(x, y, z)``, and ``spacing[::-1]``.
Pack ``input_orientation``
    The orientation the model was trained in, written the ITK / DICOMOrient
    way: one letter per ITK voxel axis ``(x, y, z)``, naming the patient
    direction in which that index increases. MRSegmentator reorients with
    ``DICOMOrient(image, "LPS")`` before inference, so its arrays are
    ``[z, y, x] = [S, P, L]``.

The mapping is therefore: reorder the Volume (permutations and flips only,
never resampling) so that its array axes ``(k, j, i)`` point towards the
*reversed* orientation string (``"LPS"`` -> highdicom ``"SPL"``), then
``array[k, j, i]`` is nnU-Net's ``[z, y, x]`` and ``Volume.spacing`` is
nnU-Net's ``(sz, sy, sx)`` unchanged. Labels come back as ``[z, y, x]`` on
that reordered grid and are permuted/flipped back onto the exact source grid
(same affine, same shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np

from segnode_errors import InputRejected, ModelError

__all__ = ["NnunetInput", "volume_to_nnunet", "labels_from_nnunet", "validate_orientation"]

_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


@dataclass(frozen=True)
class NnunetInput:
    """An image ready for nnU-Net and the geometry needed to map labels back.

    Attributes
    ----------
    array : numpy.ndarray
        float32, shape ``(1, z, y, x)``, C-contiguous.
    spacing : tuple of float
        ``(sz, sy, sx)`` in mm, matching the axes of ``array[0]``.
    model_grid : highdicom.VolumeGeometry
        Geometry of ``array[0]`` (the source reordered to the model orientation).
    source_grid : highdicom.VolumeGeometry
        Geometry of the input volume; labels are returned on this grid.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    model_grid: hd.VolumeGeometry
    source_grid: hd.VolumeGeometry


def validate_orientation(orientation: str) -> str:
    """Check an ITK-style orientation code such as ``"LPS"`` or ``"LAS"``.

    Parameters
    ----------
    orientation : str
        Three letters from L/R, A/P, S/I (one of each pair), for the ITK
        voxel axes ``(x, y, z)``.

    Returns
    -------
    str
        The code in upper case.

    Raises
    ------
    ModelError
        If the code is not a valid orientation.
    """
    code = str(orientation).upper()
    pairs = {frozenset(p) for p in ("LR", "AP", "SI")}
    if len(code) != 3 or any(c not in _OPPOSITE for c in code) or {
        frozenset((c, _OPPOSITE[c])) for c in code
    } != pairs:
        raise ModelError(
            f"Invalid 'input_orientation' value '{orientation}' - expected three letters, one "
            "of each of L/R, A/P, S/I (e.g. 'LPS')."
        )
    return code


def volume_to_nnunet(image: hd.Volume, input_orientation: str) -> NnunetInput:
    """Convert a Volume into nnU-Net's ``(1, z, y, x)`` array and ``(sz, sy, sx)`` spacing.

    Parameters
    ----------
    image : highdicom.Volume
        Scalar image, ``array[k, j, i]``, in the patient coordinate system.
    input_orientation : str
        ITK-style orientation the model expects (``"LPS"`` for MRSegmentator).

    Returns
    -------
    NnunetInput
        The array, spacing and both grids. Only axis permutations and flips
        are applied; voxel values are not resampled.

    Raises
    ------
    InputRejected
        If the volume has channel dimensions or is not in patient coordinates.
    """
    if image.ndim != 3:
        raise InputRejected(
            f"Argument 'image' must be a volume without channels, received shape {image.shape}."
        )
    if image.coordinate_system != hd.CoordinateSystemNames.PATIENT:
        raise InputRejected("Argument 'image' must be defined in the patient coordinate system.")
    hd_orientation = validate_orientation(input_orientation)[::-1]
    reordered = image.to_patient_orientation(hd_orientation)
    array = np.ascontiguousarray(reordered.array, dtype=np.float32)[None]
    spacing = tuple(float(s) for s in reordered.spacing)
    return NnunetInput(
        array=array,
        spacing=(spacing[0], spacing[1], spacing[2]),
        model_grid=reordered.get_geometry(),
        source_grid=image.get_geometry(),
    )


def labels_from_nnunet(labels: np.ndarray, prepared: NnunetInput) -> hd.Volume:
    """Put nnU-Net's ``(z, y, x)`` label array back onto the source grid.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels, shape ``(z, y, x)`` equal to ``prepared.array.shape[1:]``.
    prepared : NnunetInput
        The value :func:`volume_to_nnunet` returned for the source image.

    Returns
    -------
    highdicom.Volume
        Labels indexed ``(k, j, i)`` with exactly the source affine, shape and
        frame of reference.

    Raises
    ------
    ModelError
        If the shape does not match or the grids cannot be matched exactly.
    """
    if tuple(labels.shape) != tuple(prepared.array.shape[1:]):
        raise ModelError(
            f"nnU-Net returned labels of shape {tuple(labels.shape)}, expected "
            f"{tuple(prepared.array.shape[1:])}."
        )
    on_model_grid = prepared.model_grid.with_array(labels)
    try:
        matched = on_model_grid.match_geometry(prepared.source_grid)
    except RuntimeError as exc:
        raise ModelError(f"Could not map labels back onto the source grid: {exc}") from exc
    if not np.allclose(matched.affine, prepared.source_grid.affine, atol=1e-4):
        raise ModelError("Labels landed on a grid different from the source grid.")
    return prepared.source_grid.with_array(np.ascontiguousarray(matched.array))
