"""Run the pipeline over an input (a DICOM folder or a NIfTI file) and summarise.

This is the API behind ``segnode segment``: it takes a :class:`RunSettings`,
never loose keyword arguments, and returns a :class:`RunSummary` that the CLI
prints and writes as the ``--report`` manifest.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from dicom_io.scan import SeriesFiles, find_series
from dicom_io.series import read_series
from dicom_io.stations import group_stations
from dicom_io.volume import Rejection
from node.pipeline import Pipeline, VolumeResult
from node.progress import Progress
from node.settings import RunSettings
from segnode_errors import InputRejected, SegnodeError

__all__ = ["RunSummary", "run_segment", "run_series_set", "is_nifti", "versions"]

logger = logging.getLogger(__name__)

_VERSIONED = ("segnode", "torch", "nnunetv2", "highdicom", "pydicom", "SimpleITK", "numpy")


def is_nifti(path: Path) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file."""
    return path.is_file() and (path.name.endswith(".nii") or path.name.endswith(".nii.gz"))


@dataclass
class RunSummary:
    """Outcome of one run: per-volume results plus what produced them."""

    input: str
    output: str
    results: list[VolumeResult] = field(default_factory=list)
    engines: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> list[VolumeResult]:
        """Volumes or series that could not be processed."""
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (paths as strings)."""
        document = asdict(self)
        for result in document["results"]:
            result["folder"] = str(result["folder"]) if result["folder"] else None
        return document


def versions() -> dict[str, str]:
    """Versions of Python and of the packages that produce segnode's results."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_segment(input_path: Path, out_root: Path, settings: RunSettings) -> RunSummary:
    """Segment every volume in ``input_path`` and write outputs under ``out_root``.

    A series that cannot be read is recorded as failed with its reason; the
    others still run. Outputs already complete for the same model version are
    skipped.

    Raises
    ------
    InputRejected
        If ``input_path`` is neither a folder nor a NIfTI file.
    """
    if not input_path.exists():
        raise InputRejected(f"Input '{input_path}' does not exist.")
    if not (input_path.is_dir() or is_nifti(input_path)):
        raise InputRejected(
            f"Input '{input_path}' must be a folder of DICOM files or a .nii/.nii.gz file."
        )
    started = time.monotonic()
    pipeline = Pipeline(settings)
    summary = RunSummary(str(input_path), str(out_root), engines=pipeline.describe(),
                         versions=versions())
    if input_path.is_dir():
        summary.results = _run_folder(pipeline, input_path, out_root)
    else:
        progress = Progress(1)
        progress.start(input_path.name)
        summary.results = [_guarded(input_path.name, progress,
                                    lambda: pipeline.run_nifti(input_path, out_root, progress))]
        progress.close()
    summary.seconds = round(time.monotonic() - started, 2)
    return summary


def _run_folder(pipeline: Pipeline, folder: Path, out_root: Path) -> list[VolumeResult]:
    series_list = find_series(folder)
    if not series_list:
        raise InputRejected(f"Input folder '{folder}' holds no DICOM image series.")
    logger.info("found %d series in %s", len(series_list), folder)
    return run_series_set(pipeline, series_list, out_root)


def run_series_set(pipeline: Pipeline, series_list: list[SeriesFiles], out_root: Path, *,
                   live: bool = True) -> list[VolumeResult]:
    """Read series, group the stations of multi-station acquisitions, segment everything.

    The one path from series files to outputs, shared by ``segnode segment``
    and the node's worker. Stations of one acquisition (see
    :mod:`dicom_io.stations`) are stitched and segmented once; every other
    volume on its own into ``out_root/<key>``. A refused series or volume is
    a ``failed`` result with its reason, never an exception.
    """
    results: list[VolumeResult] = []
    volumes = []
    read_s: dict[int, float] = {}  # id(volume) -> its share of its series' reading time
    limit = pipeline.settings.max_volume_megavoxels
    max_voxels = None if limit is None else int(limit * 1e6)
    for files in series_list:
        started = time.perf_counter()
        try:
            read = read_series(files, max_voxels=max_voxels)
        except SegnodeError as exc:
            logger.error("series %s refused: %s", files.series_uid, exc)
            results.append(VolumeResult(files.series_uid, "failed", reason=str(exc)))
            continue
        results.extend(_rejection_result(rejection) for rejection in read.rejected)
        volumes.extend(read.volumes)
        share = (time.perf_counter() - started) / max(len(read.volumes), 1)
        read_s.update({id(volume): share for volume in read.volumes})
    options = pipeline.settings.stations
    station_sets, singles = (group_stations(volumes, options.grouping) if options.enabled
                             else ([], volumes))
    progress = Progress(len(station_sets) + len(singles), live=live)
    for stations in station_sets:
        logger.info("stations %s: %d stations x %s", stations.key, stations.station_count,
                    ", ".join(stations.contrasts))
        progress.start(stations.key, read_s=sum(
            read_s.get(id(v), 0.0) for station in stations.contrasts.values() for v in station))
        results.extend(_guarded_many(stations.key, progress, lambda s=stations:
                                     pipeline.run_station_set(s, out_root, progress)))
    for volume in singles:
        progress.start(volume.key, read_s=read_s.get(id(volume), 0.0))
        results.append(_guarded(volume.key, progress,
                                lambda v=volume: pipeline.run_series_volume(v, out_root,
                                                                            progress)))
    progress.close()
    return results


def _rejection_result(rejection: Rejection) -> VolumeResult:
    status = "ignored" if rejection.ignored else "failed"
    log = logger.info if status == "ignored" else logger.error
    log("series %s %s: %s", rejection.key, status, rejection.reason)
    return VolumeResult(rejection.key, status, reason=rejection.reason)


def _guarded_many(key: str, progress: Progress, work: Any) -> list[VolumeResult]:
    """Run ``work`` (several results); a SegnodeError fails this group only."""
    try:
        results = work()
    except SegnodeError as exc:
        logger.error("stations %s failed: %s", key, exc)
        results = [VolumeResult(key, "failed", reason=str(exc))]
    progress.finish(", ".join(sorted({r.status for r in results})))
    return results


def _guarded(key: str, progress: Progress, work: Any) -> VolumeResult:
    """Run ``work``; a SegnodeError fails this volume only, with its reason."""
    try:
        result = work()
    except SegnodeError as exc:
        logger.error("volume %s failed: %s", key, exc)
        result = VolumeResult(key, "failed", reason=str(exc))
    progress.finish(result.status)
    return result
