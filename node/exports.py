"""Map the model's results onto dicom_io's writers: SEG and SR of a volume or of stations.

``model`` knows structures and measurements, ``dicom_io`` knows DICOM; this
module is the only place that translates one into the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import highdicom as hd
from pydicom.dataset import Dataset

from dicom_io.content import AlgorithmInfo, SegmentInfo, VolumeMeasurement
from dicom_io.preview import render_preview
from dicom_io.report import build_pdf_report, build_preview_sc
from dicom_io.seg import build_seg
from dicom_io.sr import STATION_GAP, ReportPart, build_volumetry_sr
from dicom_io.stitch import Gap
from dicom_io.volume import SeriesVolume
from model.labels import LabelTable, Structure
from model.packs import ModelPack
from model.qc import QCFlag
from model.volumetry import StructureMeasurement
from node.outputs import OutputNames, atomic_write_bytes

if TYPE_CHECKING:
    from node.pipeline import PackRun

__all__ = [
    "segment_infos",
    "table_row",
    "flag_dict",
    "gap_flag",
    "write_dicom_outputs",
    "write_previews",
    "write_reports",
    "write_station_outputs",
]


def _segment_info(structure: Structure) -> SegmentInfo:
    code = structure.type_code
    category = structure.category
    return SegmentInfo(
        number=structure.index,
        label=structure.label,
        type_code=(code.value, code.scheme, code.meaning),
        category_code=(category.value, category.scheme, category.meaning),
        laterality=structure.laterality,
        rgb=structure.rgb,
        tracking_id=structure.name,
        region=(structure.region.value, structure.region.scheme, structure.region.meaning)
        if structure.region else None,
    )


def segment_infos(table: LabelTable) -> list[SegmentInfo]:
    """SEG segment descriptions for every structure of a model's label table."""
    return [_segment_info(structure) for structure in table.structures]


def table_row(measurement: StructureMeasurement, unit: str | None, model: str) -> dict[str, Any]:
    """One row of ``volumes.csv`` / ``volumes.json``; ``model`` is the pack that measured it."""
    mean = measurement.mean_intensity
    return {
        "model": model,
        "label": measurement.label,
        "structure": measurement.name,
        "voxel_count": measurement.voxel_count,
        "volume_ml": round(measurement.volume_ml, 3),
        "mean_intensity": None if mean is None or unit is None else round(mean, 2),
        "intensity_unit": unit or "",
        "touches_fov_edge": measurement.touches_fov_edge,
    }


def flag_dict(flag: QCFlag) -> dict[str, Any]:
    """A QC flag as a JSON object."""
    return {"label": flag.label, "code": flag.code, "message": flag.message}


def gap_flag(gap: Gap, before: str, after: str) -> dict[str, Any]:
    """A gap between the stitched stations ``before`` and ``after`` (series keys) as a QC flag."""
    return {"label": None, "code": "station_gap", "between": [before, after],
            "message": f"gap of {gap.size_mm:.1f} mm between stations {before} and {after}: "
                       "structures there are missing or cut"}


def _algorithm(pack: ModelPack) -> AlgorithmInfo:
    return AlgorithmInfo(name=pack.name, version=pack.version, weights_sha256=pack.weights_sha256)


def write_dicom_outputs(
    series: SeriesVolume,
    runs: Sequence[PackRun],
    *,
    folder: Path,
    names: OutputNames,
    seg_type: str,
) -> list[Path]:
    """Build one SEG per pack and one volumetry SR for them all; write them atomically.

    A pack that found no structure gets no SEG (a SEG must hold a segment);
    with none found at all nothing is written.
    """
    parts, written = [], []
    for run in runs:
        if not run.rows:
            continue
        algorithm = _algorithm(run.pack)
        segments = segment_infos(run.pack.labels)
        seg = build_seg(run.labels, series.source, segments, algorithm, seg_type=seg_type)
        path = folder / names.seg(run.pack.name)
        atomic_write_bytes(path, _encode(seg))
        written.append(path)
        parts.append(ReportPart([seg], segments, _measurements(run.rows), algorithm))
    if not parts:
        return []
    sr = build_volumetry_sr(parts, series.source)
    atomic_write_bytes(folder / names.sr, _encode(sr))
    return [*written, folder / names.sr]


