"""Map the model's results onto dicom_io's writers: SEG and SR of a volume or of stations.

``model`` knows structures and measurements, ``dicom_io`` knows DICOM; this
module is the only place that translates one into the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd

from dicom_io.content import AlgorithmInfo, SegmentInfo, VolumeMeasurement
from dicom_io.seg import build_seg
from dicom_io.sr import STATION_GAP, build_volumetry_sr
from dicom_io.stitch import Gap
from dicom_io.volume import SeriesVolume
from model.labels import LabelTable, Structure
from model.packs import ModelPack
from model.qc import QCFlag
from model.volumetry import StructureMeasurement
from node.outputs import SeriesOutputs, atomic_write_bytes

__all__ = [
    "segment_infos",
    "table_row",
    "flag_dict",
    "gap_flag",
    "write_dicom_outputs",
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


def table_row(measurement: StructureMeasurement, unit: str | None) -> dict[str, Any]:
    """One row of ``volumes.csv`` / ``volumes.json``."""
    mean = measurement.mean_intensity
    return {
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


def write_dicom_outputs(
    series: SeriesVolume,
    labels: hd.Volume,
    rows: Sequence[Mapping[str, Any]],
    *,
    pack: ModelPack,
    outputs: SeriesOutputs,
    seg_type: str,
) -> list[Path]:
    """Build the SEG and the volumetry SR of one volume and write them atomically.

    Returns the paths written (none when no structure was found: a SEG must
    hold at least one segment).
    """
    if not rows:
        return []
    algorithm = AlgorithmInfo(
        name=pack.name, version=pack.version, weights_sha256=pack.weights_sha256
    )
    segments = segment_infos(pack.labels)
    seg = build_seg(labels, series.source, segments, algorithm, seg_type=seg_type)
    sr = build_volumetry_sr(seg, series.source, segments, _measurements(rows), algorithm)
    atomic_write_bytes(outputs.seg, _encode(seg))
    atomic_write_bytes(outputs.sr, _encode(sr))
    return [outputs.seg, outputs.sr]


def write_station_outputs(
    stations: Sequence[SeriesVolume],
    station_labels: Sequence[hd.Volume],
    rows: Sequence[Mapping[str, Any]],
    *,
    pack: ModelPack,
    folder: Path,
    seg_type: str,
    gap: bool,
    uid_seed: str,
) -> list[Path]:
    """One SEG per station series (``seg-<key>.dcm``) and one SR for them all (``sr.dcm``).

    ``rows`` were measured once on the stitched grid. Stations whose labels
    are empty get no SEG (a SEG needs a segment). Each structure in the SR
    references the first station SEG holding it, in the order given.
    """
    if not rows:
        return []
    algorithm = AlgorithmInfo(
        name=pack.name, version=pack.version, weights_sha256=pack.weights_sha256
    )
    segments = segment_infos(pack.labels)
    written, segs, sources = [], [], []
    for station, labels in zip(stations, station_labels, strict=True):
        if not labels.array.any():
            continue
        seg = build_seg(labels, station.source, segments, algorithm, seg_type=seg_type)
        path = folder / f"seg-{station.key}.dcm"
        atomic_write_bytes(path, _encode(seg))
        written.append(path)
        segs.append(seg)
        sources.extend(station.source)
    sr = build_volumetry_sr(segs, sources, segments, _measurements(rows), algorithm,
                            findings=[STATION_GAP] if gap else (), uid_seed=uid_seed)
    atomic_write_bytes(folder / "sr.dcm", _encode(sr))
    return [*written, folder / "sr.dcm"]


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
