"""Preview montage: structures appear where the patient has them, in radiological convention."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dicom_io.content import SegmentInfo
from dicom_io.preview import BACKGROUND_RGB, render_preview
from segnode_errors import ExportError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
SEGMENTS = [
    SegmentInfo(1, "left_upper", ("78961009", "SCT", "Spleen"), RED),
    SegmentInfo(2, "right_lower", ("10200004", "SCT", "Liver"), GREEN),
    SegmentInfo(7, "absent", ("64033007", "SCT", "Kidney"), BLUE),
]


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


_TILT = _rotation(2, 10) @ _rotation(0, 20)
#: (slice, row, column) directions in LPS: x patient left, y posterior, z superior.
ORIENTATIONS = {
    "axial": ((0, 0, 1), (0, 1, 0), (1, 0, 0)),
    "axial-flipped": ((0, 0, -1), (0, -1, 0), (-1, 0, 0)),
    "sagittal": ((1, 0, 0), (0, 0, -1), (0, 1, 0)),
    "coronal": ((0, 1, 0), (0, 0, -1), (1, 0, 0)),
    "oblique": tuple(tuple(_TILT @ np.asarray(v, float))
                     for v in ((0, 0, 1), (0, 1, 0), (1, 0, 0))),
}


def grid(directions, shape=(40, 44, 48), spacing=(2.5, 2.2, 2.0)) -> np.ndarray:
    """Affine (k, j, i) -> LPS of a grid centred on the origin."""
    affine = np.eye(4)
    for axis, (direction, step) in enumerate(zip(directions, spacing, strict=True)):
        affine[:3, axis] = np.asarray(direction, float) * step
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def lps_of_voxels(affine: np.ndarray, shape) -> np.ndarray:
    """Array (3, *shape) of voxel-centre LPS coordinates."""
    idx = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ idx + affine[:3, 3:]).reshape(3, *shape)


def phantom(directions, shape=(40, 44, 48), spacing=(2.5, 2.2, 2.0)):
    """Image and labels: label 1 at patient left and superior, label 2 right and inferior."""
    affine = grid(directions, shape, spacing)
    x, y, z = lps_of_voxels(affine, shape)
    labels = np.zeros(shape, np.uint16)
    labels[(x > 15) & (z > 20) & (np.abs(y) < 30)] = 1
    labels[(x < -15) & (z < -20) & (np.abs(y) < 30)] = 2
    image = (np.random.default_rng(1).normal(100, 10, shape) + 50 * labels).astype(np.float32)
    return (hd.Volume(image, affine, "PATIENT", "1.2.3"),
            hd.Volume(labels, affine, "PATIENT", "1.2.3"))


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def panels(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (top, left, bottom, right) of the image panels, row by row."""
    foreground = np.any(pixels != BACKGROUND_RGB, axis=2)
    components, _ = ndimage.label(foreground)
    boxes = []
    for found in ndimage.find_objects(components):
        height, width = found[0].stop - found[0].start, found[1].stop - found[1].start
        if height * width > 1500:
            boxes.append((found[0].start, found[1].start, found[0].stop, found[1].stop))
    return sorted(boxes)