def write_station_outputs(
    stations: Sequence[SeriesVolume],
    runs: Sequence[tuple[PackRun, Sequence[hd.Volume]]],
    *,
    folder: Path,
    names: OutputNames,
    seg_type: str,
    gap: bool,
    uid_seed: str,
) -> list[Path]:
    """Per pack one SEG per station series, and one SR for them all (``sr.dcm``).

    ``runs`` pairs each pack's run (rows measured once on the stitched grid)
    with its labels on each station's grid, in the order of ``stations``.
    Stations whose labels are empty get no SEG (a SEG needs a segment). Each
    structure in the SR references the first station SEG of its pack holding it.
    """
    parts, written, sources = [], [], [s for station in stations for s in station.source]
    for run, station_labels in runs:
        if not run.rows:
            continue
        algorithm = _algorithm(run.pack)
        segments = segment_infos(run.pack.labels)
        segs = []
        for station, labels in zip(stations, station_labels, strict=True):
            if not labels.array.any():
                continue
            seg = build_seg(labels, station.source, segments, algorithm, seg_type=seg_type)
            path = folder / names.seg(run.pack.name, station.key)
            atomic_write_bytes(path, _encode(seg))
            written.append(path)
            segs.append(seg)
        parts.append(ReportPart(segs, segments, _measurements(run.rows), algorithm))
    if not parts:
        return []
    sr = build_volumetry_sr(parts, sources, findings=[STATION_GAP] if gap else (),
                            uid_seed=uid_seed)
    atomic_write_bytes(folder / names.sr, _encode(sr))
    return [*written, folder / names.sr]


def write_previews(image: hd.Volume, runs: Sequence[PackRun], *, folder: Path,
                   names: OutputNames) -> dict[str, Path]:
    """One preview montage per pack that found something; pack name -> PNG path."""
    written = {}
    for run in runs:
        if not run.rows:
            continue
        png = render_preview(image, run.labels, segment_infos(run.pack.labels))
        path = folder / names.preview(run.pack.name)
        atomic_write_bytes(path, png)
        written[run.pack.name] = path
    return written


def write_reports(
    sources: Sequence[Dataset],
    runs: Sequence[PackRun],
    previews: Mapping[str, Path],
    *,
    folder: Path,
    names: OutputNames,
    reports: Sequence[str],
    disclaimer: str,
    uid_seed: str | None = None,
) -> list[Path]:
    """The PDF report (all packs' rows, the first preview) and one preview SC per pack."""
    found = [run for run in runs if run.pack.name in previews]
    if not found:
        return []
    written = []
    if "pdf" in reports:
        pdf = build_pdf_report(
            sources, [row for run in runs for row in run.rows],
            [flag["message"] for run in runs for flag in run.flags],
            previews[found[0].pack.name].read_bytes(), [_algorithm(r.pack) for r in found],
            disclaimer=disclaimer, uid_seed=uid_seed)
        atomic_write_bytes(folder / names.pdf, _encode(pdf))
        written.append(folder / names.pdf)
    if "sc" in reports:
        for run in found:
            sc = build_preview_sc(sources, previews[run.pack.name].read_bytes(),
                                  _algorithm(run.pack), uid_seed=uid_seed)
            path = folder / names.preview_sc(run.pack.name)
            atomic_write_bytes(path, _encode(sc))
            written.append(path)
    return written


def _measurements(rows: Sequence[Mapping[str, Any]]) -> list[VolumeMeasurement]:
    return [
        VolumeMeasurement(
            segment_number=row["label"],
            volume_ml=row["volume_ml"],
            mean_intensity=row["mean_intensity"],
            incomplete=row["touches_fov_edge"],
        )
        for row in rows
    ]


def _encode(dataset: Any) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
