"""Corrected cases out as an nnU-Net v2 raw dataset, for retraining a pack.

``<out>/imagesTr/<case>_0000.nii.gz`` is the image the model saw (stitched
for whole-body station sets) and ``<out>/labelsTr/<case>.nii.gz`` the
corrected label map on the same grid, both written when the correction was
scored (:mod:`node.corrections`). ``dataset.json`` carries the pack's label
names and the modality as the channel name (``CT`` selects nnU-Net's CT
normalisation). Case names are ``segnode_0001``...: no UID or patient data.
The manifest linking each case to its study and job is written beside the
dataset folder, not in it, so the folder can be shared and the manifest kept.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from model.labels import LabelTable
from node.catalogue import Catalogue
from node.outputs import atomic_write_bytes, render_csv
from segnode_errors import ExportError

__all__ = ["ExportFilter", "ExportSummary", "export_dataset", "parse_day"]


@dataclass(frozen=True)
class ExportFilter:
    """Which corrected cases to export."""

    model: str
    since: float | None = None
    until: float | None = None
    modality: str | None = None
    min_corrected_structures: int = 1


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    folder: Path
    manifest: Path
    cases: int
    modality: str


def _cases(catalogue: Catalogue, wanted: ExportFilter) -> list[dict]:
    """The newest correction of each case (label map) that passes the filter, oldest first."""
    rows = catalogue.list_corrections(states=("correction",), model=wanted.model,
                                      since=wanted.since, until=wanted.until, limit=10**9)
    newest: dict[str, dict] = {}
    for row in rows:  # newest first
        if row["labels_path"] and row["labels_path"] not in newest:
            newest[row["labels_path"]] = row
    chosen = [row for row in newest.values()
              if row["corrected_structures"] >= wanted.min_corrected_structures
              and (wanted.modality is None or row["modality"].upper() == wanted.modality.upper())]
    return sorted(chosen, key=lambda row: row["id"])


def export_dataset(catalogue: Catalogue, table: LabelTable, wanted: ExportFilter, out: Path,
                   *, manifest: Path | None = None) -> ExportSummary:
    """Write the nnU-Net v2 raw dataset of the corrected cases of ``wanted.model``.

    Raises
    ------
    ExportError
        If no case passes the filter, the cases mix modalities, ``out`` is a
        non-empty folder, or a case's files are gone.
    """
    cases = _cases(catalogue, wanted)
    if not cases:
        raise ExportError(f"no corrected case of pack {wanted.model} passes the filter")
    modalities = sorted({row["modality"].upper() for row in cases})
    if len(modalities) > 1:
        raise ExportError(f"the cases are of several modalities ({', '.join(modalities)}): "
                          "choose one with --modality")
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty")
    manifest = manifest or out.parent / f"{out.name}-manifest.csv"
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(exist_ok=True)
    lines = []
    for number, row in enumerate(cases, 1):
        case = f"segnode_{number:04d}"
        labels = Path(row["labels_path"])
        image = labels.with_name("image.nii.gz")
        for path in (labels, image):
            if not path.is_file():
                raise ExportError(f"correction {row['id']}: {path} is gone")
        shutil.copyfile(image, out / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copyfile(labels, out / "labelsTr" / f"{case}.nii.gz")
        lines.append({"case": case, "correction_id": row["id"], "job_id": row["job_id"],
                      "study_uid": row["study_uid"], "source_series_uid": row["source_series_uid"],
                      "correction_sop_instance_uid": row["sop_instance_uid"],
                      "corrected_structures": row["corrected_structures"],
                      "examined_at": datetime.fromtimestamp(row["examined_at"]).isoformat(
                          timespec="seconds")})
    document = {
        "channel_names": {"0": modalities[0]},
        "labels": {"background": 0, **{s.name: s.index for s in table}},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": f"segnode corrections of {wanted.model}",
        "description": "Radiologists' corrections of segnode's segmentations, exported by "
                       "segnode dataset export.",
    }
    atomic_write_bytes(out / "dataset.json", json.dumps(document, indent=2).encode())
    atomic_write_bytes(manifest, render_csv(lines, list(lines[0])).encode())
    return ExportSummary(out, manifest, len(cases), modalities[0])


def parse_day(value: str | None, *, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` as epoch seconds (local midnight; the next midnight when ``end``)."""
    if value is None:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError as exc:
        raise ExportError(f"Invalid date {value!r} - expected YYYY-MM-DD") from exc
    return day.timestamp() + (86400.0 if end else 0.0)

