"""An analytic whole-body phantom in patient (LPS, millimetre) coordinates.

The phantom is a trunk (an elliptic cylinder with a subcutaneous fat layer
around muscle) holding eleven non-overlapping organs named and numbered as in
MRSegmentator (spleen 1, right_kidney 2, left_kidney 3, liver 5, stomach 6,
left_lung 10, right_lung 11, heart 12, aorta 13, urinary_bladder 24,
spine 25). Organs are axis-aligned ellipsoids, or elliptic cylinders clipped in
z (aorta, spine), in a phantom frame; a global similarity-like transform
(anisotropic scale, rotation, translation) places the frame in LPS. Because the
organs never overlap, each organ's analytic volume is its true volume.

Patient LPS: +x towards the patient's left, +y posterior, +z superior. The
left kidney and the spleen lie at +x, the liver and right kidney at -x.

It is used to train the embedded demo model (``scripts/train_demo_model.py``)
and by the tests, which write phantom images as DICOM series and compare the
returned segmentation with :meth:`Phantom.labels_at`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import highdicom as hd
import numpy as np

__all__ = [
    "CT_HU",
    "MR_INTENSITY",
    "GridGeometry",
    "Organ",
    "Phantom",
    "make_grid",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

Orientation = Literal["axial", "coronal", "sagittal", "oblique"]
Modality = Literal["MR", "CT"]

#: Tissue keys used for intensities besides the organ names.
_AIR, _FAT, _MUSCLE = "air", "fat", "muscle"

#: MR-like (T1-weighted-ish, arbitrary units) mean intensity per tissue.
MR_INTENSITY: dict[str, float] = {
    _AIR: 0.0, _FAT: 900.0, _MUSCLE: 300.0,
    "spleen": 380.0, "right_kidney": 450.0, "left_kidney": 450.0, "liver": 560.0,
    "stomach": 180.0, "left_lung": 40.0, "right_lung": 40.0, "heart": 340.0,
    "aorta": 700.0, "urinary_bladder": 110.0, "spine": 480.0,
}

#: CT attenuation (Hounsfield units) per tissue.
CT_HU: dict[str, float] = {
    _AIR: -1000.0, _FAT: -100.0, _MUSCLE: 45.0,
    "spleen": 50.0, "right_kidney": 30.0, "left_kidney": 30.0, "liver": 65.0,
    "stomach": 10.0, "left_lung": -850.0, "right_lung": -850.0, "heart": 40.0,
    "aorta": 150.0, "urinary_bladder": 5.0, "spine": 400.0,
}

# Trunk in the phantom frame: elliptic cylinder, semi-axes in x and y (mm),
# half length in z, thickness of the subcutaneous fat layer.
_BODY_SEMI_XY = (175.0, 125.0)
_BODY_HALF_Z = 250.0
_FAT_MM = 15.0


@dataclass(frozen=True)
class Organ:
    """One organ of the phantom, in the phantom frame (mm).

    Attributes
    ----------
    label : int
        MRSegmentator label index.
    name : str
        MRSegmentator label name.
    center : tuple[float, float, float]
        Centre (x, y, z) in mm.
    semi : tuple[float, float, float]
        Semi-axes (a, b, c) in mm; for a cylinder ``c`` is the half length.
    kind : str
        ``"ellipsoid"`` or ``"cylinder"`` (elliptic cylinder along z).
    """

    label: int
    name: str
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    kind: str = "ellipsoid"

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        """Return a boolean mask of the points (N, 3), phantom frame, inside."""
        d = (xyz - np.asarray(self.center)) / np.asarray(self.semi)
        if self.kind == "cylinder":
            return (d[:, 0] ** 2 + d[:, 1] ** 2 <= 1.0) & (np.abs(d[:, 2]) <= 1.0)
        return np.einsum("ij,ij->i", d, d) <= 1.0

    def volume_mm3(self) -> float:
        """Return the analytic volume in mm^3."""
        a, b, c = self.semi
        if self.kind == "cylinder":
            return math.pi * a * b * 2.0 * c
        return 4.0 / 3.0 * math.pi * a * b * c


_ORGANS: tuple[Organ, ...] = (
    Organ(11, "right_lung", (-90.0, 10.0, 163.0), (50.0, 70.0, 70.0)),
    Organ(10, "left_lung", (95.0, 10.0, 163.0), (45.0, 70.0, 70.0)),
    Organ(12, "heart", (5.0, -40.0, 140.0), (42.0, 38.0, 42.0)),
    Organ(5, "liver", (-70.0, -10.0, 30.0), (80.0, 68.0, 55.0)),
    Organ(1, "spleen", (88.0, 40.0, 40.0), (32.0, 28.0, 42.0)),
    Organ(6, "stomach", (62.0, -50.0, 40.0), (34.0, 32.0, 38.0)),
    Organ(2, "right_kidney", (-65.0, 58.0, -58.0), (26.0, 20.0, 42.0)),
    Organ(3, "left_kidney", (68.0, 58.0, -52.0), (26.0, 20.0, 42.0)),
    Organ(24, "urinary_bladder", (0.0, -40.0, -190.0), (45.0, 35.0, 35.0)),
    Organ(25, "spine", (0.0, 75.0, 10.0), (22.0, 20.0, 210.0), "cylinder"),
    Organ(13, "aorta", (15.0, 35.0, 40.0), (12.0, 12.0, 160.0), "cylinder"),
)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Return a random rotation matrix about a random axis, up to ``max_deg``."""
    if max_deg <= 0.0:
        return np.eye(3)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


