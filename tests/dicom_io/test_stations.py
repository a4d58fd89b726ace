"""group_stations(): which volumes of a study are stations of one acquisition.

Every volume is a real phantom series, written with ``write_series`` (header
attributes the writer does not set, ImageType and EchoTime, are changed in the
written files with pydicom) and read back with ``find_series`` and
``read_series``, so the grouping sees real source headers. The grids are
coarse (8 mm voxels): grouping looks at headers and extents, not pixels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_io.phantom_series import write_series
from dicom_io.scan import find_series
from dicom_io.series import read_series
from dicom_io.stations import (
    StationGrouping,
    StationSet,
    description_stem,
    dixon_contrast,
    group_stations,
)
from dicom_io.uids import derived_uid
from dicom_io.volume import SeriesVolume
from model.phantom import GridGeometry, Phantom, make_grid

PHANTOM = Phantom(3, jitter=0.5)
SEED = 4
SPACING = (8.0, 8.0, 8.0)
IN_PLANE = (240.0, 320.0)
#: Station length and overlap along z (mm).
LENGTH, OVERLAP = 160.0, 30.0
PATIENT = ("Doe^Jane", "PID-4711")
SIEMENS_DIXON = {"in": "in", "opp": "opp", "W": "water", "F": "fat"}


def _grid(centre_z: float, *, length: float = LENGTH, orientation: str = "axial"
          ) -> GridGeometry:
    if orientation == "axial":
        fov = (length, *IN_PLANE)
    else:  # coronal: rows run head to foot
        fov = (IN_PLANE[0], length, IN_PLANE[1])
    return make_grid(orientation, SPACING, fov_mm=fov, center_mm=(0.0, 0.0, centre_z))


def _station_z(n: int, *, gap_mm: float = 0.0, gap_after: int | None = None) -> float:
    """Centre (z) of station n, head first, consecutive stations overlapping by OVERLAP."""
    z = 200.0 - n * (LENGTH - OVERLAP)
    if gap_after is not None and n > gap_after:
        z -= gap_mm + OVERLAP
    return z


class Study:
    """Writes phantom series of one study under a folder and reads them back."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / name
        self.uid = derived_uid("test-stations-study", name)
        self.frame_uid = derived_uid("test-stations-for", name)
        self._count = 0

    def write(self, grid: GridGeometry, description: str, *, scale: float = 1.0,
              image_type: list[str] | None = None, echo_time: float | None = None) -> str:
        """Write one series; returns its SeriesInstanceUID."""
        self._count += 1
        image, _ = PHANTOM.sample(grid, modality="MR", rng=np.random.default_rng(SEED))
        folder = self.root / f"series{self._count:02d}"
        paths = write_series(image.with_array(image.array * np.float32(scale)), folder,
                             study_uid=self.uid, frame_of_reference_uid=self.frame_uid,
                             series_number=self._count, series_description=description,
                             patient_name=PATIENT[0], patient_id=PATIENT[1],
                             uid_seed=f"{self.uid}-{self._count}")
        if image_type is not None or echo_time is not None:
            for path in paths:
                ds = pydicom.dcmread(path)
                if image_type is not None:
                    ds.ImageType = image_type
                if echo_time is not None:
                    ds.EchoTime = echo_time
                ds.save_as(path)
        return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def _read(*roots: Path) -> list[SeriesVolume]:
    volumes = []
    for root in roots:
        for files in find_series(root):
            result = read_series(files)
            assert not result.rejected
            volumes.extend(result.volumes)
    return volumes


def _z_low(volume: SeriesVolume) -> float:
    """Lowest voxel-centre z of a volume (LPS mm)."""
    shape = np.asarray(volume.volume.spatial_shape)
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1)
    return float(((volume.volume.affine[:3, :3] @ corners).T + volume.volume.affine[:3, 3])[:, 2]
                 .min())


def _station_number(volume: SeriesVolume) -> int:
    return int(re.search(r"_(\d)_", volume.description).group(1))


