"""Sanity of the analytic phantom: labels, volumes, laterality, grids.

Volume tolerance. Counting voxels whose centre lies inside a smooth closed
surface misclassifies only voxels cut by the surface, i.e. at most the shell
of half-voxel thickness on either side: |count - V| <= S * h / 2 for surface
area S and spacing h (the signed errors largely cancel, so the actual error is
far smaller). We assert that bound at h = 1.5 mm, and 2 % on top for the
ellipsoids. For a cylinder aligned with the grid the error of the cross
section repeats in every slice instead of cancelling, so only the shell bound
(~6 % for the aorta, radius 12 mm) holds there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.phantom import CT_HU, GridGeometry, Organ, Phantom, make_grid

MRSEG_NAMES = {
    1: "spleen", 2: "right_kidney", 3: "left_kidney", 5: "liver", 6: "stomach",
    10: "left_lung", 11: "right_lung", 12: "heart", 13: "aorta",
    24: "urinary_bladder", 25: "spine",
}


def _surface_mm2(organ: Organ, scale: np.ndarray) -> float:
    """Surface area (Knud Thomsen's ellipsoid formula; exact for a cylinder)."""
    a, b, c = (s * k for s, k in zip(organ.semi, scale, strict=True))
    if organ.kind == "cylinder":
        h = ((a - b) / (a + b)) ** 2
        perimeter = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
        return perimeter * 2 * c + 2 * math.pi * a * b
    p = 1.6075
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def _organ_box_grid(phantom: Phantom, organ: Organ, h: float) -> GridGeometry:
    """Axis-aligned LPS grid around an organ, large enough for any jitter."""
    centre = phantom.from_phantom_frame(np.asarray(organ.center)[None])[0]
    half = max(organ.semi) * 1.25 + 3 * h
    n = int(math.ceil(2 * half / h))
    return make_grid("axial", (h, h, h), fov_mm=(n * h, n * h, n * h), center_mm=tuple(centre))


def test_label_names_are_mrsegmentator() -> None:
    assert Phantom().label_names == MRSEG_NAMES


@pytest.mark.parametrize("jitter", [0.0, 0.8])
def test_analytic_volume_matches_voxel_count(jitter: float) -> None:
    phantom = Phantom(seed=3, jitter=jitter)
    h = 1.5
    for organ in phantom.organs:
        grid = _organ_box_grid(phantom, organ, h)
        count = int(organ.contains(phantom.to_phantom_frame(grid.voxel_centres())).sum())
        measured_ml = count * h**3 / 1000.0
        truth_ml = phantom.analytic_volume_ml(organ.label)
        bound_ml = _surface_mm2(organ, phantom.scale) * h / 2 / 1000.0
        assert abs(measured_ml - truth_ml) <= bound_ml, organ.name
        if organ.kind == "ellipsoid":
            assert abs(measured_ml - truth_ml) <= 0.02 * truth_ml, organ.name


def test_organs_do_not_overlap_and_lie_inside_the_body() -> None:
    phantom = Phantom()
    points = make_grid("axial", (2.0, 2.0, 2.0), fov_mm=(520.0, 270.0, 370.0)).voxel_centres()
    frame = phantom.to_phantom_frame(points)
    inside = np.stack([organ.contains(frame) for organ in phantom.organs])
    assert inside.sum(axis=0).max() == 1
    tissue = phantom.tissue_at(points)
    for organ, mask in zip(phantom.organs, inside, strict=True):
        assert mask.any(), organ.name
        # every organ voxel is an organ (not fat or air); its 2 mm neighbourhood is in muscle
        assert (tissue[mask] == organ.label).all()
    grown = [Organ(o.label, o.name, o.center, tuple(s + 2.0 for s in o.semi), o.kind)
             for o in phantom.organs]
    near = np.stack([g.contains(frame) for g in grown]).any(axis=0)
    assert (tissue[near] >= 0).all(), "an organ comes within 2 mm of the fat layer"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_laterality(seed: int) -> None:
    phantom = Phantom(seed=seed, jitter=1.0)
    grid = make_grid("axial", (4.0, 4.0, 4.0))
    points = grid.voxel_centres()
    labels = phantom.labels_at(points)
    mean_x = {name: points[labels == label, 0].mean() for label, name in MRSEG_NAMES.items()}
    # LPS: +x is the patient's left
    for name in ("left_kidney", "left_lung", "spleen", "stomach"):
        assert mean_x[name] > 20.0, name
    for name in ("right_kidney", "right_lung", "liver"):
        assert mean_x[name] < -20.0, name
    assert mean_x["left_kidney"] > mean_x["spine"] > mean_x["right_kidney"]


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal", "oblique"])
def test_default_grids_hold_the_whole_body(orientation: str) -> None:
    grid = make_grid(orientation, (6.0, 5.0, 5.0), rng=np.random.default_rng(4))
    direction = grid.affine[:3, :3] / np.linalg.norm(grid.affine[:3, :3], axis=0)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    tissue = Phantom().tissue_at(grid.voxel_centres()).reshape(grid.shape)
    faces = [tissue[0], tissue[-1], tissue[:, 0], tissue[:, -1], tissue[:, :, 0], tissue[:, :, -1]]
    assert all((face == -2).all() for face in faces), "the body touches the edge of the grid"
    assert (tissue > 0).any()


def test_reversed_slices_have_the_same_voxel_centres() -> None:
    forward = make_grid("coronal", (5.0, 3.0, 3.0))
    backward = make_grid("coronal", (5.0, 3.0, 3.0), reversed_slices=True)
    a = forward.voxel_centres().reshape(*forward.shape, 3)
    b = backward.voxel_centres().reshape(*backward.shape, 3)
    np.testing.assert_allclose(a, b[::-1], atol=1e-9)
    assert np.dot(forward.affine[:3, 0], backward.affine[:3, 0]) < 0


def test_axial_grid_directions() -> None:
    affine = make_grid("axial", (5.0, 2.0, 3.0)).affine
    np.testing.assert_allclose(affine[:3, 0], [0, 0, 5.0])  # slice step: superior
    np.testing.assert_allclose(affine[:3, 1], [0, 2.0, 0])  # row step: posterior
    np.testing.assert_allclose(affine[:3, 2], [3.0, 0, 0])  # column step: left


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_sample(modality: str) -> None:
    phantom = Phantom()
    grid = make_grid("axial", (6.0, 6.0, 6.0))
    image, labels = phantom.sample(grid, modality=modality, rng=np.random.default_rng(0))
    assert image.array.dtype == np.float32 and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(image.affine, grid.affine)
    np.testing.assert_array_equal(labels.affine, grid.affine)
    truth = phantom.labels_at(grid.voxel_centres()).reshape(grid.shape)
    np.testing.assert_array_equal(labels.array, truth)
    assert set(np.unique(labels.array)) == {0, *MRSEG_NAMES}
    if modality == "CT":
        liver = image.array[labels.array == 5]
        assert abs(float(np.median(liver)) - CT_HU["liver"]) < 5.0
    else:
        assert image.array.min() >= 0.0


def test_jitter_is_seeded() -> None:
    a, b = Phantom(5, jitter=1.0), Phantom(5, jitter=1.0)
    assert a.analytic_volume_ml(5) == b.analytic_volume_ml(5)
    assert a.analytic_volume_ml(5) != Phantom(6, jitter=1.0).analytic_volume_ml(5)
    with pytest.raises(ValueError, match="jitter"):
        Phantom(jitter=2.0)