class Phantom:
    """Analytic trunk phantom with MRSegmentator-labelled organs.

    Parameters
    ----------
    seed : int
        Seed of the random jitter (ignored when ``jitter`` is 0).
    jitter : float
        Amount of random variation, 0 (the reference phantom) to 1: global
        anisotropic scale up to +-10 % per axis, rotation up to 10 degrees,
        translation up to 20 mm, and each organ shrunk by up to 15 %
        (shrinking about its own centre keeps organs disjoint).
    """

    def __init__(self, seed: int = 0, *, jitter: float = 0.0) -> None:
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"Argument 'jitter' must be in [0, 1], got {jitter}.")
        rng = np.random.default_rng(seed)
        j = float(jitter)
        self._scale = 1.0 + j * rng.uniform(-0.1, 0.1, size=3)
        self._rot = _rotation(rng, 10.0 * j)
        self._shift = j * rng.uniform(-20.0, 20.0, size=3)
        self._organs = tuple(
            Organ(o.label, o.name, o.center,
                  tuple(float(s) * (1.0 - j * rng.uniform(0.0, 0.15)) for s in o.semi), o.kind)
            for o in _ORGANS
        )

    @property
    def label_names(self) -> dict[int, str]:
        """MRSegmentator label index to name, for the organs of the phantom."""
        return {o.label: o.name for o in sorted(self._organs, key=lambda o: o.label)}

    @property
    def organs(self) -> tuple[Organ, ...]:
        """The organs in the phantom frame (before the global transform)."""
        return self._organs

    @property
    def scale(self) -> np.ndarray:
        """Global scale factors (x, y, z) of the phantom frame."""
        return self._scale.copy()

    def from_phantom_frame(self, points: np.ndarray) -> np.ndarray:
        """Map points (N, 3) from the phantom frame to patient LPS mm."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return (p * self._scale) @ self._rot.T + self._shift

    def to_phantom_frame(self, points_lps: np.ndarray) -> np.ndarray:
        """Map points (N, 3) from patient LPS mm to the phantom frame (mm)."""
        p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        return ((p - self._shift) @ self._rot) / self._scale

    def labels_at(self, points_lps: np.ndarray) -> np.ndarray:
        """Return the MRSegmentator label (0 = background) at each point.

        Parameters
        ----------
        points_lps : numpy.ndarray
            Points, shape (N, 3), patient LPS coordinates in mm.

        Returns
        -------
        numpy.ndarray
            Labels, shape (N,), dtype uint8.
        """
        xyz = self.to_phantom_frame(points_lps)
        out = np.zeros(len(xyz), dtype=np.uint8)
        for organ in self._organs:
            out[organ.contains(xyz)] = organ.label
        return out

    def tissue_at(self, points_lps: np.ndarray) -> np.ndarray:
        """Return tissue codes: -2 air, -1 fat, 0 muscle, else the organ label."""
        xyz = self.to_phantom_frame(points_lps)
        ax, ay = _BODY_SEMI_XY
        r_out = (xyz[:, 0] / ax) ** 2 + (xyz[:, 1] / ay) ** 2
        r_in = (xyz[:, 0] / (ax - _FAT_MM)) ** 2 + (xyz[:, 1] / (ay - _FAT_MM)) ** 2
        in_z = np.abs(xyz[:, 2]) <= _BODY_HALF_Z
        tissue = np.full(len(xyz), -2, dtype=np.int16)
        tissue[(r_out <= 1.0) & in_z] = -1
        tissue[(r_in <= 1.0) & (np.abs(xyz[:, 2]) <= _BODY_HALF_Z - _FAT_MM)] = 0
        labels = self.labels_at(points_lps)
        tissue[labels > 0] = labels[labels > 0]
        return tissue

    def analytic_volume_ml(self, label: int) -> float:
        """Return the exact volume of organ ``label`` in millilitres."""
        for organ in self._organs:
            if organ.label == label:
                return organ.volume_mm3() * float(np.prod(self._scale)) / 1000.0
        raise ValueError(
            f"Argument 'label' must be one of {sorted(self.label_names)}, got {label}."
        )

    def sample(
        self,
        geometry: GridGeometry,
        *,
        modality: Modality = "MR",
        rng: np.random.Generator | None = None,
    ) -> tuple[hd.Volume, hd.Volume]:
        """Sample an image and its ground-truth labels on a grid.

        Parameters
        ----------
        geometry : GridGeometry
            The voxel grid (affine maps array indices (k, j, i) to LPS mm).
        modality : {"MR", "CT"}
            MR: arbitrary units with Rician noise and a smooth multiplicative
            bias field. CT: Hounsfield units with Gaussian noise.
        rng : numpy.random.Generator, optional
            Source of noise; a fixed seed (0) when omitted.

        Returns
        -------
        tuple[highdicom.Volume, highdicom.Volume]
            The image (float32) and the labels (uint8, MRSegmentator indices)
            on the same grid.
        """
        if modality not in ("MR", "CT"):
            raise ValueError(f"Argument 'modality' must be 'MR' or 'CT', got {modality!r}.")
        rng = np.random.default_rng(0) if rng is None else rng
        points = geometry.voxel_centres()
        tissue = self.tissue_at(points)
        table = MR_INTENSITY if modality == "MR" else CT_HU
        lut = {-2: table[_AIR], -1: table[_FAT], 0: table[_MUSCLE]}
        lut.update({o.label: table[o.name] for o in self._organs})
        image = np.zeros(len(points), dtype=np.float64)
        for code, value in lut.items():
            image[tissue == code] = value
        if modality == "MR":
            image = _mr_corrupt(image, points, rng)
        else:
            image = image + rng.normal(0.0, 12.0, size=image.shape)
        labels = np.where(tissue > 0, tissue, 0).astype(np.uint8)
        shape = geometry.shape
        return (
            geometry.volume(image.reshape(shape).astype(np.float32)),
            geometry.volume(labels.reshape(shape)),
        )


def _mr_corrupt(image: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a smooth random bias field and Rician noise to MR intensities."""
    centred = points / 300.0
    coeffs = rng.uniform(-0.15, 0.15, size=3)
    quad = rng.uniform(-0.1, 0.1, size=3)
    bias = 1.0 + centred @ coeffs + (centred**2) @ quad
    signal = image * np.clip(bias, 0.6, 1.4)
    sigma = 20.0
    real = signal + rng.normal(0.0, sigma, size=signal.shape)
    imag = rng.normal(0.0, sigma, size=signal.shape)
    return np.sqrt(real**2 + imag**2)


