"""Reports every viewer can show: an Encapsulated PDF and a Secondary Capture preview.

The PDF (fpdf2) holds a title, a header without patient data (series
description, modality, study date, models and versions), the volume table,
the QC flags, the preview montage of :func:`dicom_io.preview.render_preview`
and the disclaimer. Its DICOM wrapper (Encapsulated PDF Storage) and the
preview's (Secondary Capture Image Storage, RGB) copy the patient and study
from the source images, as the IODs require, and reference every source
instance. Series and SOP Instance UIDs derive from ``uid_seed`` (default the
source series), the models and the kind of object, so a rerun replaces them.
"""

from __future__ import annotations

import datetime
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from dicom_io import _equipment
from dicom_io.content import AlgorithmInfo
from dicom_io.uids import derived_uid
from segnode_errors import ExportError

__all__ = ["REPORT_TITLE", "build_pdf_report", "build_preview_sc"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

REPORT_TITLE = "Organ volumetry report"
_ROW_KEYS = ("model", "structure", "volume_ml", "mean_intensity", "intensity_unit",
             "touches_fov_edge")
_TABLE_HEADINGS = ("Model", "Structure", "Volume (ml)", "Mean intensity", "FOV edge")
_TABLE_WIDTHS = (2, 3, 1.4, 1.6, 1)
_PREVIEW_MAX_HEIGHT_MM = 160.0
#: Typographic characters outside Latin-1 (the PDF core fonts' repertoire).
_LATIN1 = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'",
                         "\u201c": '"', "\u201d": '"', "\u2026": "...", "\u2264": "<=",
                         "\u2265": ">="})


def _algorithms(algorithm: AlgorithmInfo | Sequence[AlgorithmInfo]) -> list[AlgorithmInfo]:
    algorithms = [algorithm] if isinstance(algorithm, AlgorithmInfo) else list(algorithm)
    if not algorithms:
        raise ExportError("Argument 'algorithm' must name at least one model.")
    return algorithms


