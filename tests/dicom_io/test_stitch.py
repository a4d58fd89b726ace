"""stitch() and labels_to_station(): stations of one phantom cut apart and put back together.

Every station is sampled from the same phantom with the same noise seed, so all
stations share one smooth MR bias field and differ only by the intensity factor
applied to each (the station-to-station signal difference that stitching has to
undo) and by their independent Rician noise. Station grids are exact sub-grids
of one unsplit grid unless a test says otherwise, so resampling onto the
stitched grid moves no voxel centre and the expected results can be exact.

Image tolerance (see :func:`_assert_matches_reference`). The stitched image,
divided by the first station's factor, and the unsplit phantom sampled on the
stitched grid differ only by noise: both are Rician with sigma = 20, and
stitching neither interpolates (sub-grids) nor changes the signal (the factors
are undone). For two independent Gaussian samples of equal sigma the expected
absolute difference is 2 sigma / sqrt(pi) = 22.6, and that is an upper bound
here: Rician noise is smaller in low-signal tissue (lungs, 40), blended
overlaps average two stations, and the station that starts where the unsplit
grid starts draws the same real-part noise (same seed, same first draws). With
~10^6 body voxels the sample mean sits within 0.1 of its expectation (measured:
15-18), so we require the mean absolute difference inside the body to stay
below 22.6. A scale error of 2 % moves that mean by only ~3, so the mean
signed difference, where noise averages out, must stay below 1 % of the mean
signal; and the correlation must exceed 0.99 (signal standard deviation ~250
against noise 20 gives about 0.995).
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
import pytest

from dicom_io.stitch import Gap, StitchResult, labels_to_station, stitch, stitched_grid
from model.phantom import GridGeometry, Phantom, make_grid
from segnode_errors import InputRejected

PHANTOM = Phantom(5, jitter=0.5)
#: One noise seed for every sample: the same bias field everywhere.
SEED = 23
SIGMA = 20.0
SPACING = (4.0, 3.0, 3.0)
#: The trunk cut to 400 mm, 240 x 320 mm in plane (the body's edges are left out: faster).
FOV = (400.0, 240.0, 320.0)
#: Intensity factor of station n (in stacking order).
FACTORS = (1.2, 0.75, 1.4, 0.9, 1.3, 0.8)


def _image(grid: GridGeometry) -> hd.Volume:
    image, _ = PHANTOM.sample(grid, modality="MR", rng=np.random.default_rng(SEED))
    return image


def _labels(grid: GridGeometry) -> np.ndarray:
    return PHANTOM.labels_at(grid.voxel_centres()).reshape(grid.shape)


def _sub_grid(grid: GridGeometry, axis: int, start: int, count: int, *,
              reverse: bool = False) -> GridGeometry:
    """Indices ``start .. start + count - 1`` of ``grid`` along ``axis``, as a grid of its own."""
    affine = grid.affine.copy()
    affine[:3, 3] = grid.affine[:3, 3] + start * grid.affine[:3, axis]
    shape = list(grid.shape)
    shape[axis] = count
    if reverse:
        affine[:3, 3] += (count - 1) * affine[:3, axis]
        affine[:3, axis] = -affine[:3, axis]
    return GridGeometry(affine, tuple(shape))  # type: ignore[arg-type]


def _split(n: int, stations: int, overlap: int) -> list[tuple[int, int]]:
    """(start, count) of ``stations`` runs covering 0..n-1, consecutive ones sharing ``overlap``."""
    total = n + (stations - 1) * overlap
    counts = np.diff(np.round(np.linspace(0, total, stations + 1)).astype(int))
    starts = [0]
    for count in counts[:-1]:
        starts.append(starts[-1] + int(count) - overlap)
    assert starts[-1] + counts[-1] == n
    return list(zip(starts, (int(c) for c in counts), strict=True))


def _stations(grid: GridGeometry, runs: list[tuple[int, int]], axis: int = 0
              ) -> tuple[list[GridGeometry], list[hd.Volume]]:
    """Station grids along ``axis`` and their images, station n scaled by FACTORS[n]."""
    grids = [_sub_grid(grid, axis, start, count) for start, count in runs]
    images = []
    for n, station in enumerate(grids):
        image = _image(station)
        images.append(image.with_array(image.array * np.float32(FACTORS[n])))
    return grids, images


def _shuffled(items: list, seed: int) -> tuple[list, list[int]]:
    """``items`` in a random order, and ``perm`` with shuffled[i] = items[perm[i]]."""
    perm = [int(p) for p in np.random.default_rng(seed).permutation(len(items))]
    return [items[p] for p in perm], perm


@pytest.fixture(scope="module")
def axial() -> dict:
    """The unsplit axial grid, its image, labels and body mask."""
    grid = make_grid("axial", SPACING, fov_mm=FOV)
    tissue = PHANTOM.tissue_at(grid.voxel_centres()).reshape(grid.shape)
    labels = np.where(tissue > 0, tissue, 0).astype(np.uint8)
    return {"grid": grid, "image": _image(grid), "labels": labels, "body": tissue >= -1}


def _assert_same_grid(volume: hd.Volume, grid: GridGeometry) -> None:
    assert volume.spatial_shape == grid.shape
    np.testing.assert_allclose(volume.affine, grid.affine, atol=1e-4)


def _assert_matches_reference(stitched: np.ndarray, reference: np.ndarray,
                              body: np.ndarray) -> None:
    """Equal up to independent noise (tolerances in the module docstring)."""
    a, b = stitched[body].astype(np.float64), reference[body].astype(np.float64)
    noise_mad = 2 * SIGMA / math.sqrt(math.pi)
    assert np.abs(a - b).mean() < noise_mad
    assert abs((a - b).mean()) < 0.01 * b.mean()
    assert np.corrcoef(a, b)[0, 1] > 0.99


@pytest.mark.parametrize(("count", "overlap_mm"), [(3, 40.0), (4, 28.0), (6, 20.0)])
def test_stations_stitch_back_into_the_phantom(axial, count, overlap_mm):
    grid = axial["grid"]
    runs = _split(grid.shape[0], count, int(overlap_mm / SPACING[0]))
    _, images = _stations(grid, runs)
    shuffled, perm = _shuffled(images, seed=count)

    result = stitch(shuffled)

    assert isinstance(result, StitchResult)
    # stacking order: input indices from the first station (inferior) to the last
    assert list(result.order) == sorted(range(count), key=lambda i: perm[i])
    assert result.stack_axis == 0
    assert result.gaps == ()
    first = FACTORS[0]
    for i, station in enumerate(perm):
        assert result.scales[i] == pytest.approx(first / FACTORS[station], rel=0.02)
    assert result.scales[result.order[0]] == 1.0
    _assert_same_grid(result.volume, grid)
    assert result.volume.dtype == np.float32
    stitched = result.volume.array
    _assert_matches_reference(stitched / first, axial["image"].array, axial["body"])
    # where only one station reaches, the stitched image is that station, scaled
    for i, station in enumerate(perm):
        start, n = runs[station]
        lo = runs[station - 1][0] + runs[station - 1][1] if station > 0 else start
        hi = runs[station + 1][0] if station < count - 1 else start + n
        np.testing.assert_allclose(stitched[lo:hi],
                                   shuffled[i].array[lo - start:hi - start] * result.scales[i],
                                   rtol=1e-5, atol=1e-3)


def test_stitched_grid_equals_the_unsplit_grid(axial):
    grid = axial["grid"]
    runs = _split(grid.shape[0], 3, 8)
    grids = [_sub_grid(grid, 0, start, n) for start, n in runs]
    volumes = [g.volume(np.zeros(g.shape, np.float32)) for g in grids]
    affine, shape = stitched_grid(volumes[::-1])
    assert shape == grid.shape
    np.testing.assert_allclose(affine, grid.affine, atol=1e-4)


def test_grid_takes_the_finest_spacing_of_the_stations():
    upper = make_grid("axial", (5.0, 3.0, 3.0), fov_mm=(200.0, 240.0, 300.0),
                      center_mm=(0.0, 0.0, 100.0))
    lower = make_grid("axial", (4.0, 2.5, 2.5), fov_mm=(240.0, 240.0, 300.0),
                      center_mm=(0.0, 0.0, -80.0))
    images = [_image(upper), _image(lower)]
    images[1] = images[1].with_array(images[1].array * np.float32(1.3))

    result = stitch(images)

    volume = result.volume
    np.testing.assert_allclose(volume.spacing, (4.0, 2.5, 2.5), atol=1e-6)
    np.testing.assert_allclose(np.abs(volume.direction), np.eye(3)[:, ::-1], atol=1e-9)
    # the union: z from -200 to +200 (overlap 40 mm), 240 x 300 mm in plane
    assert volume.spatial_shape == (100, 96, 120)
    corners = volume.affine @ np.array([[-0.5, -0.5, -0.5, 1.0], [99.5, 95.5, 119.5, 1.0]]).T
    np.testing.assert_allclose(corners[:3, 0], (-150.0, -120.0, -200.0), atol=1e-6)
    np.testing.assert_allclose(corners[:3, 1], (150.0, 120.0, 200.0), atol=1e-6)
    assert list(result.order) == [1, 0]
    assert result.scales[0] == pytest.approx(1.3, rel=0.03)


def test_a_missing_station_leaves_a_reported_unfilled_gap(axial):
    grid = axial["grid"]
    runs = _split(grid.shape[0], 3, 10)
    _, images = _stations(grid, runs)
    kept_runs, kept = [runs[0], runs[2]], [images[2], images[0]]

    result = stitch(kept)

    assert list(result.order) == [1, 0]
    gap_start = kept_runs[0][0] + kept_runs[0][1]
    gap_stop = kept_runs[1][0]
    real_gap_mm = (gap_stop - gap_start) * SPACING[0]
    assert len(result.gaps) == 1
    (gap,) = result.gaps
    assert isinstance(gap, Gap)
    assert gap.after == 0
    assert abs(gap.size_mm - real_gap_mm) <= SPACING[0]
    _assert_same_grid(result.volume, grid)
    assert not result.volume.array[gap_start:gap_stop].any()
    assert result.volume.array[gap_start - 1].any() and result.volume.array[gap_stop].any()


def test_touching_stations_have_no_gap(axial):
    grid = axial["grid"]
    runs = _split(grid.shape[0], 3, 0)
    _, images = _stations(grid, runs)

    result = stitch(images[::-1])

    assert result.gaps == ()
    assert list(result.order) == [2, 1, 0]
    _assert_same_grid(result.volume, grid)
    for i, station in enumerate((2, 1, 0)):
        start, n = runs[station]
        np.testing.assert_allclose(result.volume.array[start:start + n],
                                   images[station].array * result.scales[i], rtol=1e-5,
                                   atol=1e-3)


def test_coronal_stations_stack_along_the_row_axis():
    """Coronal stations follow each other head to foot: along j, not the slice axis k."""
    grid = make_grid("coronal", (3.0, 4.0, 3.0), fov_mm=(FOV[1], FOV[0], FOV[2]))
    runs = _split(grid.shape[1], 3, 8)
    _, images = _stations(grid, runs, axis=1)
    shuffled, perm = _shuffled(images, seed=1)

    result = stitch(shuffled)

    assert result.stack_axis == 1
    assert list(result.order) == sorted(range(3), key=lambda i: perm[i])
    for i, station in enumerate(perm):
        assert result.scales[i] == pytest.approx(FACTORS[0] / FACTORS[station], rel=0.02)
    _assert_same_grid(result.volume, grid)
    body = (PHANTOM.tissue_at(grid.voxel_centres()) >= -1).reshape(grid.shape)
    _assert_matches_reference(result.volume.array / FACTORS[0], _image(grid).array, body)


def _small(orientation: str, centre_z: float, **kwargs) -> hd.Volume:
    fov = {"axial": (120.0, 300.0, 400.0), "coronal": (300.0, 120.0, 400.0)}[orientation]
    grid = make_grid(orientation, (4.0, 6.0, 6.0) if orientation == "axial" else (6.0, 4.0, 6.0),
                     fov_mm=fov, center_mm=(0.0, 0.0, centre_z), **kwargs)
    return grid.volume(np.ones(grid.shape, np.float32))


@pytest.mark.parametrize("odd", ["coronal", "oblique"])
def test_stations_of_another_orientation_are_rejected_by_index(odd):
    stations = [_small("axial", -100.0), _small("axial", 0.0)]
    if odd == "coronal":
        stations.append(_small("coronal", 100.0))
    else:
        grid = make_grid("oblique", (4.0, 6.0, 6.0), fov_mm=(120.0, 300.0, 400.0),
                         center_mm=(0.0, 0.0, 100.0), rng=np.random.default_rng(2),
                         max_oblique_deg=15.0)
        stations.append(grid.volume(np.ones(grid.shape, np.float32)))
    with pytest.raises(InputRejected, match="Station 2"):
        stitch(stations)


def test_reversed_slice_order_is_the_same_orientation():
    stations = [_small("axial", -50.0), _small("axial", 50.0, reversed_slices=True)]
    result = stitch(stations)
    assert result.gaps == ()
    assert result.volume.spatial_shape[0] == 55


def test_a_single_station_is_rejected():
    with pytest.raises(InputRejected, match="at least two"):
        stitch([_small("axial", 0.0)])


def test_without_intensity_matching_the_factors_stay_one(axial):
    grid = axial["grid"]
    runs = _split(grid.shape[0], 3, 10)
    _, images = _stations(grid, runs)
    result = stitch(images, match_intensities=False)
    assert result.scales == (1.0, 1.0, 1.0)
    start, n = runs[1]
    middle = result.volume.array[start + 10:start + n - 10]
    np.testing.assert_allclose(middle, images[1].array[10:n - 10], rtol=1e-5, atol=1e-3)


def test_labels_map_back_exactly_onto_sub_grid_stations(axial):
    """Station grids that are sub-grids of the stitched grid get the phantom labels exactly."""
    grid = axial["grid"]
    labels = grid.volume(axial["labels"])
    runs = _split(grid.shape[0], 4, 7)
    stations = [_sub_grid(grid, 0, start, n, reverse=(index == 2))
                for index, (start, n) in enumerate(runs)]
    for station in stations:
        target = station.volume(np.zeros(station.shape, np.float32))

        mapped = labels_to_station(labels, target)

        assert mapped.spatial_shape == station.shape
        np.testing.assert_array_equal(mapped.affine, station.affine)
        assert mapped.dtype == labels.dtype
        np.testing.assert_array_equal(mapped.array, _labels(station))


def _near_border(grid: GridGeometry, half_step: np.ndarray) -> np.ndarray:
    """Voxels of ``grid`` whose label changes within +-``half_step`` (LPS mm, per axis).

    The label is probed at the 27 points of the box (centre, face and edge
    midpoints, corners): an organ surface (semi-axes >= 12 mm) cannot cross a
    box of half-size <= 2 mm without changing the label at one of them, short
    of a cap thinner than the gap between probes (~0.1 mm).
    """
    centres = grid.voxel_centres()
    base = PHANTOM.labels_at(centres)
    near = np.zeros(len(centres), bool)
    for offset in np.array(np.meshgrid(*[(-1, 0, 1)] * 3, indexing="ij")).reshape(3, -1).T:
        near |= PHANTOM.labels_at(centres + offset * half_step) != base
    return near.reshape(grid.shape)


def test_labels_map_back_onto_a_station_with_its_own_grid(axial):
    """Nearest neighbour: exact wherever the label is constant within half a stitched voxel."""
    grid = axial["grid"]
    labels = grid.volume(axial["labels"])
    station = make_grid("axial", (5.0, 2.5, 2.5), fov_mm=(120.0, 180.0, 260.0),
                        center_mm=(3.1, -1.7, 40.3), reversed_slices=True)
    target = station.volume(np.zeros(station.shape, np.float32))

    mapped = labels_to_station(labels, target)

    assert mapped.spatial_shape == station.shape
    np.testing.assert_array_equal(mapped.affine, station.affine)
    assert mapped.dtype == labels.dtype
    truth = _labels(station)
    away = ~_near_border(station, np.abs(grid.affine[:3, :3]).sum(axis=1) / 2)
    assert away.mean() > 0.8
    assert len(np.unique(truth[away])) >= 6
    np.testing.assert_array_equal(mapped.array[away], truth[away])