@pytest.fixture(scope="module")
def dixon(tmp_path_factory) -> tuple[Study, list[SeriesVolume]]:
    """One study: 3 overlapping axial stations x 4 Siemens Dixon contrasts."""
    study = Study(tmp_path_factory.mktemp("dixon"), "dixon")
    for n in range(3):
        for suffix in SIEMENS_DIXON:
            study.write(_grid(_station_z(n)), f"t1_vibe_dixon_tra_{n + 1}_{suffix}",
                        scale=1.0 + 0.2 * n)
    return study, _read(study.root)


def test_siemens_dixon_stations_form_one_set(dixon):
    study, volumes = dixon
    assert len(volumes) == 12

    sets, singles = group_stations(volumes[::-1])

    assert singles == []
    assert len(sets) == 1
    (found,) = sets
    assert isinstance(found, StationSet)
    assert found.study_uid == study.uid
    assert set(found.contrasts) == {"in", "opp", "water", "fat"}
    assert found.station_count == 3
    for contrast, stations in found.contrasts.items():
        assert len(stations) == 3
        assert {dixon_contrast(v) for v in stations} == {contrast}
        # stacking order: along z, station 3 (feet) first
        assert [_station_number(v) for v in stations] == [3, 2, 1]
        lows = [_z_low(v) for v in stations]
        assert lows == sorted(lows)
    reference = found.contrasts["in"]
    for stations in found.contrasts.values():
        for a, b in zip(reference, stations, strict=True):
            assert a.volume.spatial_shape == b.volume.spatial_shape
            np.testing.assert_allclose(a.volume.affine, b.volume.affine, atol=1e-4)
    again, _ = group_stations(volumes)
    assert again[0].key == found.key
    assert {c: [v.key for v in s] for c, s in again[0].contrasts.items()} == {
        c: [v.key for v in s] for c, s in found.contrasts.items()}


def test_set_key_is_stable_without_a_contrast_and_holds_no_patient_data(dixon):
    study, volumes = dixon
    (full,), _ = group_stations(volumes)
    without_fat = [v for v in volumes if not v.description.endswith("_F")]
    (partial,), singles = group_stations(without_fat)

    assert singles == []
    assert set(partial.contrasts) == {"in", "opp", "water"}
    assert partial.key == full.key
    assert re.fullmatch(re.escape(study.uid) + r"\.stations-[0-9a-f]{10}", full.key)
    for value in (*PATIENT, "Doe", "Jane", "4711"):
        assert value not in full.key


def _header_volume(image_type: list[str] | None, description: str = "") -> SeriesVolume:
    """A SeriesVolume with one real source header carrying ``image_type``."""
    grid = make_grid("axial", (8.0, 8.0, 8.0), fov_mm=(24.0, 24.0, 24.0))
    ds = Dataset()
    ds.Modality, ds.SeriesDescription = "MR", description
    if image_type is not None:
        ds.ImageType = image_type
    return SeriesVolume(grid.volume(np.zeros(grid.shape, np.float32)), "1.2.3", (ds,), "MR",
                        "1.2", "1.2.3", description)


@pytest.mark.parametrize(("image_type", "expected"), [
    (["ORIGINAL", "PRIMARY", "M", "DIXON", "W"], "water"),
    (["ORIGINAL", "PRIMARY", "M", "DIXON", "F"], "fat"),
    (["ORIGINAL", "PRIMARY", "M", "IN_PHASE"], "in"),
    (["ORIGINAL", "PRIMARY", "M", "OUT_PHASE"], "opp"),
    (["DERIVED", "PRIMARY", "DIXON", "WATER"], "water"),
    (["ORIGINAL", "PRIMARY", "M", "ND"], ""),
    (["ORIGINAL", "PRIMARY", "OTHER"], ""),
])
def test_dixon_contrast_from_image_type(image_type, expected):
    assert dixon_contrast(_header_volume(image_type)) == expected


@pytest.mark.parametrize(("description", "expected"), [
    ("t1_vibe_dixon_tra_1_in", "in"),
    ("t1_vibe_dixon_tra_2_opp", "opp"),
    ("t1_vibe_dixon_tra_3_W", "water"),
    ("t1_vibe_dixon_tra_3_F", "fat"),
    ("t1 vibe dixon tra 1 W", "water"),
    ("WB T1", ""),
    ("t1_vibe_dixon_tra_1", ""),
])
def test_dixon_contrast_from_description(description, expected):
    assert dixon_contrast(_header_volume(["ORIGINAL", "PRIMARY", "OTHER"], description)) \
        == expected
    assert dixon_contrast(_header_volume(None, description)) == expected


