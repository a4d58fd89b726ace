"""One pipeline for every caller: series in, SEG(s) + SR + label map(s) + tables out.

``segnode segment`` and the node's worker both use :class:`Pipeline`: it
loads the model packs once and runs each volume through read → segment → QC →
volumetry → write, for every pack. Nothing here decodes DICOM or runs torch itself; it joins
:mod:`dicom_io` and :mod:`model`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset

from dicom_io.nifti import read_nifti, write_image_nifti, write_label_nifti
from dicom_io.stations import StationSet
from dicom_io.stitch import labels_to_station, stitch
from dicom_io.volume import SeriesVolume
from model.engine import SegmentationEngine
from model.packs import ModelPack
from model.qc import check as run_qc
from model.store import ModelStore
from model.volumetry import measure
from node import exports
from node.outputs import OutputNames, SeriesOutputs
from node.progress import Progress
from node.settings import RunSettings
from segnode_errors import InputRejected

__all__ = ["PackRun", "Pipeline", "VolumeResult", "sum_timings"]

logger = logging.getLogger(__name__)


@dataclass
class VolumeResult:
    """What happened to one volume: ``status`` is done, skipped or failed."""

    key: str
    status: str
    folder: Path | None = None
    reason: str = ""
    seconds: float = 0.0
    structures: list[dict] = field(default_factory=list)
    #: Seconds per stage (read, stitch, segment and its parts, measure, write).
    timings: dict[str, float] = field(default_factory=dict)


def sum_timings(results: Sequence[VolumeResult]) -> dict[str, float]:
    """Seconds per stage summed over volumes (a job's, for its summary and the metrics)."""
    total: dict[str, float] = {}
    for result in results:
        for stage, seconds in result.timings.items():
            total[stage] = round(total.get(stage, 0.0) + seconds, 3)
    return total


@dataclass
class PackRun:
    """One pack's labels of a volume, the table rows measured on them and its QC flags."""

    pack: ModelPack
    labels: hd.Volume
    rows: list[dict]
    flags: list[dict]


class Pipeline:
    """Segments volumes with one or more model packs, each loaded once per process.

    With several packs every volume is segmented by each: one SEG per pack
    (``seg-<pack>.dcm``, ``labels-<pack>.nii.gz``), one SR and one table for
    all. A pack that names its modalities is skipped for other modalities.

    Parameters
    ----------
    settings
        Validated run settings (models, device, SEG type, folds, tile step).
    """

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        store = ModelStore(settings.models_dir)
        self.packs: list[ModelPack] = [store.resolve(name) for name in settings.models or (None,)]
        self.engines = [
            SegmentationEngine(pack, device=settings.device, folds=settings.folds,
                               tile_step_size=settings.tile_step_size,
                               precision=settings.precision, compile_network=settings.compile,
                               num_threads=settings.threads)
            for pack in self.packs
        ]
        self.model_id = {
            "packs": [{"name": p.name, "version": p.version, "weights_sha256": p.weights_sha256}
                      for p in self.packs],
            "seg_type": settings.seg_type,
        }

    @property
    def device(self) -> str:
        """Where the networks run (``cpu``, ``cuda:0``)."""
        return str(self.engines[0].device)

    def describe(self) -> list[dict]:
        """What each engine runs and how, for run reports."""
        return [engine.describe() for engine in self.engines]

    def _names(self) -> OutputNames:
        return OutputNames(per_pack=len(self.packs) > 1)

    def run_series_volume(
        self, series: SeriesVolume, out_root: Path, progress: Progress
    ) -> VolumeResult:
        """Segment one DICOM volume and write its outputs under ``out_root/<key>``."""
        outputs = SeriesOutputs(out_root / series.key)
        if outputs.is_complete(self.model_id):
            return VolumeResult(series.key, "skipped", outputs.folder, "outputs complete")
        started = time.monotonic()
        runs, skipped = self._segment_and_measure(series.volume, series.modality, progress)
        progress.stage("write")
        outputs.folder.mkdir(parents=True, exist_ok=True)
        names = self._names()
        files = exports.write_dicom_outputs(series, runs, folder=outputs.folder, names=names,
                                            seg_type=self.settings.seg_type)
        files += self._write_labels(runs, outputs.folder, names)
        files += self._write_previews_and_reports(series.volume, series.source, runs,
                                                  outputs.folder, names)
        rows = [row for run in runs for row in run.rows]
        outputs.write_tables(rows, self._table_extra(series.key, runs, skipped))
        outputs.write_manifest(self.model_id, [*files, outputs.table_csv, outputs.table_json])
        return VolumeResult(series.key, "done", outputs.folder, seconds=time.monotonic() - started,
                            structures=rows, timings=progress.timings())

    def run_nifti(self, path: Path, out_root: Path, progress: Progress) -> VolumeResult:
        """Segment a NIfTI image: label maps and tables only (no DICOM to refer to)."""
        key = path.name.removesuffix(".gz").removesuffix(".nii")
        outputs = SeriesOutputs(out_root / key)
        if outputs.is_complete(self.model_id):
            return VolumeResult(key, "skipped", outputs.folder, "outputs complete")
        started = time.monotonic()
        image = read_nifti(path)
        runs, skipped = self._segment_and_measure(image, None, progress)
        progress.stage("write")
        outputs.folder.mkdir(parents=True, exist_ok=True)
        files = self._write_labels(runs, outputs.folder, self._names())
        rows = [row for run in runs for row in run.rows]
        outputs.write_tables(rows, self._table_extra(key, runs, skipped))
        outputs.write_manifest(self.model_id, [*files, outputs.table_csv, outputs.table_json])
        return VolumeResult(key, "done", outputs.folder, seconds=time.monotonic() - started,
                            structures=rows, timings=progress.timings())

    def run_station_set(self, stations: StationSet, out_root: Path,
                        progress: Progress) -> list[VolumeResult]:
        """Stitch, segment once and write one SEG per station series (and pack) and one SR.

        What is stitched and written follows :meth:`StationSettings.plans`.
        """
        return [self._run_stations(stations, key, contrast, written, out_root, progress)
                for key, contrast, written in self.settings.stations.plans(stations)]

    def _run_stations(self, stations: StationSet, key: str, contrast: str,
                      written: tuple[str, ...], out_root: Path,
                      progress: Progress) -> VolumeResult:
        outputs = SeriesOutputs(out_root / key)
        if outputs.is_complete(self.model_id):
            return VolumeResult(key, "skipped", outputs.folder, "outputs complete")
        started = time.monotonic()
        segmented = stations.contrasts[contrast]
        modality = segmented[0].modality
        progress.stage("stitch")
        stitched = stitch([v.volume for v in segmented], match_intensities=modality != "CT")
        gap_flags = [exports.gap_flag(gap, segmented[stitched.order[gap.after]].key,
                                      segmented[stitched.order[gap.after + 1]].key)
                     for gap in stitched.gaps]
        for flag in gap_flags:
            logger.warning("stations %s: %s", key, flag["message"])
        runs, skipped = self._segment_and_measure(stitched.volume, modality, progress)
        progress.stage("write")
        outputs.folder.mkdir(parents=True, exist_ok=True)
        targets = [stations.contrasts[c][n] for c in written for n in stitched.order]
        names = self._names()
        files = exports.write_station_outputs(
            targets, [(run, [labels_to_station(run.labels, v.volume) for v in targets])
                      for run in runs],
            folder=outputs.folder, names=names, seg_type=self.settings.seg_type,
            gap=bool(stitched.gaps), uid_seed=key)
        files += self._write_labels(runs, outputs.folder, names)
        files += self._write_previews_and_reports(
            stitched.volume, [s for v in targets for s in v.source], runs, outputs.folder, names,
            uid_seed=key)
        if self.settings.stations.write_stitched:
            files.append(write_image_nifti(stitched.volume, outputs.folder / "stitched.nii.gz"))
        extra = self._table_extra(key, runs, skipped)
        extra["qc_flags"] += gap_flags
        extra["stations"] = [{"series": v.key, "contrast": c, "segmented": c == contrast}
                             for c in written for v in stations.contrasts[c]]
        extra["intensity_scales"] = {segmented[n].key: round(stitched.scales[n], 4)
                                     for n in range(len(segmented))}
        rows = [row for run in runs for row in run.rows]
        outputs.write_tables(rows, extra)
        outputs.write_manifest(self.model_id, [*files, outputs.table_csv, outputs.table_json])
        return VolumeResult(key, "done", outputs.folder, seconds=time.monotonic() - started,
                            structures=rows, timings=progress.timings())

    def _segment_and_measure(
        self, image: hd.Volume, modality: str | None, progress: Progress
    ) -> tuple[list[PackRun], list[dict]]:
        """Run every pack meant for ``modality``; the runs and the packs skipped, with why."""
        runs, skipped = [], []
        unit = "HU" if modality == "CT" else None
        for pack, engine in zip(self.packs, self.engines, strict=True):
            if modality and pack.modalities and modality not in pack.modalities:
                reason = f"meant for {', '.join(pack.modalities)}, not {modality}"
                logger.info("model %s skipped: %s", pack.name, reason)
                skipped.append({"model": pack.name, "reason": reason})
                continue
            progress.stage("segment" if len(self.packs) == 1 else f"segment {pack.name}")
            labels = engine.segment(image)
            prefix = "segment." if len(self.packs) == 1 else f"segment {pack.name}."
            for part, seconds in engine.stage_timings().items():
                progress.detail(prefix + part, seconds)
            progress.stage("measure")
            names = {s.index: s.name for s in pack.labels.structures}
            measurements = measure(labels, image, names, intensity_unit=unit)
            flags = [{**exports.flag_dict(flag), "model": pack.name}
                     for flag in run_qc(labels, names)]
            rows = [exports.table_row(m, unit, pack.name) for m in measurements]
            runs.append(PackRun(pack, labels, rows, flags))
        if not runs:
            raise InputRejected(f"No model of this run is meant for {modality} images: "
                                + "; ".join(f"{s['model']} is {s['reason']}" for s in skipped))
        return runs, skipped

    @staticmethod
    def _write_labels(runs: Sequence[PackRun], folder: Path, names: OutputNames) -> list[Path]:
        files = []
        for run in runs:
            path = folder / names.labels(run.pack.name)
            write_label_nifti(run.labels, path)
            files.append(path)
        return files

    def _write_previews_and_reports(self, image: hd.Volume, sources: Sequence[Dataset],
                                    runs: Sequence[PackRun], folder: Path, names: OutputNames,
                                    *, uid_seed: str | None = None) -> list[Path]:
        previews = exports.write_previews(image, runs, folder=folder, names=names)
        reports = exports.write_reports(
            sources, runs, previews, folder=folder, names=names, reports=self.settings.reports,
            disclaimer=self.settings.disclaimer, uid_seed=uid_seed)
        return [*previews.values(), *reports]

    def _table_extra(self, key: str, runs: Sequence[PackRun], skipped: Sequence[dict]) -> dict:
        return {
            "key": key,
            "model": self.model_id,
            "qc_flags": [flag for run in runs for flag in run.flags],
            "skipped_models": list(skipped),
        }
