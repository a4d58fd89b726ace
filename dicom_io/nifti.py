"""NIfTI input images and NIfTI label output, with the RAS <-> LPS change.

NIfTI stores an array indexed ``(i, j, k)`` and an affine (sform, else qform)
mapping ``(i, j, k, 1)`` to RAS+ millimetres. segnode's volumes
(``highdicom.Volume``) are indexed ``(k, j, i)`` with an affine mapping
``(k, j, i, 1)`` to LPS millimetres. The conversion transposes the array,
permutes the affine's index columns and negates its x and y rows, so each
voxel keeps its world position.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np

from segnode_errors import ExportError, InputRejected

__all__ = ["read_nifti", "write_label_nifti", "write_image_nifti", "ras_to_lps_volume_affine"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Swaps index order (i, j, k) <-> (k, j, i); its own inverse.
_REVERSE_INDEX = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


def ras_to_lps_volume_affine(nifti_affine: np.ndarray) -> np.ndarray:
    """Convert a NIfTI affine ((i, j, k) -> RAS) to a Volume affine ((k, j, i) -> LPS).

    The conversion is its own inverse: applied to a Volume affine it gives
    the NIfTI affine.
    """
    return _FLIP_XY @ np.asarray(nifti_affine, dtype=float) @ _REVERSE_INDEX


def read_nifti(path: Path, *, dtype: type = np.float32) -> hd.Volume:
    """Read a 3D NIfTI image as a Volume in segnode's convention.

    Parameters
    ----------
    path : pathlib.Path
        ``.nii`` or ``.nii.gz`` file. Trailing singleton dimensions (e.g. a
        4D image with one volume) are dropped.
    dtype : numpy dtype, optional
        Output dtype (default float32). Values have scl_slope/scl_inter applied.

    Returns
    -------
    highdicom.Volume
        Array ``(k, j, i)``, affine to patient LPS mm, no frame of reference UID.

    Raises
    ------
    InputRejected
        Unreadable file, or an image that is not 3D after dropping trailing
        singleton dimensions.
    """
    path = Path(path)
    try:
        image = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputRejected(f"{path.name}: not a readable NIfTI file ({exc})") from exc
    shape = image.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputRejected(f"{path.name}: expected a 3D image, got shape {image.shape}")
    data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    array = np.ascontiguousarray(data.transpose(2, 1, 0)).astype(dtype, copy=False)
    affine = ras_to_lps_volume_affine(image.affine)
    logger.info("read NIfTI %s: shape (k, j, i) %s", path.name, array.shape)
    return hd.Volume(array, affine, coordinate_system="PATIENT")


def write_label_nifti(labels: hd.Volume, path: Path) -> Path:
    """Write a label Volume as a NIfTI-1 file with matching qform and sform.

    Parameters
    ----------
    labels : highdicom.Volume
        Integer labels (any numeric dtype holding whole numbers) indexed
        ``(k, j, i)``, affine to LPS mm.
    path : pathlib.Path
        Output file, ``.nii`` or ``.nii.gz``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ExportError
        Negative, non-integer or too large (> 65535) labels, or a write failure.
    """
    path = Path(path)
    array = np.asarray(labels.array)
    if array.ndim != 3:
        raise ExportError(f"labels must be a 3D volume, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > 65535 or not _whole(array)):
        raise ExportError(
            f"labels must be whole numbers in 0..65535, got range {array.min()}..{array.max()}"
        )
    out_dtype = np.uint8 if array.size == 0 or array.max() < 256 else np.uint16
    return _save(array.astype(out_dtype), labels.affine, path)


def write_image_nifti(image: hd.Volume, path: Path) -> Path:
    """Write an image Volume (e.g. a stitched station image) as float32 NIfTI-1.

    Raises
    ------
    ExportError
        A volume that is not 3D, or a write failure.
    """
    array = np.asarray(image.array)
    if array.ndim != 3:
        raise ExportError(f"image must be a 3D volume, got shape {array.shape}")
    return _save(array.astype(np.float32), image.affine, Path(path))


def _save(array: np.ndarray, volume_affine: np.ndarray, path: Path) -> Path:
    """Save a (k, j, i) array with its LPS affine as NIfTI (RAS, i j k order)."""
    out_dtype = array.dtype
    data = np.ascontiguousarray(array.transpose(2, 1, 0))
    affine = ras_to_lps_volume_affine(volume_affine)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header.set_data_dtype(out_dtype)
    try:
        nib.save(image, path)
    except OSError as exc:
        raise ExportError(f"cannot write NIfTI {path}: {exc}") from exc
    return path


def _whole(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.integer) or np.all(np.mod(array, 1) == 0))
