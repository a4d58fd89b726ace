"""TID 1500 volumetry report (Comprehensive 3D SR) referencing segnode SEGs.

One volumetric measurement group (TID 1411) per structure measured:

- tracking identifier: the SEG segment's TrackingUID (shared, deterministic)
  and the structure's human tracking id;
- ``Referenced Segment``: the SEG SOP instance + segment number, with the
  source series;
- finding type, category and finding site (with laterality SCT 7771000 /
  24028007 / 51440002) from the structure's codes; the finding site is the
  structure's anatomic region where it has one (a fat depot), else its type;
- ``Volume`` (SCT 118565006) in ``cm3``, method DCM 126030 "Sum of segmented
  voxel volumes";
- CT only: ``Attenuation Coefficient`` (DCM 112031) in UCUM ``[hnsf'U]`` with
  derivation ``Mean`` (SCT 373098007), as dcmqi encodes mean HU;
- a structure that touches the edge of the field of view gets the
  qualitative evaluation ``Quality Finding`` (DCM 111052) =
  ``Anatomy coverage incomplete`` (DCM 130576): its volume may be too small.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io import _equipment
from dicom_io.content import AlgorithmInfo, CodeTuple, SegmentInfo, VolumeMeasurement
from dicom_io.seg import segment_tracking_uid
from dicom_io.uids import derived_uid
from segnode_errors import ExportError

__all__ = [
    "ReportPart",
    "INCOMPLETE_EVALUATION_NAME",
    "INCOMPLETE_EVALUATION_VALUE",
    "MEAN_HU_NAME",
    "STATION_GAP",
    "build_volumetry_sr",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

INCOMPLETE_EVALUATION_NAME = hd.sr.CodedConcept("111052", "DCM", "Quality Finding")
INCOMPLETE_EVALUATION_VALUE = hd.sr.CodedConcept("130576", "DCM", "Anatomy coverage incomplete")
MEAN_HU_NAME = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
#: "Quality Finding" value for stitched stations that leave a gap. No standard
#: code exists; a private coding scheme (``99`` prefix, PS3.16 8.2) carries it.
STATION_GAP: CodeTuple = ("STATIONGAP", "99SEGNODE", "Gap between stations")
_SUM_OF_VOXEL_VOLUMES = hd.sr.CodedConcept("126030", "DCM", "Sum of segmented voxel volumes")
_LATERALITY = {
    "left": hd.sr.CodedConcept("7771000", "SCT", "Left"),
    "right": hd.sr.CodedConcept("24028007", "SCT", "Right"),
    "bilateral": hd.sr.CodedConcept("51440002", "SCT", "Bilateral"),
}
_PROCEDURES = {
    "CT": hd.sr.CodedConcept("77477000", "SCT", "Computed tomography"),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
}


@dataclass(frozen=True)
class ReportPart:
    """What one model contributes to the report: its SEG(s), structures and measurements.

    Parameters
    ----------
    segs : sequence of pydicom.Dataset
        The SEG(s) written by :func:`dicom_io.seg.build_seg` with ``algorithm``
        (one per station series for stitched stations).
    segments : sequence of SegmentInfo
        Structure descriptions keyed by label value.
    measurements : sequence of VolumeMeasurement
        One per structure to report (``segment_number`` = label value).
    algorithm : AlgorithmInfo
        The model, as given to ``build_seg``.
    """

    segs: Sequence[Dataset]
    segments: Sequence[SegmentInfo]
    measurements: Sequence[VolumeMeasurement]
    algorithm: AlgorithmInfo


def _code(code: tuple[str, str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=code[0], scheme_designator=code[1], meaning=code[2])


def _segment_numbers_by_tracking_uid(seg: Dataset) -> dict[str, int]:
    return {
        str(item.TrackingUID): int(item.SegmentNumber)
        for item in seg.SegmentSequence
        if "TrackingUID" in item
    }


def _measurements(m: VolumeMeasurement, modality: str) -> list[hd.sr.Measurement]:
    items = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=float(m.volume_ml),
            unit=codes.UCUM.CubicCentimeter,
            method=_SUM_OF_VOXEL_VOLUMES,
        )
    ]
    if modality == "CT" and m.mean_intensity is not None:
        items.append(
            hd.sr.Measurement(
                name=MEAN_HU_NAME,
                value=float(m.mean_intensity),
                unit=codes.UCUM.HounsfieldUnit,
                derivation=codes.SCT.Mean,
            )
        )
    return items


def _group(
    m: VolumeMeasurement,
    info: SegmentInfo,
    seg: Dataset,
    segment_number: int,
    algorithm: AlgorithmInfo,
    modality: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """One TID 1411 group for one structure."""
    source_series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    laterality = _LATERALITY[info.laterality] if info.laterality else None
    evaluations = (
        [hd.sr.QualitativeEvaluation(INCOMPLETE_EVALUATION_NAME, INCOMPLETE_EVALUATION_VALUE)]
        if m.incomplete else None
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=segment_tracking_uid(source_series, algorithm, info.number),
            identifier=info.tracking_id,
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series),
        ),
        finding_type=_code(info.type_code),
        finding_category=_code(info.category_code),
        finding_sites=[hd.sr.FindingSite(_code(info.region or info.type_code),
                                         laterality=laterality)],
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=algorithm.name,
            version=algorithm.version,
            parameters=[f"weights_sha256={algorithm.weights_sha256}"],
        ),
        measurements=_measurements(m, modality),
        qualitative_evaluations=evaluations,
    )


def _groups(
    segs: Sequence[Dataset],
    segments: Sequence[SegmentInfo],
    measurements: Sequence[VolumeMeasurement],
    algorithm: AlgorithmInfo,
    modality: str,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """Validate the inputs against the SEGs and build the groups in label order.

    Each structure references the first SEG (in the order given) that holds
    a segment for it.
    """
    by_label = {s.number: s for s in segments}
    numbers = [_segment_numbers_by_tracking_uid(seg) for seg in segs]
    groups = []
    for m in sorted(measurements, key=lambda x: x.segment_number):
        info = by_label.get(m.segment_number)
        if info is None:
            raise ExportError(f"Measurement for label {m.segment_number} has no SegmentInfo.")
        for seg, by_uid in zip(segs, numbers, strict=True):
            source_series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
            uid = segment_tracking_uid(source_series, algorithm, info.number)
            if uid in by_uid:
                groups.append(_group(m, info, seg, by_uid[uid], algorithm, modality))
                break
        else:
            where = ", ".join(str(seg.SOPInstanceUID) for seg in segs)
            raise ExportError(f"Label {info.number} ({info.label}) has no segment in SEG {where}.")
    return groups


def _finding_groups(findings: Sequence[CodeTuple], algorithm: AlgorithmInfo, uid_seed: str
                    ) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group holding the findings about the whole report (e.g. a gap)."""
    if not findings:
        return []
    evaluations = [hd.sr.QualitativeEvaluation(INCOMPLETE_EVALUATION_NAME, _code(finding))
                   for finding in findings]
    return [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("sr-findings", uid_seed, algorithm.name, algorithm.version),
            identifier="acquisition quality",
        ),
        qualitative_evaluations=evaluations,
    )]


