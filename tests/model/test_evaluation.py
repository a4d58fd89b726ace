"""Dice, HD95, volumes and vessel connectivity against values known from the geometry."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from scipy import ndimage

from model.evaluation import hd95_mm, is_vessel, score
from model.labels import MRSEGMENTATOR

SPACING = (3.0, 1.5, 1.0)  # (k, j, i) mm


def _volume(array: np.ndarray, spacing: tuple[float, float, float] = SPACING) -> hd.Volume:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    return hd.Volume(array, affine, coordinate_system="PATIENT")


def _box(shape: tuple[int, int, int], lo: tuple[int, int, int],
         size: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, a + n) for a, n in zip(lo, size, strict=True))] = True
    return mask


@pytest.mark.parametrize(("axis", "shift"), [(0, 1), (1, 3), (2, 4)])
def test_a_box_moved_along_one_axis(axis: int, shift: int) -> None:
    """Dice (n - d) / n; HD95 = d voxels in mm (the two faces across the move)."""
    size = (12, 14, 16)
    a = _box((30, 30, 30), (5, 5, 5), size)
    lo = [5, 5, 5]
    lo[axis] += shift
    b = _box((30, 30, 30), tuple(lo), size)
    [liver] = score(_volume(a.astype(np.uint8) * 5), _volume(b.astype(np.uint8) * 5),
                    MRSEGMENTATOR, labels=[5])
    assert liver.name == "liver"
    assert liver.dice == pytest.approx((size[axis] - shift) / size[axis])
    assert liver.hd95_mm == pytest.approx(shift * SPACING[axis])
    voxel_ml = np.prod(SPACING) / 1000
    assert liver.volume_ml == pytest.approx(np.prod(size) * voxel_ml)
    assert liver.volume_change_ml == pytest.approx(0.0)


def test_hd95_matches_scipys_exact_distance_transform_on_irregular_shapes() -> None:
    rng = np.random.default_rng(3)
    for _ in range(4):
        a = ndimage.binary_dilation(rng.random((24, 28, 26)) > 0.996, iterations=3)
        b = ndimage.binary_dilation(a, iterations=1) & (rng.random(a.shape) > 0.05)
        faces = ndimage.generate_binary_structure(3, 1)
        pa, pb = np.pad(a, 1), np.pad(b, 1)
        sa, sb = pa & ~ndimage.binary_erosion(pa, faces), pb & ~ndimage.binary_erosion(pb, faces)
        expected = max(
            np.percentile(ndimage.distance_transform_edt(~sb, sampling=SPACING)[sa], 95),
            np.percentile(ndimage.distance_transform_edt(~sa, sampling=SPACING)[sb], 95))
        assert hd95_mm(a, b, SPACING) == pytest.approx(expected, abs=1e-4)


def test_a_structure_on_one_side_only_has_dice_zero_and_no_hd95() -> None:
    a = _box((10, 10, 10), (2, 2, 2), (3, 3, 3)).astype(np.uint8)
    [spleen] = score(_volume(a), _volume(np.zeros_like(a)), MRSEGMENTATOR)
    assert (spleen.label, spleen.dice, spleen.hd95_mm) == (1, 0.0, None)
    assert spleen.reference_volume_ml == 0.0 and spleen.volume_change_pct == pytest.approx(-100)
    [added] = score(_volume(np.zeros_like(a)), _volume(a), MRSEGMENTATOR)
    assert added.volume_change_pct is None  # nothing to compare the added volume with
    assert score(_volume(np.zeros_like(a)), _volume(np.zeros_like(a)), MRSEGMENTATOR) == []


def test_masks_touching_the_grid_edge_have_a_surface_there() -> None:
    a = np.zeros((8, 8, 8), dtype=np.uint8)
    a[:, :, :4] = 13
    b = np.zeros_like(a)
    b[:, :, :2] = 13
    [aorta] = score(_volume(a), _volume(b), MRSEGMENTATOR)
    assert aorta.dice == pytest.approx(2 * 2 / 6)
    assert aorta.hd95_mm == pytest.approx(2 * SPACING[2])


def test_vessel_connectivity_is_reported_for_vessels_only() -> None:
    assert is_vessel(MRSEGMENTATOR.by_name("aorta"))
    assert is_vessel(MRSEGMENTATOR.by_name("left_iliac_vena"))
    assert not is_vessel(MRSEGMENTATOR.by_name("liver"))
    whole = np.zeros((20, 10, 10), dtype=np.uint8)
    whole[2:18, 4:6, 4:6] = 13
    whole[2:8, 1:3, 1:3] = 5
    broken = whole.copy()
    broken[10] = 0  # one slice of the aorta missing: two components
    scores = {s.name: s for s in score(_volume(whole), _volume(broken), MRSEGMENTATOR)}
    assert (scores["aorta"].connected, scores["aorta"].reference_connected) == (True, False)
    assert scores["liver"].connected is None and scores["liver"].dice == 1.0
    diagonal = np.zeros((3, 3, 3), dtype=np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 13  # corners touch: one 26-connected component
    [aorta] = score(_volume(diagonal), _volume(diagonal), MRSEGMENTATOR)
    assert aorta.connected is True


def test_grids_must_match() -> None:
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="must be on one grid"):
        score(_volume(a), _volume(a, spacing=(3.0, 1.5, 1.1)), MRSEGMENTATOR)