@dataclass(frozen=True)
class GridGeometry:
    """A voxel grid: array shape (k, j, i) and the highdicom affine.

    Attributes
    ----------
    affine : numpy.ndarray
        4x4 matrix mapping array indices (k, j, i, 1) to LPS mm (column 0 is
        the slice step, column 1 the row step, column 2 the column step).
    shape : tuple[int, int, int]
        Array shape (slices, rows, columns).
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    def voxel_centres(self) -> np.ndarray:
        """Return the LPS coordinates (N, 3) of all voxel centres, C order."""
        idx = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        return (self.affine[:3, :3] @ idx).T + self.affine[:3, 3]

    def volume(self, array: np.ndarray) -> hd.Volume:
        """Wrap an array of this grid's shape as a patient-space Volume."""
        if tuple(array.shape) != tuple(self.shape):
            raise ValueError(f"Argument 'array' must have shape {self.shape}, got {array.shape}.")
        return hd.Volume(array, self.affine.copy(), coordinate_system="PATIENT")


#: Direction of (slice, row, column) steps per orientation; columns of the
#: returned matrix are the unit step vectors of k, j, i in LPS.
_DIRECTIONS: dict[str, np.ndarray] = {
    "axial": np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float).T,
    "coronal": np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], dtype=float).T,
    "sagittal": np.array([[-1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float).T,
}

#: Default field of view (mm) along (slice, row, column) per orientation.
_DEFAULT_FOV: dict[str, tuple[float, float, float]] = {
    "axial": (540.0, 300.0, 400.0),
    "coronal": (300.0, 540.0, 400.0),
    "sagittal": (400.0, 540.0, 300.0),
    "oblique": (580.0, 420.0, 480.0),
}


def make_grid(
    orientation: Orientation,
    spacing_mm: tuple[float, float, float],
    *,
    reversed_slices: bool = False,
    rng: np.random.Generator | None = None,
    fov_mm: tuple[float, float, float] | None = None,
    center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    max_oblique_deg: float = 20.0,
) -> GridGeometry:
    """Build a voxel grid around a centre point.

    Parameters
    ----------
    orientation : {"axial", "coronal", "sagittal", "oblique"}
        Slice orientation. Axial: rows run to patient left (+x), columns to
        posterior (+y), slices to superior. Coronal: rows to left, columns to
        inferior, slices to posterior. Sagittal: rows to posterior, columns to
        inferior, slices to the right. Oblique: the axial grid rotated by a
        random rotation of up to ``max_oblique_deg`` degrees (needs ``rng``).
    spacing_mm : tuple[float, float, float]
        Voxel spacing along (slice, row, column) array axes, in mm.
    reversed_slices : bool
        Run the slice axis the other way round (same voxel centres).
    rng : numpy.random.Generator, optional
        Source of the oblique rotation.
    fov_mm : tuple[float, float, float], optional
        Extent along (slice, row, column) in mm; a default per orientation
        covers the whole phantom.
    center_mm : tuple[float, float, float]
        LPS position (mm) of the grid centre; move it to cut the phantom.
    max_oblique_deg : float
        Largest rotation of an oblique grid, in degrees.

    Returns
    -------
    GridGeometry
        The grid.
    """
    if orientation == "oblique":
        rng = np.random.default_rng(0) if rng is None else rng
        unit = _rotation(rng, max_oblique_deg) @ _DIRECTIONS["axial"]
    elif orientation in _DIRECTIONS:
        unit = _DIRECTIONS[orientation].copy()
    else:
        raise ValueError(
            "Argument 'orientation' must be 'axial', 'coronal', 'sagittal' or 'oblique', "
            f"got {orientation!r}."
        )
    fov = np.asarray(fov_mm if fov_mm is not None else _DEFAULT_FOV[orientation], dtype=float)
    spacing = np.asarray(spacing_mm, dtype=float)
    shape = tuple(int(n) for n in np.maximum(1, np.round(fov / spacing)))
    if reversed_slices:
        unit[:, 0] = -unit[:, 0]
    steps = unit * spacing
    affine = np.eye(4)
    affine[:3, :3] = steps
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - steps @ ((np.asarray(shape) - 1) / 2.0)
    return GridGeometry(affine=affine, shape=shape)  # type: ignore[arg-type]
