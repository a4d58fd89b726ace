"""The image a job's model saw, rebuilt from the spool: one series, or stitched stations.

The same steps as the worker (:func:`node.runner.run_series_set`): read every
series of the job, group stations as ``stations`` says, stitch the contrast
that was segmented. The result must lie on the grid of the job's label map;
anything else is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np

from dicom_io.scan import SeriesFiles
from dicom_io.series import read_series
from dicom_io.stations import group_stations
from dicom_io.stitch import stitch
from dicom_io.volume import SeriesVolume
from node.catalogue import Catalogue
from node.settings import StationSettings
from segnode_errors import InputRejected

__all__ = ["ModelInput", "rebuild_model_input"]


@dataclass(frozen=True)
class ModelInput:
    """The image of one output folder and the source volumes it was made of."""

    image: hd.Volume
    modality: str
    #: Source volumes by SeriesInstanceUID (the stations of a stitched image).
    sources: dict[str, SeriesVolume]


def _read(catalogue: Catalogue, series_uids: Sequence[str]) -> list[SeriesVolume]:
    volumes: list[SeriesVolume] = []
    for uid in series_uids:
        paths = catalogue.series_paths(uid)
        if not paths or not all(path.is_file() for path in paths):
            raise InputRejected(f"series {uid} is no longer in the spool (retention purged it)")
        volumes.extend(read_series(SeriesFiles(uid, tuple(paths))).volumes)
    return volumes


def rebuild_model_input(catalogue: Catalogue, series_uids: Sequence[str], key: str,
                        stations: StationSettings, grid: hd.Volume) -> ModelInput:
    """The image of output folder ``key`` of a job over ``series_uids``, on ``grid``.

    Raises
    ------
    InputRejected
        If a series is gone from the spool, no volume or station set has that
        key, or the rebuilt image is not on ``grid`` (the job's label map).
    """
    volumes = _read(catalogue, series_uids)
    found: ModelInput | None = None
    for volume in volumes:
        if volume.key == key:
            found = ModelInput(volume.volume, volume.modality, {volume.series_uid: volume})
    if found is None and stations.enabled:
        sets, _ = group_stations(volumes, stations.grouping)
        for station_set in sets:
            for folder, contrast, _written in stations.plans(station_set):
                if folder != key:
                    continue
                segmented = station_set.contrasts[contrast]
                stitched = stitch([v.volume for v in segmented],
                                  match_intensities=segmented[0].modality != "CT")
                everything = [v for c in station_set.contrasts.values() for v in c]
                found = ModelInput(stitched.volume, segmented[0].modality,
                                   {v.series_uid: v for v in everything})
    if found is None:
        raise InputRejected(f"no volume or station set {key} can be rebuilt from series "
                            + ", ".join(series_uids))
    if found.image.spatial_shape != grid.spatial_shape or not np.allclose(
            found.image.affine, grid.affine, atol=1e-3):
        raise InputRejected(f"the image rebuilt for {key} is not on the grid of its label map "
                            f"({found.image.spatial_shape} vs {grid.spatial_shape})")
    return found
