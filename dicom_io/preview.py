"""A PNG montage of a label volume over its image, for a quick visual check.

One row of axial slices and one row of coronal slices, in radiological
display convention: patient right on the image left, anterior up (axial),
superior up (coronal). The volumes are brought to that orientation with
``highdicom.Volume.to_patient_orientation`` (axis permutations and flips, no
resampling; an oblique volume is shown along its nearest patient axes), so no
full-volume copy is made. Pixels are scaled to the physical voxel size, the
image is windowed to its 1st-99th percentiles and each structure is drawn in
its display colour: filled at 45 % opacity with a full-colour outline. A
legend strip names the structures present. The montage carries no patient
data.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dicom_io.content import SegmentInfo
from segnode_errors import ExportError

__all__ = ["BACKGROUND_RGB", "render_preview"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Montage background colour (never produced by a grey image pixel).
BACKGROUND_RGB = (0, 0, 48)
#: Array axes after reorientation: slices towards the head, rows towards
#: posterior, columns towards the patient's left.
_ORIENTATION = "HPL"
_ALPHA = 0.45
_PANEL_WIDTH_PX = 256
_MAX_PANEL_HEIGHT_PX = 384
_GAP_PX = 4
_CAPTION_PX = 20
_SWATCH_PX = 12
_FONT_PX = 12
_SLAB = 32
_WINDOW_SAMPLES = 1_000_000
_AFFINE_TOLERANCE_MM = 1e-3


def render_preview(
    image: hd.Volume,
    labels: hd.Volume,
    segments: Sequence[SegmentInfo],
    *,
    slices: int = 3,
) -> bytes:
    """Render axial and coronal slices with the labels overlaid, as PNG.

    Parameters
    ----------
    image : highdicom.Volume
        The image, array (k, j, i), any orientation in the patient
        coordinate system.
    labels : highdicom.Volume
        Integer labels on the same grid (same shape and affine) as ``image``.
    segments : sequence of SegmentInfo
        Descriptions keyed by label value (colour ``rgb`` and ``label``);
        must cover every label present.
    slices : int
        Number of slices per row, placed at evenly spaced quantiles of the
        labelled voxels along the slice axis (the middle one through the
        centre of the labelled region); the volume's middle without labels.

    Returns
    -------
    bytes
        An 8-bit RGB PNG: a caption and ``slices`` axial panels, a caption and
        ``slices`` coronal panels, then the legend, on :data:`BACKGROUND_RGB`.

    Raises
    ------
    ExportError
        If the volumes are not 3D on one grid, labels are not integers, a
        present label has no description, or ``slices`` is below 1.
    """
    _validate(image, labels, slices)
    img = image.to_patient_orientation(_ORIENTATION)
    lab = labels.to_patient_orientation(_ORIENTATION)
    counts, along_k, along_j = _label_statistics(lab.array)
    present = [int(v) for v in np.flatnonzero(counts) if v != 0]
    by_label = {s.number: s for s in segments}
    missing = [v for v in present if v not in by_label]
    if missing:
        raise ExportError(f"Label values {missing} have no SegmentInfo.")
    lut = np.zeros((counts.size, 3), np.float32)
    for value in present:
        lut[value] = by_label[value].rgb
    low, high = _window(image.array)
    rows = _panel_rows(img, lab, lut, (low, high), (along_k, along_j), slices)
    montage = _compose(rows, [by_label[v] for v in present])
    buffer = io.BytesIO()
    montage.save(buffer, format="PNG")
    logger.debug("Rendered preview %dx%d with %d structures",
                 montage.width, montage.height, len(present))
    return buffer.getvalue()


def _validate(image: hd.Volume, labels: hd.Volume, slices: int) -> None:
    if slices < 1:
        raise ExportError(f"Argument 'slices' must be at least 1, got {slices}.")
    if image.array.ndim != 3 or labels.array.ndim != 3:
        raise ExportError(
            "Arguments 'image' and 'labels' must be 3D volumes, got shapes "
            f"{image.array.shape} and {labels.array.shape}."
        )
    if image.array.shape != labels.array.shape or not np.allclose(
        image.affine, labels.affine, atol=_AFFINE_TOLERANCE_MM
    ):
        raise ExportError(
            "Argument 'labels' must be on the grid of 'image': shapes "
            f"{labels.array.shape} and {image.array.shape}, or affines differ."
        )
    if not np.issubdtype(labels.array.dtype, np.integer):
        raise ExportError(
            f"Argument 'labels' must hold integers, got dtype {labels.array.dtype}."
        )


def _label_statistics(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels per label value, labelled voxels per slice k and per row j.

    Works slab by slab so that no full-volume temporary is made.
    """
    if array.min() < 0:
        raise ExportError("Argument 'labels' must not hold negative values.")
    counts = np.zeros(int(array.max()) + 1, np.int64)
    along_k = np.zeros(array.shape[0], np.int64)
    along_j = np.zeros(array.shape[1], np.int64)
    for start in range(0, array.shape[0], _SLAB):
        slab = array[start:start + _SLAB]
        counts += np.bincount(slab.ravel(), minlength=counts.size)
        mask = slab > 0
        along_k[start:start + _SLAB] = np.count_nonzero(mask, axis=(1, 2))
        along_j += np.count_nonzero(mask, axis=(0, 2))
    return counts, along_k, along_j