@pytest.mark.parametrize("description", [
    "t1_vibe_dixon_tra_2_opp", "t1_vibe_dixon_tra_1_in", "t1_vibe_dixon_tra_3_W",
    "t1_vibe_dixon_tra_1_F", "t1_vibe_dixon_tra_12", "T1_VIBE_DIXON_TRA_st2_opp",
    "t1_vibe_dixon_tra station 3",
])
def test_description_stem_strips_dixon_suffix_and_station_number(description):
    assert description_stem(description, StationGrouping()) == "t1_vibe_dixon_tra"


@pytest.mark.parametrize(("description", "expected"), [
    ("WB T1", "wb t1"), ("AX T2", "ax t2"), ("WB_T1_st2", "wb_t1"), ("WB T1 2", "wb t1"),
])
def test_description_stem_keeps_digits_that_are_no_station_number(description, expected):
    """'T1' is a weighting, not station 1: only a separated number or a station word is one."""
    assert description_stem(description, StationGrouping()) == expected


def test_dixon_contrasts_from_image_type_group_into_one_set(tmp_path):
    """Philips-style: one description for every contrast, the contrast only in ImageType."""
    study = Study(tmp_path, "philips")
    values = {"water": "W", "fat": "F", "in": "IN_PHASE", "opp": "OUT_PHASE"}
    for n in range(2):
        for value in values.values():
            study.write(_grid(_station_z(n)), "WB mDIXON",
                        image_type=["ORIGINAL", "PRIMARY", "M", "DIXON", value])
    volumes = _read(study.root)

    assert sorted(dixon_contrast(v) for v in volumes) == sorted([*values] * 2)
    sets, singles = group_stations(volumes)

    assert singles == []
    assert len(sets) == 1
    assert set(sets[0].contrasts) == set(values)
    assert sets[0].station_count == 2


@pytest.mark.parametrize("overlap_mm", [OVERLAP, 0.0])
def test_plain_stations_form_one_image_set(tmp_path, overlap_mm):
    study = Study(tmp_path, "plain")
    step = LENGTH - overlap_mm
    for n in range(3):
        study.write(_grid(200.0 - n * step), "WB T1", scale=1.0 + 0.3 * n)
    volumes = _read(study.root)

    sets, singles = group_stations(volumes)

    assert singles == []
    assert len(sets) == 1
    assert set(sets[0].contrasts) == {"image"}
    assert sets[0].station_count == 3
    lows = [_z_low(v) for v in sets[0].contrasts["image"]]
    assert lows == sorted(lows)


def test_a_repeat_over_the_same_region_is_no_station(tmp_path):
    study = Study(tmp_path, "repeat")
    study.write(_grid(0.0), "WB T1")
    study.write(_grid(30.0), "WB T1")  # overlap 130 of 160 mm
    volumes = _read(study.root)

    sets, singles = group_stations(volumes)

    assert sets == []
    assert {v.key for v in singles} == {v.key for v in volumes}


def test_a_repeat_beside_stations_stays_alone(tmp_path):
    study = Study(tmp_path, "repeat3")
    first = study.write(_grid(_station_z(0)), "WB T1")
    second = study.write(_grid(_station_z(1)), "WB T1")
    repeat = study.write(_grid(_station_z(1) - 20.0), "WB T1")
    volumes = _read(study.root)

    sets, singles = group_stations(volumes)

    assert [v.series_uid for v in singles] == [repeat]
    assert len(sets) == 1
    assert [v.series_uid for v in sets[0].contrasts["image"]] == [second, first]


def test_series_of_different_studies_are_never_grouped(tmp_path):
    one, two = Study(tmp_path, "one"), Study(tmp_path, "two")
    one.write(_grid(_station_z(0)), "WB T1")
    two.write(_grid(_station_z(1)), "WB T1")
    volumes = _read(one.root, two.root)

    sets, singles = group_stations(volumes)

    assert sets == []
    assert len(singles) == 2


