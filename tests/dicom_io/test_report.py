"""Encapsulated PDF report and Secondary Capture preview: content, PHI, UIDs, dciodvfy."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import zlib

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_io.content import AlgorithmInfo
from dicom_io.preview import render_preview
from dicom_io.report import REPORT_TITLE, build_pdf_report, build_preview_sc
from segnode_errors import ExportError
from tests.dicom_io.test_seg import ALGO, SEGMENTS, make_series, volume_from_slices

PATIENT_NAME, PATIENT_ID = "Doe^Janet", "PID-98765"
DISCLAIMER = "Not for diagnostic use \u2013 research only."
ROWS = [
    {"model": "demo-pack", "label": 1, "structure": "spleen", "voxel_count": 10,
     "volume_ml": 12.345, "mean_intensity": 45.25, "intensity_unit": "HU",
     "touches_fov_edge": True},
    {"model": "demo-pack", "label": 5, "structure": "liver", "voxel_count": 900,
     "volume_ml": 1500.0, "mean_intensity": None, "intensity_unit": "",
     "touches_fov_edge": False},
]
FLAGS = ["left_kidney: lies on the patient's right"]
OTHER = AlgorithmInfo(name="fat-pack", version="2.0", weights_sha256="cd" * 32)


@pytest.fixture(scope="module")
def case():
    """CT source images with a patient name, and their preview montage."""
    sources, by_uid = make_series(modality="CT")
    for ds in sources:
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.SeriesDescription = "abdomen venous"
    labels = volume_from_slices(sources, by_uid)
    pixels = np.random.default_rng(0).normal(40, 10, labels.array.shape).astype(np.float32)
    image = hd.Volume(pixels, labels.affine, "PATIENT", labels.frame_of_reference_uid)
    return sources, render_preview(image, labels, SEGMENTS)


def roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    with pydicom.config.strict_reading():
        return pydicom.dcmread(buffer)


def pdf_text(document: bytes) -> bytes:
    """The page content of a PDF: every Flate stream decompressed, joined."""
    out = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", document, re.S):
        try:
            out.append(zlib.decompress(match.group(1)))
        except zlib.error:
            continue
    return b"\n".join(out)


def document_of(ds: pydicom.Dataset) -> bytes:
    return bytes(ds.EncapsulatedDocument[: int(ds.EncapsulatedDocumentLength)])


def test_pdf_instance(case):
    sources, png = case
    ds = roundtrip(build_pdf_report(sources, ROWS, FLAGS, png, ALGO, disclaimer=DISCLAIMER))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.Modality == "DOC" and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.SeriesNumber == 9003 and ds.DocumentTitle == REPORT_TITLE
    assert ds.Manufacturer == "segnode" and ds.ConversionType == "WSD"
    # patient and study copied from the source, as the IOD requires
    assert str(ds.PatientName) == PATIENT_NAME and ds.PatientID == PATIENT_ID
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in ds.SourceInstanceSequence} == {
        s.SOPInstanceUID for s in sources}
    document = document_of(ds)
    assert document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")
    assert len(ds.EncapsulatedDocument) % 2 == 0


def test_pdf_body_holds_the_table_flags_and_disclaimer(case):
    sources, png = case
    document = document_of(build_pdf_report(sources, ROWS, FLAGS, png, [ALGO, OTHER],
                                            disclaimer=DISCLAIMER))
    text = pdf_text(document)
    for expected in (b"(spleen)", b"(liver)", b"(12.3)", b"(1500.0)", b"(45.2 HU)", b"(yes)",
                     b"demo-pack 1.2.3, fat-pack 2.0", b"abdomen venous", b"2024-01-01",
                     b"lies on the patient's right", b"research only",
                     REPORT_TITLE.encode()):
        assert expected in text, expected
    assert b"/Subtype /Image" in document, "the preview is embedded"


def test_pdf_body_has_no_patient_identifiers(case):
    sources, png = case
    document = document_of(build_pdf_report(sources, ROWS, FLAGS, png, ALGO,
                                            disclaimer=DISCLAIMER))
    for searched in (document, pdf_text(document)):
        for phi in (PATIENT_NAME, "Janet", PATIENT_ID):
            assert phi.encode() not in searched


def test_sc_pixels_equal_the_png(case):
    sources, png = case
    sc = roundtrip(build_preview_sc(sources, png, ALGO))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.BitsAllocated == 8 and sc.ConversionType == "WSD"
    assert sc.SeriesDescription == "demo-pack preview (not for diagnosis)"
    assert sc.SeriesNumber == 9004 and str(sc.PatientName) == PATIENT_NAME
    np.testing.assert_array_equal(sc.pixel_array, np.asarray(Image.open(io.BytesIO(png))))
    assert {i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence} == {
        s.SOPInstanceUID for s in sources}


def test_uids_deterministic(case):
    sources, png = case
    def pdf(algorithm, seed=None):
        return build_pdf_report(sources, ROWS, FLAGS, png, algorithm, disclaimer="x",
                                uid_seed=seed)
    a, b, c, d = pdf(ALGO), pdf(ALGO), pdf(OTHER), pdf(ALGO, "study.stations-1")
    assert (a.SeriesInstanceUID, a.SOPInstanceUID) == (b.SeriesInstanceUID, b.SOPInstanceUID)
    assert len({a.SOPInstanceUID, c.SOPInstanceUID, d.SOPInstanceUID}) == 3
    s1, s2 = build_preview_sc(sources, png, ALGO), build_preview_sc(sources, png, ALGO)
    assert (s1.SeriesInstanceUID, s1.SOPInstanceUID) == (s2.SeriesInstanceUID, s2.SOPInstanceUID)
    uids = {a.SeriesInstanceUID, a.SOPInstanceUID, s1.SeriesInstanceUID, s1.SOPInstanceUID}
    assert len(uids) == 4 and all(u.startswith("2.25.") for u in uids)


def test_rejects_bad_input(case):
    sources, png = case
    with pytest.raises(ExportError, match="touches_fov_edge"):
        build_pdf_report(sources, [{"structure": "spleen", "model": "m", "volume_ml": 1.0,
                                    "mean_intensity": None, "intensity_unit": ""}],
                         [], png, ALGO, disclaimer="x")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="JPEG")
    with pytest.raises(ExportError, match="must be a PNG"):
        build_preview_sc(sources, buffer.getvalue(), ALGO)
    with pytest.raises(ExportError, match="not a readable image"):
        build_preview_sc(sources, b"not an image", ALGO)
    with pytest.raises(ExportError, match="source_images"):
        build_preview_sc([], png, ALGO)
    with pytest.raises(ExportError, match="algorithm"):
        build_pdf_report(sources, ROWS, FLAGS, png, [], disclaimer="x")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_dciodvfy_no_errors(tmp_path, modality):
    sources, by_uid = make_series(modality=modality)
    labels = volume_from_slices(sources, by_uid)
    png = render_preview(hd.Volume(labels.array.astype(np.float32), labels.affine, "PATIENT"),
                         labels, SEGMENTS)
    objects = {
        "pdf": build_pdf_report(sources, ROWS, FLAGS, png, ALGO, disclaimer=DISCLAIMER),
        "sc": build_preview_sc(sources, png, ALGO),
    }
    for name, ds in objects.items():
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        lines = (out.stdout + out.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{name}:\n" + "\n".join(errors)
