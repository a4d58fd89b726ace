"""TID 1500 volumetry report (Comprehensive 3D SR) referencing a segnode SEG.

One volumetric measurement group (TID 1411) per structure measured:

- tracking identifier: the SEG segment's TrackingUID (shared, deterministic)
  and the structure's human tracking id;
- ``Referenced Segment``: the SEG SOP instance + segment number, with the
  source series;
- finding type, category and finding site (with laterality SCT 7771000 /
  24028007) from the structure's codes;
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

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io import _equipment
from dicom_io.content import AlgorithmInfo, SegmentInfo, VolumeMeasurement
from dicom_io.seg import segment_tracking_uid
from dicom_io.uids import derived_uid
from segnode_errors import ExportError

__all__ = [
    "INCOMPLETE_EVALUATION_NAME",
    "INCOMPLETE_EVALUATION_VALUE",
    "MEAN_HU_NAME",
    "build_volumetry_sr",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

INCOMPLETE_EVALUATION_NAME = hd.sr.CodedConcept("111052", "DCM", "Quality Finding")
INCOMPLETE_EVALUATION_VALUE = hd.sr.CodedConcept("130576", "DCM", "Anatomy coverage incomplete")
MEAN_HU_NAME = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
_SUM_OF_VOXEL_VOLUMES = hd.sr.CodedConcept("126030", "DCM", "Sum of segmented voxel volumes")
_LATERALITY = {
    "left": hd.sr.CodedConcept("7771000", "SCT", "Left"),
    "right": hd.sr.CodedConcept("24028007", "SCT", "Right"),
}
_PROCEDURES = {
    "CT": hd.sr.CodedConcept("77477000", "SCT", "Computed tomography"),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
}


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
        finding_sites=[hd.sr.FindingSite(_code(info.type_code), laterality=laterality)],
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=algorithm.name,
            version=algorithm.version,
            parameters=[f"weights_sha256={algorithm.weights_sha256}"],
        ),
        measurements=_measurements(m, modality),
        qualitative_evaluations=evaluations,
    )


def _groups(
    seg: Dataset,
    segments: Sequence[SegmentInfo],
    measurements: Sequence[VolumeMeasurement],
    algorithm: AlgorithmInfo,
    modality: str,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """Validate the inputs against the SEG and build the groups in label order."""
    by_label = {s.number: s for s in segments}
    numbers = _segment_numbers_by_tracking_uid(seg)
    source_series = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    groups = []
    for m in sorted(measurements, key=lambda x: x.segment_number):
        info = by_label.get(m.segment_number)
        if info is None:
            raise ExportError(f"Measurement for label {m.segment_number} has no SegmentInfo.")
        uid = segment_tracking_uid(source_series, algorithm, info.number)
        if uid not in numbers:
            raise ExportError(
                f"Label {info.number} ({info.label}) has no segment in SEG {seg.SOPInstanceUID}."
            )
        groups.append(_group(m, info, seg, numbers[uid], algorithm, modality))
    return groups


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


def build_volumetry_sr(
    seg: Dataset,
    source_images: Sequence[Dataset],
    segments: Sequence[SegmentInfo],
    measurements: Sequence[VolumeMeasurement],
    algorithm: AlgorithmInfo,
    *,
    series_number: int = 9002,
    series_description: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 volumetry report for one SEG.

    Parameters
    ----------
    seg : pydicom.Dataset
        The SEG written by :func:`dicom_io.seg.build_seg` for these sources
        (its segments carry the TrackingUIDs the groups are matched by).
    source_images : sequence of pydicom.Dataset
        The source headers; the evidence, study and patient come from them.
    segments : sequence of SegmentInfo
        Structure descriptions keyed by label value.
    measurements : sequence of VolumeMeasurement
        One per structure to report (``segment_number`` = label value).
    algorithm : AlgorithmInfo
        The model; must be the one given to ``build_seg``.
    series_number : int
        SeriesNumber of the SR.
    series_description : str, optional
        Default ``"<model name> volumetry"``.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Series and SOP Instance UIDs derive from the source series, the
        model and the SEG SOP Instance UID.

    Raises
    ------
    ExportError
        If a measurement has no description or no segment in the SEG, or
        there is nothing to report.
    """
    if not measurements:
        raise ExportError("Argument 'measurements' must not be empty.")
    modality = str(source_images[0].Modality)
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm),
        procedure_reported=_PROCEDURES.get(modality, codes.SCT.ImagingProcedure),
        imaging_measurements=_groups(seg, segments, measurements, algorithm, modality),
    )
    sr = _build_sr(
        source_images, seg, report, algorithm,
        series_number=series_number,
        series_description=series_description or f"{algorithm.name} volumetry",
    )
    logger.info("Built volumetry SR %s with %d groups for series %s",
                sr.SOPInstanceUID, len(measurements), source_images[0].SeriesInstanceUID)
    return sr


def _build_sr(
    source_images: Sequence[Dataset],
    seg: Dataset,
    report: hd.sr.MeasurementReport,
    algorithm: AlgorithmInfo,
    *,
    series_number: int,
    series_description: str,
) -> hd.sr.Comprehensive3DSR:
    """Wrap the report in a Comprehensive 3D SR with derived UIDs and segnode's equipment."""
    series_uid = source_images[0].SeriesInstanceUID
    parts = (series_uid, algorithm.name, algorithm.version, str(seg.SOPInstanceUID))
    with _equipment.no_phi_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*source_images, seg],
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
