"""Read a SEG overlay off two canvas screenshots: overlay shown and overlay hidden.

The phantom is a grey background with bright structures that are exactly the
truth, each at its own grey level. So, on screen:

- a structure's region is a bright connected component of the overlay-hidden
  picture (thresholded half-way between the background and its own grey);
  components are matched to structures by brightness rank;
- overlay pixels are those whose colour changes when the overlay is hidden;
  each is given to the segment whose display colour explains the change best
  (``shown = hidden + a * (colour - hidden)`` for some alpha ``a``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["OverlayMatch", "iou", "load_rgb", "match_overlay", "overlay_mask"]

#: Smallest change (0..255, any channel) that counts as overlay.
CHANGE_TOLERANCE = 16
#: Components smaller than this (pixels) are ignored (specks, anti-aliasing).
MIN_COMPONENT_PX = 30
#: Pixels darker than this are outside the image (the viewport's black).
BLACK = 20


def load_rgb(path: str | Path) -> np.ndarray:
    """Return a PNG as float RGB, shape (height, width, 3), values 0..255."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=float)


def overlay_mask(shown: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Pixels whose colour differs between the two pictures (bool, height x width)."""
    if shown.shape != hidden.shape:
        raise ValueError(f"screenshots differ in size: {shown.shape} vs {hidden.shape}")
    return np.abs(shown - hidden).max(axis=2) > CHANGE_TOLERANCE


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@dataclass(frozen=True)
class OverlayMatch:
    """Per-structure screen regions and overlay pixels of one viewport picture.

    Attributes
    ----------
    regions : list of numpy.ndarray
        Bool masks of the bright structures, in the order of ``levels`` given.
    overlays : list of numpy.ndarray
        Bool masks of the overlay pixels attributed to each segment colour.
    ious : list of float
        IoU of ``overlays[s]`` with ``regions[s]``.
    overlay_px : int
        All changed pixels.
    background_grey : float
        Grey level of the phantom background on screen.
    """

    regions: list[np.ndarray]
    overlays: list[np.ndarray]
    ious: list[float]
    overlay_px: int
    background_grey: float


def _background_grey(grey: np.ndarray) -> float:
    """Most common grey level of the image area (black surround excluded)."""
    values = np.round(grey[grey > BLACK]).astype(int)
    if values.size == 0:
        raise ValueError("the overlay-hidden picture is black: no image on screen")
    return float(np.bincount(values).argmax())


def structure_regions(hidden: np.ndarray, count: int) -> tuple[list[np.ndarray], float]:
    """Find ``count`` bright structures in the overlay-hidden picture, dimmest first.

    Raises
    ------
    AssertionError
        If the number of bright components is not ``count``.
    """
    grey = hidden.mean(axis=2)
    background = _background_grey(grey)
    bright = grey > background + 0.25 * (grey.max() - background)
    labels, n = ndimage.label(bright)
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, n + 1))
    kept = [k + 1 for k in range(n) if sizes[k] >= MIN_COMPONENT_PX]
    assert len(kept) == count, (
        f"expected {count} bright structures on screen, found {len(kept)} "
        f"(component sizes {sorted(int(s) for s in sizes)[-8:]})"
    )
    medians = {k: float(np.median(grey[labels == k])) for k in kept}
    regions = []
    for k in sorted(kept, key=medians.__getitem__):
        threshold = 0.5 * (background + medians[k])
        regions.append((labels == k) & (grey > threshold))
    return regions, background


def attribute_overlay(
    shown: np.ndarray, hidden: np.ndarray, mask: np.ndarray,
    colours: Sequence[tuple[int, int, int]],
) -> list[np.ndarray]:
    """Split the changed pixels by the segment colour that best explains the change."""
    d = (shown - hidden)[mask]                                  # (n, 3)
    residuals = []
    for colour in colours:
        v = np.asarray(colour, dtype=float)[None, :] - hidden[mask]
        alpha = np.clip((d * v).sum(1) / np.maximum((v * v).sum(1), 1e-6), 0.0, 1.0)
        residuals.append(np.linalg.norm(d - alpha[:, None] * v, axis=1))
    best = np.argmin(np.stack(residuals), axis=0)
    out = []
    for s in range(len(colours)):
        m = np.zeros(mask.shape, bool)
        m[mask] = best == s
        out.append(m)
    return out


def match_overlay(
    shown: np.ndarray, hidden: np.ndarray, colours_dim_to_bright: Sequence[tuple[int, int, int]],
) -> OverlayMatch:
    """Compare each segment's overlay with its bright structure on screen.

    Parameters
    ----------
    shown, hidden : numpy.ndarray
        Canvas pictures (height, width, 3) with the overlay shown and hidden.
    colours_dim_to_bright : sequence of (r, g, b)
        Display colour of each segment, ordered like the structures' grey
        levels in the phantom, dimmest first.

    Returns
    -------
    OverlayMatch
        Regions, overlay masks and IoU per structure, in that order.
    """
    mask = overlay_mask(shown, hidden)
    regions, background = structure_regions(hidden, len(colours_dim_to_bright))
    overlays = attribute_overlay(shown, hidden, mask, colours_dim_to_bright)
    return OverlayMatch(
        regions=regions, overlays=overlays,
        ious=[iou(o, r) for o, r in zip(overlays, regions, strict=True)],
        overlay_px=int(mask.sum()), background_grey=background,
    )