def test_series_of_different_orientation_are_not_grouped(tmp_path):
    study = Study(tmp_path, "orientation")
    study.write(_grid(_station_z(0)), "WB T1")
    study.write(_grid(_station_z(1), orientation="coronal"), "WB T1")
    volumes = _read(study.root)

    sets, singles = group_stations(volumes)

    assert sets == []
    assert len(singles) == 2


def _two_echo_times(tmp_path: Path) -> tuple[Study, list[SeriesVolume]]:
    """Two stations at each of two echo times, same description and positions."""
    study = Study(tmp_path, "echo")
    for echo_time in (2.0, 4.6):
        for n in range(2):
            study.write(_grid(_station_z(n)), "WB T1", echo_time=echo_time)
    return study, _read(study.root)


def test_different_echo_times_are_separate_sets(tmp_path):
    _, volumes = _two_echo_times(tmp_path)

    sets, singles = group_stations(volumes)

    assert singles == []
    assert len(sets) == 2
    echo_times = []
    for found in sets:
        (stations,) = found.contrasts.values()
        assert len(stations) == 2
        times = {float(v.source[0].EchoTime) for v in stations}
        assert len(times) == 1
        echo_times.extend(times)
    assert sorted(echo_times) == [2.0, 4.6]


def _gap_study(tmp_path: Path, gap_mm: float) -> tuple[Study, list[SeriesVolume]]:
    """Stations 1 and 2 overlapping, then ``gap_mm`` of nothing, then station 3."""
    study = Study(tmp_path, f"gap{gap_mm:.0f}")
    for n in range(3):
        study.write(_grid(_station_z(n, gap_mm=gap_mm, gap_after=1)), "WB T1")
    return study, _read(study.root)


def test_a_gap_larger_than_max_gap_splits_the_run(tmp_path):
    _, volumes = _gap_study(tmp_path, 300.0)

    sets, singles = group_stations(volumes)

    assert len(sets) == 1
    assert sets[0].station_count == 2
    assert len(singles) == 1
    assert _z_low(singles[0]) < min(_z_low(v) for v in sets[0].contrasts["image"])


@pytest.mark.parametrize(("gap_mm", "grouping", "stations"), [
    (100.0, StationGrouping(), 3),
    (100.0, StationGrouping(max_gap_mm=120.0), 3),
    (100.0, StationGrouping(max_gap_mm=80.0), 2),
])
def test_a_gap_below_max_gap_stays_grouped(tmp_path, gap_mm, grouping, stations):
    _, volumes = _gap_study(tmp_path, gap_mm)

    sets, singles = group_stations(volumes, grouping)

    assert len(sets) == 1
    assert sets[0].station_count == stations
    assert len(singles) == 3 - stations


def test_custom_contrast_keys_group_series_with_different_descriptions(tmp_path):
    study = Study(tmp_path, "custom")
    for n, description in enumerate(["WB head", "WB thorax", "WB abdomen"]):
        study.write(_grid(_station_z(n)), description)
    volumes = _read(study.root)

    default_sets, default_singles = group_stations(volumes)
    sets, singles = group_stations(volumes, StationGrouping(contrast_keys=("Modality",)))

    assert default_sets == [] and len(default_singles) == 3
    assert singles == []
    assert len(sets) == 1
    assert [v.description for v in sets[0].contrasts["image"]] == [
        "WB abdomen", "WB thorax", "WB head"]


def _split_run(tmp_path: Path) -> tuple[Study, list[SeriesVolume]]:
    """Four stations, a 300 mm gap (more than max_gap_mm) after the second."""
    study = Study(tmp_path, "split")
    for n in range(4):
        study.write(_grid(_station_z(n, gap_mm=300.0, gap_after=1)), "WB T1")
    return study, _read(study.root)


@pytest.mark.parametrize("make", [_two_echo_times, _split_run], ids=["echo-times", "split-run"])
def test_distinct_sets_of_one_study_have_distinct_keys(tmp_path, make):
    """A key names an output folder: two sets of one study must not share it."""
    _, volumes = make(tmp_path)

    sets, singles = group_stations(volumes)

    assert singles == []
    assert len(sets) == 2
    assert {v.key for s in sets for c in s.contrasts.values() for v in c} == {
        v.key for v in volumes}
    assert sets[0].key != sets[1].key
