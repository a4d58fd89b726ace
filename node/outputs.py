"""The output folder of one series: file names, atomic writes, tables, manifest.

Layout, one folder per segmented volume under the run's output folder::

    OUTDIR/<key>/seg.dcm         DICOM-SEG (absent for NIfTI input)
    OUTDIR/<key>/sr.dcm          TID 1500 volumetry SR (absent for NIfTI input)
    OUTDIR/<key>/labels.nii.gz   label map on the source grid
    OUTDIR/<key>/volumes.csv     one row per structure present
    OUTDIR/<key>/volumes.json    the same rows plus QC flags and provenance
    OUTDIR/<key>/manifest.json   written last: marks the folder complete
    OUTDIR/<key>/preview.png     axial and coronal slices with the labels (DICOM input)
    OUTDIR/<key>/report.dcm      encapsulated PDF report (rule/`--reports pdf`)
    OUTDIR/<key>/preview-sc.dcm  secondary capture of the preview (`--reports sc`)

A run with several packs writes ``seg-<pack>.dcm`` and ``labels-<pack>.nii.gz``
per pack, one ``sr.dcm`` and one table for all (the ``model`` column says
which pack measured a row). Stitched stations get one SEG per station series:
``seg-<series key>.dcm`` (``seg-<pack>-<series key>.dcm`` with several packs).

``<key>`` is the SeriesInstanceUID (``<uid>.<n>`` for the n-th stack of a
split series) or the NIfTI file's stem: never patient data.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "OutputNames",
    "SeriesOutputs",
    "TABLE_COLUMNS",
    "atomic_write_bytes",
    "render_csv",
]

TABLE_COLUMNS = (
    "model",
    "label",
    "structure",
    "voxel_count",
    "volume_ml",
    "mean_intensity",
    "intensity_unit",
    "touches_fov_edge",
)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_csv(rows: Iterable[Mapping[str, Any]],
               columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """Render rows as CSV with ``columns`` (default: the volume table's, :data:`TABLE_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


@dataclass(frozen=True)
class OutputNames:
    """File names inside a series folder; named per pack when a run has several."""

    per_pack: bool
    sr: str = "sr.dcm"
    pdf: str = "report.dcm"

    def seg(self, pack: str, station: str | None = None) -> str:
        """The SEG of ``pack`` (for one station series of stitched stations)."""
        parts = ["seg", *([pack] if self.per_pack else []), *([station] if station else [])]
        return "-".join(parts) + ".dcm"

    def labels(self, pack: str) -> str:
        """The label map of ``pack``."""
        return f"labels-{pack}.nii.gz" if self.per_pack else "labels.nii.gz"

    def preview(self, pack: str) -> str:
        """The preview montage (PNG) of ``pack``'s labels."""
        return f"preview-{pack}.png" if self.per_pack else "preview.png"

    def preview_sc(self, pack: str) -> str:
        """The secondary capture of ``pack``'s preview."""
        return f"preview-sc-{pack}.dcm" if self.per_pack else "preview-sc.dcm"


@dataclass(frozen=True)
class SeriesOutputs:
    """Paths of the outputs of one segmented volume."""

    folder: Path

    @property
    def table_csv(self) -> Path:
        return self.folder / "volumes.csv"

    @property
    def table_json(self) -> Path:
        return self.folder / "volumes.json"

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    def is_complete(self, model_id: Mapping[str, str]) -> bool:
        """True when a previous run of the same model left complete outputs here."""
        try:
            manifest = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return False
        if manifest.get("model") != dict(model_id):
            return False
        return all((self.folder / name).is_file() for name in manifest.get("files", []))

    def write_tables(self, rows: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]) -> None:
        """Write ``volumes.csv`` and ``volumes.json`` (rows plus ``extra`` keys)."""
        atomic_write_bytes(self.table_csv, render_csv(rows).encode())
        document = {**extra, "structures": list(rows)}
        atomic_write_bytes(self.table_json, json.dumps(document, indent=2).encode())

    def write_manifest(self, model_id: Mapping[str, str], files: Sequence[Path]) -> None:
        """Mark the folder complete: written last, after every output file."""
        document = {"model": dict(model_id), "files": sorted(p.name for p in files)}
        atomic_write_bytes(self.manifest, json.dumps(document, indent=2).encode())
