"""TID 1500 volumetry SR: structure, codes, references to the SEG, validity."""

from __future__ import annotations

import io
import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest

from dicom_io.content import AlgorithmInfo, SegmentInfo, VolumeMeasurement
from dicom_io.seg import build_seg
from dicom_io.sr import ReportPart, build_volumetry_sr
from segnode_errors import ExportError

try:  # the synthetic series builder lives with the SEG tests
    from tests.dicom_io.test_seg import (
        ALGO,
        OBLIQUE,
        SEGMENTS,
        make_series,
        to_bytes_and_back,
        volume_from_slices,
    )
except ImportError:  # pragma: no cover - rootdir not on sys.path
    from test_seg import ALGO, OBLIQUE, SEGMENTS, make_series, to_bytes_and_back, volume_from_slices  # type: ignore[no-redef]

MEASUREMENTS = [
    VolumeMeasurement(1, 12.5, mean_intensity=80.2),
    VolumeMeasurement(3, 0.001, mean_intensity=30.0, incomplete=True),
    VolumeMeasurement(5, 1.75, mean_intensity=None),
]


def _build(modality="CT", measurements=MEASUREMENTS):
    sources, by_uid = make_series(OBLIQUE, modality=modality, reverse=True)
    seg = to_bytes_and_back(
        build_seg(volume_from_slices(sources, by_uid, flip_k=True), sources, SEGMENTS, ALGO))
    sr = build_volumetry_sr([ReportPart([seg], SEGMENTS, measurements, ALGO)], sources)
    return sources, seg, sr


def _readback(sr) -> hd.sr.Comprehensive3DSR:
    back = to_bytes_and_back(sr)  # strict reading: invalid values raise
    buf = io.BytesIO()
    back.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return hd.sr.srread(buf)


def _groups(sr):
    return sr.content.get_volumetric_roi_measurement_groups()


def test_one_group_per_structure_with_segment_reference():
    sources, seg, sr = _build()
    groups = _groups(_readback(sr))
    assert len(groups) == 3
    by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    for group, label in zip(groups, ["spleen", "left_kidney", "liver"], strict=True):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [by_label[label].SegmentNumber]
        assert ref.source_series_for_segmentation.value == sources[0].SeriesInstanceUID
        assert group.tracking_identifier == label
        assert group.tracking_uid == by_label[label].TrackingUID


def test_volume_hu_and_laterality_codes():
    _, _, sr = _build()
    spleen, kidney, liver = _groups(_readback(sr))
    volume = spleen.get_measurements(name=pydicom.sr.codedict.codes.SCT.Volume)[0]
    assert volume.value == pytest.approx(12.5) and volume.unit.value == "cm3"
    hu = spleen.get_measurements(name=hd.sr.CodedConcept("112031", "DCM", "x"))[0]
    assert hu.value == pytest.approx(80.2) and hu.unit.value == "[hnsf'U]"
    assert hu.derivation.value == "373098007"
    site = kidney.finding_sites[0]
    assert site.value.value == "64033007" and site.laterality.value == "7771000"
    assert not liver.get_measurements(name=hd.sr.CodedConcept("112031", "DCM", "x"))


def test_incomplete_flag_only_on_edge_structure():
    _, _, sr = _build()
    spleen, kidney, _ = _groups(_readback(sr))
    quality = hd.sr.CodedConcept("111052", "DCM", "Quality Finding")
    evaluations = kidney.get_qualitative_evaluations(name=quality)
    assert [e.value.value for e in evaluations] == ["130576"]
    assert not spleen.get_qualitative_evaluations(name=quality)


def test_mr_has_no_hu():
    _, _, sr = _build("MR")
    spleen = _groups(_readback(sr))[0]
    assert len(spleen.get_measurements()) == 1


def test_header_uids_and_equipment():
    sources, seg, sr = _build()
    again = build_volumetry_sr([ReportPart([seg], SEGMENTS, MEASUREMENTS, ALGO)], sources)
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (again.SeriesInstanceUID,
                                                        again.SOPInstanceUID)
    assert sr.SOPInstanceUID.startswith("2.25.") and sr.SOPInstanceUID != seg.SOPInstanceUID
    assert sr.Manufacturer == "segnode"
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID


def test_measurement_without_segment_rejected():
    sources, by_uid = make_series(modality="CT")
    seg = build_seg(volume_from_slices(sources, by_uid), sources, SEGMENTS, ALGO)
    absent = SegmentInfo(7, "heart", ("80891009", "SCT", "Heart"))
    with pytest.raises(ExportError, match="no segment in SEG"):
        build_volumetry_sr([ReportPart([seg], [*SEGMENTS, absent], [VolumeMeasurement(7, 1.0)],
                                       ALGO)], sources)
    with pytest.raises(ExportError, match="no SegmentInfo"):
        build_volumetry_sr([ReportPart([seg], SEGMENTS, [VolumeMeasurement(4, 1.0)], ALGO)],
                           sources)


def test_two_models_in_one_report():
    """One SR for the SEGs of two packs: each group references its own model's SEG."""
    sources, by_uid = make_series(OBLIQUE, modality="MR")
    labels = volume_from_slices(sources, by_uid)
    other = AlgorithmInfo(name="bodycomp", version="1.0", weights_sha256="b" * 64)
    tissue = [SegmentInfo(1, "visceral_fat", ("55603005", "SCT", "Fat"),
                          category_code=("85756007", "SCT", "Tissue"),
                          region=("818987002", "SCT", "Abdominopelvic cavity")),
              SegmentInfo(2, "subcutaneous_fat", ("67769002", "SCT", "Subcutaneous fatty tissue"),
                          category_code=("85756007", "SCT", "Tissue")),
              SegmentInfo(3, "upper_femora", ("71341001", "SCT", "Femur"), laterality="bilateral"),
              SegmentInfo(5, "pancreas", ("15776009", "SCT", "Pancreas"))]
    first = to_bytes_and_back(build_seg(labels, sources, SEGMENTS, ALGO))
    second = to_bytes_and_back(build_seg(labels, sources, tissue, other))
    sr = build_volumetry_sr([ReportPart([first], SEGMENTS, MEASUREMENTS, ALGO),
                             ReportPart([second], tissue, MEASUREMENTS, other)], sources)
    groups = _groups(_readback(sr))
    assert [g.referenced_segment.referenced_sop_instance_uid for g in groups] == (
        [first.SOPInstanceUID] * 3 + [second.SOPInstanceUID] * 3)
    assert len({g.tracking_uid for g in groups}) == 6  # same label values, distinct models
    assert sr.SeriesDescription == f"{ALGO.name}+bodycomp volumetry"
    evidence = {sop.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence}
    assert {first.SOPInstanceUID, second.SOPInstanceUID} <= evidence
    fat, femora = groups[3], groups[4]
    assert fat.finding_sites[0].value.value == "818987002"  # region of the tissue class
    assert fat.finding_category.value == "85756007"
    assert femora.finding_sites[0].laterality.value == "51440002"
    fat_segment = next(s for s in second.SegmentSequence if s.SegmentLabel == "visceral_fat")
    assert fat_segment.AnatomicRegionSequence[0].CodeValue == "818987002"
    femora_segment = next(s for s in second.SegmentSequence if s.SegmentLabel == "upper_femora")
    modifier = femora_segment.SegmentedPropertyTypeCodeSequence[0]
    assert modifier.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "51440002"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_dciodvfy_no_errors(tmp_path):
    _, _, sr = _build()
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)