def _window(array: np.ndarray) -> tuple[float, float]:
    """1st and 99th percentiles of the image, from a strided sample."""
    step = max(1, round((array.size / _WINDOW_SAMPLES) ** (1 / 3)))
    sample = array[::step, ::step, ::step]
    low, high = (float(v) for v in np.percentile(sample, [1, 99]))
    return low, (high if high > low else low + 1.0)


def _pick(along: np.ndarray, slices: int) -> list[int]:
    """Indices at the quantiles t / (slices + 1) of the labelled voxels along an axis."""
    fractions = np.arange(1, slices + 1) / (slices + 1)
    total = int(along.sum())
    if total == 0:
        return [int(v) for v in np.floor(fractions * along.size)]
    cumulative = np.cumsum(along)
    return [int(v) for v in np.searchsorted(cumulative, fractions * total)]


def _panel_rows(
    img: hd.Volume,
    lab: hd.Volume,
    lut: np.ndarray,
    window: tuple[float, float],
    along: tuple[np.ndarray, np.ndarray],
    slices: int,
) -> list[tuple[str, list[Image.Image]]]:
    """The axial and coronal rows, each a caption and its panels (reoriented HPL arrays)."""
    nk, nj, ni = img.array.shape
    sk, sj, si = img.spacing
    width_mm, depth_mm, height_mm = ni * si, nj * sj, nk * sk
    scale = min(_PANEL_WIDTH_PX / width_mm, _MAX_PANEL_HEIGHT_PX / depth_mm,
                _MAX_PANEL_HEIGHT_PX / height_mm)
    width = max(1, round(width_mm * scale))
    axial_size = (width, max(1, round(depth_mm * scale)))
    coronal_size = (width, max(1, round(height_mm * scale)))
    axial = [
        _panel(img.array[k], lab.array[k], lut, window, axial_size)
        for k in _pick(along[0], slices)
    ]
    # k runs towards the head: flip it so that superior is up.
    coronal = [
        _panel(img.array[::-1, j], lab.array[::-1, j], lut, window, coronal_size)
        for j in _pick(along[1], slices)
    ]
    return [
        ("Axial: image left = patient right, anterior up", axial),
        ("Coronal: image left = patient right, superior up", coronal),
    ]


def _panel(
    image: np.ndarray,
    labels: np.ndarray,
    lut: np.ndarray,
    window: tuple[float, float],
    size: tuple[int, int],
) -> Image.Image:
    """One slice at display size (width, height): windowed grey, labels blended and outlined."""
    low, high = window
    grey = np.clip((image.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255)
    grey = Image.fromarray(grey.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    rows = (np.arange(size[1]) + 0.5) * labels.shape[0] // size[1]
    cols = (np.arange(size[0]) + 0.5) * labels.shape[1] // size[0]
    shown = labels[rows.astype(np.intp)[:, None], cols.astype(np.intp)[None, :]]
    rgb = np.repeat(np.asarray(grey, np.float32)[..., None], 3, axis=2)
    mask = shown > 0
    colours = lut[shown[mask]]
    rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * colours
    edge = np.zeros_like(mask)
    edge[1:] |= shown[1:] != shown[:-1]
    edge[:-1] |= shown[:-1] != shown[1:]
    edge[:, 1:] |= shown[:, 1:] != shown[:, :-1]
    edge[:, :-1] |= shown[:, :-1] != shown[:, 1:]
    edge &= mask
    rgb[edge] = lut[shown[edge]]
    return Image.fromarray(np.round(rgb).astype(np.uint8))


def _compose(
    rows: list[tuple[str, list[Image.Image]]], present: list[SegmentInfo]
) -> Image.Image:
    """Stack captions, panel rows and the legend on the background."""
    font = ImageFont.load_default(_FONT_PX)
    width = max(_GAP_PX + sum(p.width + _GAP_PX for p in panels) for _, panels in rows)
    legend = _legend_layout(present, font, width)
    legend_height = (max(y for _, _, y in legend) + _SWATCH_PX + _GAP_PX) if legend else 0
    height = sum(_CAPTION_PX + panels[0].height + _GAP_PX for _, panels in rows)
    montage = Image.new("RGB", (width, height + legend_height + _GAP_PX), BACKGROUND_RGB)
    draw = ImageDraw.Draw(montage)
    y = 0
    for caption, panels in rows:
        draw.text((_GAP_PX, y + 3), caption, fill=(255, 255, 255), font=font)
        y += _CAPTION_PX
        x = _GAP_PX
        for panel in panels:
            montage.paste(panel, (x, y))
            x += panel.width + _GAP_PX
        y += panels[0].height + _GAP_PX
    for info, x, dy in legend:
        box = (x, y + dy, x + _SWATCH_PX - 1, y + dy + _SWATCH_PX - 1)
        draw.rectangle(box, fill=tuple(info.rgb))
        draw.text((x + _SWATCH_PX + 4, y + dy), info.label, fill=(255, 255, 255), font=font)
    return montage


def _legend_layout(
    present: list[SegmentInfo], font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> list[tuple[SegmentInfo, int, int]]:
    """(structure, x, y offset) of each legend entry, wrapped to ``width``."""
    out = []
    x, y = _GAP_PX, 0
    for info in present:
        entry = _SWATCH_PX + 4 + int(font.getlength(info.label)) + 3 * _GAP_PX
        if x > _GAP_PX and x + entry > width:
            x, y = _GAP_PX, y + _SWATCH_PX + _GAP_PX
        out.append((info, x, y))
        x += entry
    return out
