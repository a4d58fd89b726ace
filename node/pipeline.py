"""One pipeline for every caller: series in, SEG + SR + label map + tables out.

``segnode segment`` and the node's worker both use :class:`Pipeline`: it
loads the model pack once and runs each volume through read → segment → QC →
volumetry → write. Nothing here decodes DICOM or runs torch itself; it joins
:mod:`dicom_io` and :mod:`model`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd

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
from node.outputs import SeriesOutputs
from node.progress import Progress
from node.settings import RunSettings

__all__ = ["Pipeline", "VolumeResult"]

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


class Pipeline:
    """Segments volumes with one model pack loaded once per process.

    Parameters
    ----------
    settings
        Validated run settings (model, device, SEG type, folds, tile step).
    """

    def __init__(self, settings: RunSettings) -> None:
        self.settings = settings
        store = ModelStore(settings.models_dir)
        self.pack: ModelPack = store.resolve(settings.model)
        self.engine = SegmentationEngine(
            self.pack,
            device=settings.device,
            folds=settings.folds,
            tile_step_size=settings.tile_step_size,
        )
        self.model_id = {
            "name": self.pack.name,
            "version": self.pack.version,
            "weights_sha256": self.pack.weights_sha256,
            "seg_type": settings.seg_type,
        }

    def run_series_volume(
        self, series: SeriesVolume, out_root: Path, progress: Progress
    ) -> VolumeResult:
        """Segment one DICOM volume and write its outputs under ``out_root/<key>``."""
        outputs = SeriesOutputs(out_root / series.key)
        if outputs.is_complete(self.model_id):
            return VolumeResult(series.key, "skipped", outputs.folder, "outputs complete")
        started = time.monotonic()
        labels, rows, flags = self._segment_and_measure(series.volume, series.modality, progress)
        progress.stage("write")
        outputs.folder.mkdir(parents=True, exist_ok=True)
        files = exports.write_dicom_outputs(
            series, labels, rows, pack=self.pack, outputs=outputs,
            seg_type=self.settings.seg_type,
        )
        write_label_nifti(labels, outputs.labels)
        outputs.write_tables(rows, self._table_extra(series.key, flags))
        outputs.write_manifest(self.model_id, [*files, outputs.labels, outputs.table_csv,
                                               outputs.table_json])
        return VolumeResult(series.key, "done", outputs.folder, seconds=time.monotonic() - started,
                            structures=rows)

    def run_nifti(self, path: Path, out_root: Path, progress: Progress) -> VolumeResult:
        """Segment a NIfTI image: label map and tables only (no DICOM to refer to)."""
        key = path.name.removesuffix(".gz").removesuffix(".nii")
        outputs = SeriesOutputs(out_root / key)
        if outputs.is_complete(self.model_id):
            return VolumeResult(key, "skipped", outputs.folder, "outputs complete")
        started = time.monotonic()
        image = read_nifti(path)
        labels, rows, flags = self._segment_and_measure(image, None, progress)
        progress.stage("write")
        outputs.folder.mkdir(parents=True, exist_ok=True)
        write_label_nifti(labels, outputs.labels)
        outputs.write_tables(rows, self._table_extra(key, flags))
        outputs.write_manifest(self.model_id, [outputs.labels, outputs.table_csv,
                                               outputs.table_json])
        return VolumeResult(key, "done", outputs.folder, seconds=time.monotonic() - started,
                            structures=rows)

    def run_station_set(self, stations: StationSet, out_root: Path,
                        progress: Progress) -> list[VolumeResult]:
        """Stitch, segment once and write one SEG per station series and one SR.

        With ``stations.segment_each_contrast`` every Dixon contrast is
        stitched and segmented on its own (``<key>.<contrast>`` folders);
        otherwise the preferred contrast is, and its labels are written for
        the series of every contrast.
        """
        options = self.settings.stations
        if options.segment_each_contrast and len(stations.contrasts) > 1:
            plans = [(f"{stations.key}.{c}", c, (c,)) for c in stations.contrasts]
        else:
            chosen = next(c for c in (*options.contrast_preference(), *stations.contrasts)
                          if c in stations.contrasts)
            others = tuple(c for c in stations.contrasts if c != chosen)
            plans = [(stations.key, chosen, (chosen, *others))]
        return [self._run_stations(stations, key, contrast, written, out_root, progress)
                for key, contrast, written in plans]

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
        labels, rows, flags = self._segment_and_measure(stitched.volume, modality, progress)
        progress.stage("write")
        outputs.folder.mkdir(parents=True, exist_ok=True)
        targets = [stations.contrasts[c][n] for c in written for n in stitched.order]
        station_labels = [labels_to_station(labels, v.volume) for v in targets]
        files = exports.write_station_outputs(
            targets, station_labels, rows, pack=self.pack, folder=outputs.folder,
            seg_type=self.settings.seg_type, gap=bool(stitched.gaps), uid_seed=key)
        write_label_nifti(labels, outputs.labels)
        extra_files = []
        if self.settings.stations.write_stitched:
            extra_files.append(write_image_nifti(stitched.volume, outputs.folder /
                                                 "stitched.nii.gz"))
        extra = self._table_extra(key, flags)
        extra["qc_flags"] += gap_flags
        extra["stations"] = [{"series": v.key, "contrast": c, "segmented": c == contrast}
                             for c in written for v in stations.contrasts[c]]
        extra["intensity_scales"] = {segmented[n].key: round(stitched.scales[n], 4)
                                     for n in range(len(segmented))}
        outputs.write_tables(rows, extra)
        outputs.write_manifest(self.model_id, [*files, *extra_files, outputs.labels,
                                               outputs.table_csv, outputs.table_json])
        return VolumeResult(key, "done", outputs.folder, seconds=time.monotonic() - started,
                            structures=rows)

    def _segment_and_measure(
        self, image: hd.Volume, modality: str | None, progress: Progress
    ) -> tuple[hd.Volume, list[dict], list]:
        progress.stage("segment")
        labels = self.engine.segment(image)
        progress.stage("measure")
        names = {s.index: s.name for s in self.pack.labels.structures}
        unit = "HU" if modality == "CT" else None
        measurements = measure(labels, image, names, intensity_unit=unit)
        flags = run_qc(labels, names)
        rows = [exports.table_row(m, unit) for m in measurements]
        return labels, rows, flags

    def _table_extra(self, key: str, flags: Sequence) -> dict:
        return {
            "key": key,
            "model": self.model_id,
            "qc_flags": [exports.flag_dict(flag) for flag in flags],
        }