def colour_at(pixels: np.ndarray, box, rgb) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (relative to the box) of the pixels of exactly ``rgb`` in a box."""
    top, left, bottom, right = box
    rows, cols = np.nonzero(np.all(pixels[top:bottom, left:right] == rgb, axis=2))
    return rows, cols


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_structures_on_the_patient_side_and_height(orientation):
    image, labels = phantom(ORIENTATIONS[orientation])
    pixels = decode(render_preview(image, labels, SEGMENTS, slices=3))
    boxes = panels(pixels)
    assert len(boxes) == 6
    axial, coronal = boxes[:3], boxes[3:]
    assert len({b[0] for b in axial}) == 1 and len({b[0] for b in coronal}) == 1
    assert coronal[0][0] > axial[0][2], "coronal row below the axial row"
    seen = set()
    for box in axial:
        width = box[3] - box[1]
        _, red_cols = colour_at(pixels, box, RED)
        _, green_cols = colour_at(pixels, box, GREEN)
        # patient left (label 1) on the image right, patient right on the image left
        assert np.all(red_cols > width / 2) and np.all(green_cols < width / 2)
        seen |= {"red"} if red_cols.size else set()
        seen |= {"green"} if green_cols.size else set()
    assert seen == {"red", "green"}, "the axial slices pass through both structures"
    for box in coronal:
        height, width = box[2] - box[0], box[3] - box[1]
        red_rows, red_cols = colour_at(pixels, box, RED)
        green_rows, green_cols = colour_at(pixels, box, GREEN)
        assert red_rows.size and green_rows.size
        # superior (label 1) up, inferior (label 2) down
        assert red_rows.max() < height / 2 < green_rows.min()
        assert red_cols.min() > width / 2 > green_cols.max()


def test_physical_aspect_ratio():
    shape, spacing = (20, 30, 60), (4.0, 2.0, 1.0)  # extents S 80, P 60, L 60 mm
    affine = grid(ORIENTATIONS["axial"], shape, spacing)
    labels = np.zeros(shape, np.uint16)
    x, y, z = lps_of_voxels(affine, shape)
    labels[(np.abs(x) < 20) & (np.abs(y) < 20) & (np.abs(z) < 20)] = 1  # a 40 mm cube
    image = hd.Volume(np.indices(shape).sum(axis=0).astype(np.float32), affine, "PATIENT")
    pixels = decode(render_preview(image, hd.Volume(labels, affine, "PATIENT"), SEGMENTS,
                                   slices=1))
    axial, coronal = panels(pixels)
    assert (axial[2] - axial[0]) / (axial[3] - axial[1]) == pytest.approx(60 / 60, rel=0.02)
    assert (coronal[2] - coronal[0]) / (coronal[3] - coronal[1]) == pytest.approx(80 / 60,
                                                                                 rel=0.02)
    for box in (axial, coronal):
        rows, cols = colour_at(pixels, box, RED)
        extent = (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)
        assert extent == pytest.approx(1.0, rel=0.1), "the cube is shown square"


def test_legend_shows_present_structures_only():
    image, labels = phantom(ORIENTATIONS["axial"])
    pixels = decode(render_preview(image, labels, SEGMENTS))
    legend = pixels[max(b[2] for b in panels(pixels)):]
    for rgb in (RED, GREEN):
        swatch = np.all(legend == rgb, axis=2)
        assert swatch.sum() >= 100, f"legend swatch {rgb}"
    assert not np.all(pixels == BLUE, axis=2).any(), "absent structure not drawn"


def test_without_labels_renders_middle_slices():
    image, labels = phantom(ORIENTATIONS["axial"])
    empty = hd.Volume(np.zeros_like(labels.array), labels.affine, "PATIENT")
    pixels = decode(render_preview(image, empty, SEGMENTS, slices=2))
    assert len(panels(pixels)) == 4
    assert not np.any(np.all(pixels == RED, axis=2) | np.all(pixels == GREEN, axis=2))


def test_rejects_bad_input():
    image, labels = phantom(ORIENTATIONS["axial"])
    shifted = labels.affine.copy()
    shifted[:3, 3] += 1.0
    moved = hd.Volume(labels.array, shifted, "PATIENT")
    with pytest.raises(ExportError, match="grid of 'image'"):
        render_preview(image, moved, SEGMENTS)
    with pytest.raises(ExportError, match=r"\[2\]"):
        render_preview(image, labels, SEGMENTS[:1])
    with pytest.raises(ExportError, match="'slices'"):
        render_preview(image, labels, SEGMENTS, slices=0)
    floats = hd.Volume(labels.array.astype(np.float32), labels.affine, "PATIENT")
    with pytest.raises(ExportError, match="integers"):
        render_preview(image, floats, SEGMENTS)


def test_whole_body_sized_volume_renders_both_rows():
    shape = (316, 260, 320)
    affine = grid(ORIENTATIONS["axial-flipped"], shape, (1.5, 1.2, 1.2))
    image = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[200:260, 80:160, 40:120] = 1
    labels[100:150, 100:180, 170:260] = 2
    png = render_preview(hd.Volume(image, affine, "PATIENT"), hd.Volume(labels, affine, "PATIENT"),
                         SEGMENTS)
    assert len(panels(decode(png))) == 6
