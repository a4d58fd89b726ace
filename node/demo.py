"""Demo inputs: a phantom MR series for ``segnode demo``, and whole-body station series."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_io.phantom_series import write_series
from dicom_io.uids import derived_uid
from model.phantom import GridGeometry, Phantom, make_grid

__all__ = ["write_demo_series", "write_station_phantom", "StationPhantom"]

#: Slice, row and column spacing of the demo series (mm): a whole-trunk
#: axial MR at a resolution the demo model was trained for.
DEMO_SPACING_MM = (5.0, 3.0, 3.0)


def write_demo_series(folder: Path, *, seed: int = 7) -> list[Path]:
    """Write a deterministic axial phantom MR series into ``folder``.

    Reuses the files when ``folder`` already holds the same series (same
    seed gives the same UIDs and pixels), so a second ``make run`` does not
    rewrite its input.
    """
    existing = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if existing:
        return existing
    rng = np.random.default_rng(seed)
    phantom = Phantom(seed, jitter=0.5)
    grid = make_grid("axial", DEMO_SPACING_MM)
    image, _ = phantom.sample(grid, modality="MR", rng=rng)
    return write_series(
        image, folder, modality="MR", series_description="segnode demo phantom T1",
        uid_seed=f"segnode-demo-{seed}",
    )


#: Dixon contrasts of the station phantom: description suffix and intensity map.
_DIXON = {"in": (1.0, 0.0), "opp": (0.85, 0.0), "W": (0.7, 0.0), "F": (0.4, 30.0)}


@dataclass(frozen=True)
class StationPhantom:
    """A whole-body phantom written as station series, with what it was made from."""

    phantom: Phantom
    study_uid: str
    #: Per station (in body order, head first): the series folder of each contrast.
    folders: tuple[dict[str, Path], ...]
    #: Per station: its grid and the intensity factor applied to it.
    grids: tuple[GridGeometry, ...]
    scales: tuple[float, ...]


def write_station_phantom(
    folder: Path, *, stations: int = 4, overlap_mm: float = 30.0, length_mm: float = 600.0,
    scales: tuple[float, ...] | None = None, dixon: bool = False, skip: tuple[int, ...] = (),
    spacing_mm: tuple[float, float, float] = (4.0, 3.0, 3.0), seed: int = 11,
) -> StationPhantom:
    """Write a whole-body MR phantom as ``stations`` overlapping axial station series.

    All stations share one study and frame of reference and the same smooth
    bias field (the phantom is sampled with one seed), each station scaled by
    its own factor (MR signal differs between stations). With ``dixon`` every
    station is written four times, Siemens style (``..._in``, ``_opp``,
    ``_W``, ``_F``). Stations in ``skip`` (0-based, head first) are left out.
    """
    phantom = Phantom(seed, jitter=0.5)
    scales = scales or tuple(1.0 + 0.25 * ((-1) ** n) * (n % 3) for n in range(stations))
    station_mm = (length_mm + (stations - 1) * overlap_mm) / stations
    top = length_mm / 2 - station_mm / 2
    study_uid = derived_uid("station-phantom-study", str(seed))
    frame_uid = derived_uid("station-phantom-for", str(seed))
    folders, grids = [], []
    for n in range(stations):
        grid = make_grid("axial", spacing_mm, fov_mm=(station_mm, 300.0, 400.0),
                         center_mm=(0.0, 0.0, top - n * (station_mm - overlap_mm)))
        grids.append(grid)
        if n in skip:
            folders.append({})
            continue
        image, _ = phantom.sample(grid, modality="MR", rng=np.random.default_rng(seed))
        written = {}
        for contrast, (factor, offset) in (_DIXON.items() if dixon else [("", (1.0, 0.0))]):
            name = f"station{n + 1}" + (f"_{contrast}" if contrast else "")
            array = (image.array * scales[n] * factor + offset).astype(np.float32)
            write_series(image.with_array(array), folder / name, modality="MR",
                         study_uid=study_uid, frame_of_reference_uid=frame_uid,
                         series_number=10 * (n + 1) + len(written),
                         series_description=f"t1_vibe_dixon_tra_{n + 1}"
                                            + (f"_{contrast}" if contrast else ""),
                         uid_seed=f"station-phantom-{seed}-{n}-{contrast}")
            written[contrast or "image"] = folder / name
        folders.append(written)
    return StationPhantom(phantom, study_uid, tuple(folders), tuple(grids), tuple(scales))
