"""Geometry helpers for stacking 2D frames into a volume (private).

Conventions: ``orientation`` is ImageOrientationPatient, six direction cosines
(row direction = direction of increasing column index i, then column
direction = direction of increasing row index j), in patient LPS. The slice
normal is ``cross(row_dir, col_dir)``; slices are ordered by the projection of
ImagePositionPatient onto that normal, never by file name or InstanceNumber.
The affine follows highdicom: it maps ``(k, j, i, 1)`` to LPS mm, so column 0 is
the slice step, column 1 the row step (j) and column 2 the column step (i).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "slice_normal",
    "same_orientation",
    "are_orthogonal",
    "build_affine",
    "check_even_spacing",
    "tilt_angle_deg",
    "orthonormal_orientation",
]

ORIENTATION_ATOL = 1e-3


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal ``cross(row_dir, col_dir)`` of an ImageOrientationPatient."""
    row_dir = np.asarray(orientation[:3], dtype=float)
    col_dir = np.asarray(orientation[3:6], dtype=float)
    normal = np.cross(row_dir, col_dir)
    return normal / np.linalg.norm(normal)


def orthonormal_orientation(orientation: np.ndarray, *, tol: float = 0.01) -> np.ndarray | None:
    """Gram-Schmidt clean-up of an ImageOrientationPatient rounded in the file.

    Returns None when the two cosines are not unit vectors at right angles
    within ``tol`` (a damaged header), else six orthonormal cosines.
    """
    row = np.asarray(orientation[:3], dtype=float)
    col = np.asarray(orientation[3:6], dtype=float)
    if (abs(np.linalg.norm(row) - 1) > tol or abs(np.linalg.norm(col) - 1) > tol
            or abs(float(np.dot(row, col))) > tol):
        return None
    row = row / np.linalg.norm(row)
    col = col - row * np.dot(row, col)
    return np.concatenate([row, col / np.linalg.norm(col)])


def same_orientation(a: np.ndarray, b: np.ndarray, atol: float = ORIENTATION_ATOL) -> bool:
    """True when two ImageOrientationPatient values agree within ``atol``."""
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), atol=atol, rtol=0.0))


def are_orthogonal(a: np.ndarray, b: np.ndarray, atol: float = 0.05) -> bool:
    """True when the planes of two orientations are perpendicular (normals at 90 deg)."""
    return abs(float(np.dot(slice_normal(a), slice_normal(b)))) < atol


def build_affine(
    first_position: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    slice_step: np.ndarray,
) -> np.ndarray:
    """Affine mapping ``(k, j, i, 1)`` to LPS mm, in highdicom's convention.

    Parameters
    ----------
    first_position : numpy.ndarray
        ImagePositionPatient of slice k = 0 (centre of its first pixel), mm.
    orientation : numpy.ndarray
        ImageOrientationPatient (six cosines).
    pixel_spacing : tuple of float
        PixelSpacing: (spacing between rows, spacing between columns), mm.
    slice_step : numpy.ndarray
        Vector from slice k to slice k + 1, mm.

    Returns
    -------
    numpy.ndarray
        4x4 float64 affine.
    """
    row_dir = np.asarray(orientation[:3], dtype=float)
    col_dir = np.asarray(orientation[3:6], dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = slice_step
    affine[:3, 1] = col_dir * float(pixel_spacing[0])
    affine[:3, 2] = row_dir * float(pixel_spacing[1])
    affine[:3, 3] = np.asarray(first_position, dtype=float)
    return affine


def check_even_spacing(
    offsets: np.ndarray, *, rtol: float = 0.05, atol: float = 0.02
) -> str | None:
    """Check that sorted slice offsets are evenly spaced.

    Parameters
    ----------
    offsets : numpy.ndarray
        Positions along the slice normal, sorted ascending, mm.
    rtol, atol : float
        A gap may differ from the median gap by ``atol + rtol * median`` mm.

    Returns
    -------
    str or None
        None when even; otherwise a precise description of the defect.
    """
    gaps = np.diff(np.asarray(offsets, dtype=float))
    if gaps.size == 0:
        return None
    median = float(np.median(gaps))
    if median <= atol:
        return f"slices repeat a position (median gap {median:.4f} mm)"
    bad = np.flatnonzero(np.abs(gaps - median) > atol + rtol * median)
    if bad.size == 0:
        return None
    k = int(bad[0])
    return (
        f"uneven slice spacing: gaps range {gaps.min():.3f} to {gaps.max():.3f} mm "
        f"(median {median:.3f} mm); first irregular gap {gaps[k]:.3f} mm between "
        f"sorted slices {k} and {k + 1} (missing or extra slices?)"
    )


def tilt_angle_deg(orientation: np.ndarray, first: np.ndarray, last: np.ndarray) -> float:
    """Angle in degrees between the slice normal and the stacking direction.

    Non-zero for gantry-tilted CT, where successive slices are shifted within
    their plane; zero for an orthogonal stack.
    """
    step = np.asarray(last, dtype=float) - np.asarray(first, dtype=float)
    length = float(np.linalg.norm(step))
    if length == 0.0:
        return 0.0
    cosine = abs(float(np.dot(step / length, slice_normal(orientation))))
    return float(np.degrees(np.arccos(min(1.0, cosine))))