def _observation_context(algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", _equipment.MANUFACTURER, algorithm.name, algorithm.version),
        name=f"{algorithm.name} {algorithm.version}",
        manufacturer_name=_equipment.MANUFACTURER,
        model_name=_equipment.MODEL_NAME,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=device,
        )
    )


def _reporter(parts: Sequence[ReportPart]) -> AlgorithmInfo:
    """The algorithm the report is by: the one model, or all of them joined with '+'."""
    if len(parts) == 1:
        return parts[0].algorithm
    return AlgorithmInfo(name="+".join(p.algorithm.name for p in parts),
                         version="+".join(p.algorithm.version for p in parts),
                         weights_sha256="+".join(p.algorithm.weights_sha256 for p in parts))


def build_volumetry_sr(
    parts: Sequence[ReportPart],
    source_images: Sequence[Dataset],
    *,
    series_number: int = 9002,
    series_description: str | None = None,
    findings: Sequence[CodeTuple] = (),
    uid_seed: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 volumetry report of one series for the SEGs of one or more models.

    Parameters
    ----------
    parts : sequence of ReportPart
        One per model: its SEG(s) (their segments carry the TrackingUIDs the
        groups are matched by), structures and measurements. Within a part
        each structure references the first SEG that holds it; all SEGs are
        in the evidence. Groups are in part order, then label order.
    source_images : sequence of pydicom.Dataset
        The source headers of every SEG; the evidence, study and patient come
        from them.
    series_number : int
        SeriesNumber of the SR.
    series_description : str, optional
        Default ``"<model name(s)> volumetry"``.
    findings : sequence of CodeTuple
        Values of "Quality Finding" (DCM 111052) about the whole report, e.g.
        :data:`STATION_GAP`; written in one TID 1501 group.
    uid_seed : str, optional
        What the SR's UIDs derive from besides the models; default the
        source series UID and the first SEG's SOP Instance UID.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Series and SOP Instance UIDs derive from ``uid_seed`` (or the source
        series and first SEG) and the models.

    Raises
    ------
    ExportError
        If a measurement has no description or no segment in its part's
        SEGs, or there is nothing to report.
    """
    if not parts or not any(p.measurements for p in parts):
        raise ExportError("Argument 'parts' must hold at least one measurement.")
    reporter = _reporter(parts)
    segs = [seg for part in parts for seg in part.segs]
    modality = str(source_images[0].Modality)
    seed = uid_seed or f"{source_images[0].SeriesInstanceUID}/{segs[0].SOPInstanceUID}"
    groups = [group for part in parts for group in _groups(
        part.segs, part.segments, part.measurements, part.algorithm, modality)]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(reporter),
        procedure_reported=_PROCEDURES.get(modality, codes.SCT.ImagingProcedure),
        imaging_measurements=[*groups, *_finding_groups(findings, reporter, seed)],
    )
    sr = _build_sr(
        source_images, segs, report, reporter, uid_seed=uid_seed,
        series_number=series_number,
        series_description=series_description or f"{reporter.name} volumetry",
    )
    logger.info("Built volumetry SR %s with %d groups for series %s",
                sr.SOPInstanceUID, len(groups), source_images[0].SeriesInstanceUID)
    return sr


def _build_sr(
    source_images: Sequence[Dataset],
    segs: Sequence[Dataset],
    report: hd.sr.MeasurementReport,
    algorithm: AlgorithmInfo,
    *,
    uid_seed: str | None,
    series_number: int,
    series_description: str,
) -> hd.sr.Comprehensive3DSR:
    """Wrap the report in a Comprehensive 3D SR with derived UIDs and segnode's equipment."""
    first = uid_seed or str(source_images[0].SeriesInstanceUID)
    last = uid_seed or str(segs[0].SOPInstanceUID)
    parts = (first, algorithm.name, algorithm.version, last)
    with _equipment.no_phi_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*source_images, *segs],
            content=report[0],
            series_instance_uid=derived_uid("sr-series", *parts[:3]),
            series_number=series_number,
            sop_instance_uid=derived_uid("sr-instance", *parts),
            instance_number=1,
            manufacturer=_equipment.MANUFACTURER,
            is_complete=True,
            series_description=series_description,
            specific_character_set=_equipment.source_character_set(source_images[0]),
        )
    sr.ManufacturerModelName = _equipment.MODEL_NAME
    sr.SoftwareVersions = _equipment.SOFTWARE_VERSION
    return sr
