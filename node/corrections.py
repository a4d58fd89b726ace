"""Radiologists' corrections: a received DICOM-SEG recognised, linked to its job and scored.

Every SEG instance the node receives (C-STORE, or ``segnode corrections
import``) is examined once its series is complete, and gets one row in the
catalogue's ``corrections`` table with one of these states:

``not_correction``
    segnode's own output (its SOP Instance or Series UID is one a job wrote,
    or its Manufacturer is segnode); a SEG that references no series segnode
    processed and carries no mark of segnode; or a SEG on a processed series
    that is not a correction of it: none of its segments maps to a structure
    of the job's packs, or every segment is the AUTOMATIC result of another
    algorithm.
``quarantined``
    a correction that cannot be linked: it carries segnode's mark (a segment
    algorithm name of an installed pack) but references a series segnode
    never processed, or its frame of reference is not the source series'.
    A copy goes to the quarantine with the reason.
``correction``
    linked to the newest finished job of its source series (or to the job
    whose SEG it derives from) and scored per structure against that job's
    labels (:mod:`model.evaluation`), on the source series' grid. The
    corrected label map on the grid the model saw, and that image, are kept
    in ``storage.corrections_dir/job-<id>/<volume key>/<pack>/`` for
    training exports; a later correction of the same volume replaces them (of
    stitched stations: replaces the region of its station).
``failed``
    a correction whose scoring failed (the source series was purged, ...),
    with the reason.

A SEG is never processed as a new input (:mod:`node.rules` excludes SEG).
Segments map to the pack's labels by codes and laterality
(:func:`dicom_io.seg_reading.match_segments`); unmapped ones are kept in the
row with the reason.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_io._equipment import MANUFACTURER
from dicom_io.nifti import read_nifti, write_image_nifti, write_label_nifti
from dicom_io.seg_reading import (
    SEGMENTATION_SOP_CLASSES,
    SegmentCoding,
    SegmentMatch,
    match_segments,
    read_seg,
    seg_labels_on,
    seg_references,
    segment_codings,
)
from dicom_io.stitch import labels_to_station
from model.evaluation import StructureScore, score
from model.packs import ModelPack
from model.store import ModelStore
from node.catalogue import Catalogue
from node.config import NodeConfig
from node.exports import segment_infos
from node.model_input import rebuild_model_input
from node.spool import Quarantine
from segnode_errors import InputRejected, SegnodeError

__all__ = ["CorrectionIntake", "Examined"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Examined:
    """The outcome of examining one SEG: its catalogue row id, state and reason."""

    correction_id: int
    state: str
    reason: str
    job_id: int | None = None
    scores: list[StructureScore] = field(default_factory=list)


@dataclass(frozen=True)
class _OwnSeg:
    """One SEG a job wrote: the pack, the source series and where its labels are."""

    path: Path
    sop_instance_uid: str
    pack: str
    source_series_uid: str
    frame_of_reference_uid: str


def _own_segs(job: dict[str, Any]) -> list[_OwnSeg]:
    """The SEGs among a job's outputs, read from their headers.

    Raises
    ------
    InputRejected
        If the job wrote SEGs and every one of them is gone.
    """
    result = json.loads(job["result"]) if isinstance(job["result"], str) and job["result"] \
        else (job["result"] or {})
    found = []
    segs = [Path(name) for name in result.get("outputs", []) if Path(name).name.startswith("seg")]
    if segs and not any(path.is_file() for path in segs):
        raise InputRejected(f"the outputs of job {job['id']} are gone (retention purged them)")
    for path in segs:
        if not path.is_file():
            continue
        header = pydicom.dcmread(path, stop_before_pixels=True)
        if str(header.get("SOPClassUID", "")) not in SEGMENTATION_SOP_CLASSES:
            continue
        algorithms = {str(s.get("SegmentAlgorithmName", "")) for s in header.SegmentSequence}
        for series in header.get("ReferencedSeriesSequence", []):
            found.append(_OwnSeg(path, str(header.SOPInstanceUID), sorted(algorithms)[0],
                                 str(series.SeriesInstanceUID),
                                 str(header.get("FrameOfReferenceUID", ""))))
    return found


def _labels_file(folder: Path, pack: str) -> Path:
    for name in (f"labels-{pack}.nii.gz", "labels.nii.gz"):
        if (folder / name).is_file():
            return folder / name
    raise InputRejected(f"the label map of pack {pack} is gone from {folder} (retention?)")


@dataclass
class CorrectionIntake:
    """Examines received SEGs; :meth:`run_once` is the node's ``corrections`` loop."""

    config: NodeConfig
    catalogue: Catalogue
    quarantine: Quarantine
    _packs: dict[str, ModelPack] = field(default_factory=dict, init=False, repr=False)

    def run_once(self) -> bool:
        """Examine the SEGs of complete series not examined yet; True if there were any."""
        rows = self.catalogue.unexamined_segs(SEGMENTATION_SOP_CLASSES)
        for row in rows:
            self.examine(row)
        return bool(rows)

    def recover(self) -> None:
        """At start: examine again what a crash interrupted (rows left ``examining``)."""
        dropped = self.catalogue.forget_unfinished_corrections()
        if dropped:
            logger.warning("%d SEG examination(s) were interrupted and run again", dropped)

    def examine(self, instance: dict[str, Any]) -> Examined | None:
        """Classify, link and score one catalogued SEG instance (a row of ``instances``).

        None when another examiner (the node's loop, an import) has it already.
        """
        base = {"sop_instance_uid": instance["sop_instance_uid"],
                "series_uid": instance["series_uid"], "study_uid": instance["study_uid"],
                "path": str(instance["path"]), "received_at": instance["received_at"]}
        correction_id = self.catalogue.claim_correction(base)
        if correction_id is None:
            return None
        base["id"] = correction_id
        try:
            dataset = read_seg(Path(instance["path"]), name=f"SEG {base['sop_instance_uid']}")
            return self._examine(dataset, base, instance.get("calling_ae", ""))
        except Exception as exc:  # noqa: BLE001 - a peer's SEG: whatever breaks is its reason
            reason = str(exc) if isinstance(exc, SegnodeError) else f"{type(exc).__name__}: {exc}"
            return self._record(base, "failed", reason[:500])

    def _examine(self, ds: Dataset, base: dict[str, Any], calling_ae: str) -> Examined:
        if self.catalogue.is_output(base["sop_instance_uid"], base["series_uid"]) or \
                str(ds.get("Manufacturer", "")).strip() == MANUFACTURER:
            return self._record(base, "not_correction", "segnode's own output")
        codings = segment_codings(ds)
        references = seg_references(ds)
        job = self.catalogue.job_of_outputs(list(references.instance_uids),
                                            list(references.series_uids))
        series_uids = list(references.series_uids) + self.catalogue.series_of_instances(
            list(references.instance_uids))
        if job is None:
            job = self.catalogue.done_job_of_series(series_uids)
        if job is None:
            return self._unlinked(ds, base, codings, series_uids, calling_ae)
        # The job's SEG of a series the correction references, or the SEG it derives from.
        own = [seg for seg in _own_segs(job) if seg.source_series_uid in series_uids
               or seg.sop_instance_uid in references.instance_uids]
        if not own:
            return self._record(base, "not_correction",
                                f"job {job['id']} wrote no SEG of the series it references",
                                job_id=job["id"])
        if references.frame_of_reference_uid and references.frame_of_reference_uid != \
                own[0].frame_of_reference_uid:
            return self._quarantined(
                base, f"correction of job {job['id']}: frame of reference "
                      f"{references.frame_of_reference_uid} is not the source series' "
                      f"{own[0].frame_of_reference_uid}", calling_ae, job_id=job["id"])
        best_seg, best_pack, match = max(
            ((seg, self._pack(seg.pack), _match(codings, self._pack(seg.pack))) for seg in own),
            key=lambda item: len(item[2].labels))
        row = {**base, "job_id": job["id"], "model": best_pack.name,
               "source_series_uid": best_seg.source_series_uid,
               "modality": str(ds.get("Modality", "SEG")), "segments": len(codings),
               "unmapped": [{"segment": c.describe(), "reason": why}
                            for c, why in match.unmapped]}
        if not match.labels:
            return self._record(row, "not_correction",
                                f"none of its {len(codings)} segments is a structure of "
                                f"pack {best_pack.name}")
        ours = {seg.pack for seg in own}
        if all(c.algorithm_type == "AUTOMATIC" and c.algorithm_name not in ours
               for c in codings):
            names = ", ".join(sorted({c.algorithm_name for c in codings}))
            return self._record(row, "not_correction",
                                f"the automatic output of another algorithm ({names})")
        try:
            scores, labels_path = self._score(ds, job, best_seg, best_pack, row)
        except SegnodeError as exc:
            return self._record(row, "failed", f"correction of job {job['id']} not scored: {exc}")
        row["labels_path"] = str(labels_path)
        row["corrected_structures"] = sum(1 for s in scores if s.dice < 1.0)
        metrics = [_metric_row(best_pack.name, s) for s in scores]
        reason = (f"correction of job {job['id']} ({best_pack.name}): "
                  f"{row['corrected_structures']} of {len(scores)} structures changed")
        if match.unmapped:
            reason += f"; {len(match.unmapped)} segment(s) map to no label"
        return self._record(row, "correction", reason, metrics=metrics, scores=scores)

    def _unlinked(self, ds: Dataset, base: dict[str, Any], codings: list[SegmentCoding],
                  series_uids: list[str], calling_ae: str) -> Examined:
        names = {c.algorithm_name for c in codings} & self._pack_names()
        referenced = ", ".join(series_uids) or "no series"
        if names:
            return self._quarantined(
                base, f"a correction of {', '.join(sorted(names))} output for {referenced}, "
                      "which segnode has not processed", calling_ae)
        return self._record(base, "not_correction",
                            f"references {referenced}, which segnode has not processed")

    def _score(self, ds: Dataset, job: dict[str, Any], own: _OwnSeg, pack: ModelPack,
               row: dict[str, Any]) -> tuple[list[StructureScore], Path]:
        """Score against the job's labels on the source series' grid; keep the training pair."""
        predicted = read_nifti(_labels_file(own.path.parent, pack.name), dtype=np.uint16)
        series_uids = json.loads(job["series_uids"] or "[]") or [job["series_uid"]]
        model_input = rebuild_model_input(self.catalogue, series_uids, own.path.parent.name,
                                          self.config.stations, predicted)
        source = model_input.sources[own.source_series_uid].volume
        infos = segment_infos(pack.labels)
        name = f"SEG {row['sop_instance_uid']}"
        if source.spatial_shape == predicted.spatial_shape and np.allclose(
                source.affine, predicted.affine, atol=1e-3):
            corrected, _ = seg_labels_on(ds, predicted, infos, name=name)
            scores = score(predicted, corrected, pack.labels)
            on_model_grid = corrected
        else:  # one station of stitched stations: score on its own grid
            station_predicted = labels_to_station(predicted, source)
            corrected, _ = seg_labels_on(ds, source, infos, name=name)
            scores = score(station_predicted, corrected, pack.labels)
            earlier = self._case_folder(job["id"], own.path.parent.name, pack.name)
            on_model_grid = _merge_station(earlier / "labels.nii.gz", predicted, source,
                                           corrected)
        row["modality"] = model_input.modality
        folder = self._case_folder(job["id"], own.path.parent.name, pack.name)
        folder.mkdir(parents=True, exist_ok=True)
        write_image_nifti(model_input.image, folder / "image.nii.gz")
        labels_path = write_label_nifti(on_model_grid, folder / "labels.nii.gz")
        return scores, labels_path

    def _case_folder(self, job_id: int, key: str, pack: str) -> Path:
        """Where the training pair of one output volume of a job lives (newest correction)."""
        return Path(self.config.storage.corrections_dir) / f"job-{job_id}" / key / pack

    def _pack(self, name: str) -> ModelPack:
        if name not in self._packs:
            store = ModelStore(self.config.storage.models_dir)
            self._packs[name] = store.resolve(name)
        return self._packs[name]

    def _pack_names(self) -> set[str]:
        return {pack.name for pack in ModelStore(self.config.storage.models_dir).list()}

    def _quarantined(self, base: dict[str, Any], reason: str, calling_ae: str,
                     job_id: int | None = None) -> Examined:
        data = Path(base["path"]).read_bytes()
        path = self.quarantine.put(data, reason)
        self.catalogue.add_quarantine(path, reason, calling_ae)
        return self._record({**base, "job_id": job_id}, "quarantined", reason)

    def _record(self, row: dict[str, Any], state: str, reason: str, *,
                metrics: list[dict[str, Any]] | None = None,
                scores: list[StructureScore] | None = None, job_id: int | None = None) -> Examined:
        values = {key: value for key, value in row.items()
                  if key not in ("id", "sop_instance_uid", "series_uid", "study_uid", "path",
                                 "received_at")}
        values.update(state=state, reason=reason)
        if job_id is not None:
            values["job_id"] = job_id
        self.catalogue.finish_correction(row["id"], values, metrics or [])
        log = logger.info if state in ("correction", "not_correction") else logger.warning
        log("SEG %s (correction %d): %s: %s", row["sop_instance_uid"], row["id"], state, reason)
        return Examined(row["id"], state, reason, values.get("job_id"), scores or [])


def _merge_station(earlier: Path, predicted: hd.Volume, station: hd.Volume,
                   corrected: hd.Volume) -> hd.Volume:
    """The stitched label map with one station's region corrected.

    Starts from the label map an earlier correction of another station left
    (``earlier``), else from the model's.
    """
    base = read_nifti(earlier, dtype=np.uint16) if earlier.is_file() else predicted
    ones = station.with_array(np.ones(station.spatial_shape, dtype=np.uint8))
    footprint = labels_to_station(ones, predicted).array > 0
    placed = labels_to_station(corrected, predicted)
    merged = np.where(footprint, placed.array, base.array).astype(np.uint16)
    return predicted.with_array(merged)


def _match(codings: list[SegmentCoding], pack: ModelPack) -> SegmentMatch:
    return match_segments(codings, segment_infos(pack.labels))


def _metric_row(model: str, s: StructureScore) -> dict[str, Any]:
    return {"model": model, "structure": s.name, "label": s.label, "dice": s.dice,
            "hd95_mm": s.hd95_mm, "volume_ml": s.volume_ml,
            "corrected_volume_ml": s.reference_volume_ml, "connected": s.connected,
            "corrected_connected": s.reference_connected}