def _uids(kind: str, source_images: Sequence[Dataset], algorithms: Sequence[AlgorithmInfo],
          uid_seed: str | None) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the ``kind`` object."""
    parts = (uid_seed or str(source_images[0].SeriesInstanceUID),
             "+".join(a.name for a in algorithms), "+".join(a.version for a in algorithms))
    return derived_uid(f"{kind}-series", *parts), derived_uid(f"{kind}-instance", *parts)


def _source_references(source_images: Sequence[Dataset]) -> list[Dataset]:
    """One (ReferencedSOPClassUID, ReferencedSOPInstanceUID) item per source instance."""
    items = []
    for ds in source_images:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        items.append(item)
    return items


def _validate(source_images: Sequence[Dataset], preview_png: bytes) -> Image.Image:
    """Check the inputs; return the decoded RGB preview."""
    if not source_images:
        raise ExportError("Argument 'source_images' must not be empty.")
    try:
        preview = Image.open(io.BytesIO(preview_png))
        preview.load()
    except (OSError, ValueError) as exc:
        raise ExportError(f"Argument 'preview_png' is not a readable image: {exc}.") from exc
    if preview.format != "PNG":
        raise ExportError(f"Argument 'preview_png' must be a PNG, got {preview.format}.")
    return preview.convert("RGB")


def _text(value: object) -> str:
    """Text the PDF core fonts can encode."""
    return str(value).translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")


def _study_date(source: Dataset) -> str:
    value = str(source.get("StudyDate", "") or "")
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or "unknown"


def _header_lines(source: Dataset, algorithms: Sequence[AlgorithmInfo],
                  created: datetime.datetime) -> list[str]:
    """The report header: no patient name, ID, birth date or accession number."""
    models = ", ".join(f"{a.name} {a.version}" for a in algorithms)
    return [
        f"Series: {source.get('SeriesDescription', '') or '(no description)'}",
        f"Modality: {source.get('Modality', '')}    Study date: {_study_date(source)}",
        f"Model: {models}",
        f"Created: {created:%Y-%m-%d %H:%M} by segnode {_equipment.SOFTWARE_VERSION}",
    ]


def _table_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    missing = [key for key in _ROW_KEYS if key not in row]
    if missing:
        raise ExportError(f"Volume table row lacks the keys {missing}: got {sorted(row)}.")
    mean = row["mean_intensity"]
    mean_text = "-" if mean is None else f"{float(mean):.1f} {row['intensity_unit']}".strip()
    return (str(row["model"]), str(row["structure"]), f"{float(row['volume_ml']):.1f}",
            mean_text, "yes" if row["touches_fov_edge"] else "")


def _pdf(header: Sequence[str], rows: Sequence[Mapping[str, Any]], flags: Sequence[str],
         preview: Image.Image, disclaimer: str, created: datetime.datetime) -> bytes:
    """Lay out the report on A4 pages and return the PDF bytes."""
    cells = [_table_cells(row) for row in rows]
    pdf = FPDF(format="A4")
    pdf.set_title(REPORT_TITLE)
    pdf.set_creator(f"segnode {_equipment.SOFTWARE_VERSION}")
    pdf.set_creation_date(created)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(h=9, text=REPORT_TITLE, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=10)
    for line in header:
        pdf.cell(h=5, text=_text(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    _section(pdf, "Volumes")
    if cells:
        with pdf.table(col_widths=_TABLE_WIDTHS, text_align="LEFT", line_height=5) as table:
            for values in (_TABLE_HEADINGS, *cells):
                table_row = table.row()
                for value in values:
                    table_row.cell(_text(value))
    else:
        pdf.cell(h=5, text="No structure was found.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    _section(pdf, "Quality checks")
    for flag in flags or ["No quality flag raised."]:
        pdf.multi_cell(0, 5, _text(f"- {flag}" if flags else flag),
                       new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    _section(pdf, "Preview (not for diagnosis)")
    width = min(pdf.epw, _PREVIEW_MAX_HEIGHT_MM * preview.width / preview.height)
    pdf.image(preview, w=width)
    pdf.ln(4)
    pdf.set_font("Helvetica", "I", 9)
    pdf.multi_cell(0, 4.5, _text(disclaimer), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())


def _section(pdf: FPDF, title: str) -> None:
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(h=7, text=title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=10)


def build_pdf_report(
    source_images: Sequence[Dataset],
    rows: Sequence[Mapping[str, Any]],
    flags: Sequence[str],
    preview_png: bytes,
    algorithm: AlgorithmInfo | Sequence[AlgorithmInfo],
    *,
    disclaimer: str,
    series_number: int = 9003,
    uid_seed: str | None = None,
) -> Dataset:
    """Build an Encapsulated PDF Storage instance holding the volumetry report.

    Parameters
    ----------
    source_images : sequence of pydicom.Dataset
        The source headers; patient and study come from the first, every
        one is referenced in SourceInstanceSequence.
    rows : sequence of mapping
        The rows of ``volumes.json``: keys ``model``, ``structure``,
        ``volume_ml`` (ml), ``mean_intensity`` (None when not measured),
        ``intensity_unit`` and ``touches_fov_edge``; printed in this order.
    flags : sequence of str
        QC flag messages, printed as a list.
    preview_png : bytes
        The montage of :func:`dicom_io.preview.render_preview`.
    algorithm : AlgorithmInfo or sequence of AlgorithmInfo
        The model(s) the report is about.
    disclaimer : str
        Printed at the end of the report.
    series_number : int
        SeriesNumber of the report.
    uid_seed : str, optional
        What the UIDs derive from besides the models; default the source
        SeriesInstanceUID.

    Returns
    -------
    pydicom.Dataset
        Modality DOC, MIME type ``application/pdf``; the PDF body carries no
        patient name, ID, birth date or accession number.

    Raises
    ------
    ExportError
        If there are no source images or models, a row lacks a key, or the
        preview is not a PNG.
    """
    preview = _validate(source_images, preview_png)
    algorithms = _algorithms(algorithm)
    source = source_images[0]
    created = datetime.datetime.now()
    document = _pdf(_header_lines(source, algorithms, created), rows, flags, preview,
                    disclaimer, created)
    series_uid, sop_uid = _uids("pdf", source_images, algorithms, uid_seed)
    names = "+".join(a.name for a in algorithms)
    with _equipment.no_phi_warnings():
        ds = hd.base.SOPClass(
            study_instance_uid=source.StudyInstanceUID,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            sop_class_uid=EncapsulatedPDFStorage,
            instance_number=1,
            modality="DOC",
            manufacturer=_equipment.MANUFACTURER,
            manufacturer_model_name=_equipment.MODEL_NAME,
            software_versions=_equipment.SOFTWARE_VERSION,
            device_serial_number=_equipment.DEVICE_SERIAL_NUMBER,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=f"{names} report (PDF)",
            content_date=created.date(),
            content_time=created.time(),
            specific_character_set=_equipment.source_character_set(source),
        )
        ds.copy_patient_and_study_information(source)
    _add_encapsulated_document(ds, document, source_images)
    logger.info("Built PDF report %s (%d bytes, %d rows) for series %s",
                sop_uid, len(document), len(rows), source.SeriesInstanceUID)
    return ds


def _add_encapsulated_document(ds: Dataset, document: bytes,
                               source_images: Sequence[Dataset]) -> None:
    """SC Equipment and Encapsulated Document modules of the PDF instance."""
    ds.ConversionType = "WSD"
    ds.AcquisitionDateTime = ""
    ds.BurnedInAnnotation = "NO"
    ds.SourceInstanceSequence = _source_references(source_images)
    ds.DocumentTitle = REPORT_TITLE
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB values have even length: the pad byte is not part of the document.
    ds.EncapsulatedDocument = document + b"\x00" * (len(document) % 2)
    ds.EncapsulatedDocumentLength = len(document)


def build_preview_sc(
    source_images: Sequence[Dataset],
    preview_png: bytes,
    algorithm: AlgorithmInfo | Sequence[AlgorithmInfo],
    *,
    series_number: int = 9004,
    uid_seed: str | None = None,
) -> hd.sc.SCImage:
    """Build a Secondary Capture image (8-bit RGB) of the preview montage.

    Parameters
    ----------
    source_images : sequence of pydicom.Dataset
        The source headers; patient and study come from the first, every
        one is referenced in SourceImageSequence.
    preview_png : bytes
        The montage of :func:`dicom_io.preview.render_preview`; its pixels
        become the image's, unchanged.
    algorithm : AlgorithmInfo or sequence of AlgorithmInfo
        The model(s) whose labels the montage shows.
    series_number : int
        SeriesNumber of the preview.
    uid_seed : str, optional
        What the UIDs derive from besides the models; default the source
        SeriesInstanceUID.

    Returns
    -------
    highdicom.sc.SCImage
        SeriesDescription ``"<model(s)> preview (not for diagnosis)"``,
        ConversionType WSD, PatientOrientation empty (the montage mixes
        axial and coronal planes).

    Raises
    ------
    ExportError
        If there are no source images or models, or the preview is not a PNG.
    """
    pixels = np.asarray(_validate(source_images, preview_png))
    algorithms = _algorithms(algorithm)
    source = source_images[0]
    series_uid, sop_uid = _uids("preview", source_images, algorithms, uid_seed)
    names = "+".join(a.name for a in algorithms)
    with _equipment.no_phi_warnings():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=_equipment.MANUFACTURER,
            patient_orientation=("L", "P"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=f"{names} preview (not for diagnosis)",
            manufacturer_model_name=_equipment.MODEL_NAME,
            software_versions=_equipment.SOFTWARE_VERSION,
            device_serial_number=_equipment.DEVICE_SERIAL_NUMBER,
            specific_character_set=_equipment.source_character_set(source),
        )
    # highdicom requires an orientation; the montage has none (Type 2: empty).
    sc.PatientOrientation = []
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "NO"
    # Without it dciodvfy requires the series Laterality; the trunk is unpaired.
    sc.ImageLaterality = str(source.get("ImageLaterality") or source.get("Laterality") or "U")
    sc.SourceImageSequence = _source_references(source_images)
    logger.info("Built preview SC %s (%dx%d) for series %s",
                sop_uid, sc.Columns, sc.Rows, source.SeriesInstanceUID)
    return sc
