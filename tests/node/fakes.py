"""Small helpers for the node unit tests: a hand-moved clock and tiny DICOM instances."""

from __future__ import annotations

import io
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from node.catalogue import Catalogue, InstanceRecord

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


class FakeClock:
    """A clock that only moves when a test moves it (seconds since the epoch)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock forward; returns the new time."""
        self.now += seconds
        return self.now


def new_catalogue(tmp_path: Path, clock: FakeClock) -> Catalogue:
    """A real SQLite catalogue in ``tmp_path`` driven by ``clock``."""
    return Catalogue(f"sqlite:///{tmp_path}/c.db", clock=clock)


def record(sop: str, *, series: str = SERIES, study: str = STUDY, sha: str = "a" * 64,
           path: Path | None = None, sop_class: str = MR_IMAGE, **attrs: str) -> InstanceRecord:
    """An instance record as the receiver would build it (attributes for the rules in attrs)."""
    return InstanceRecord(
        sop_instance_uid=sop, series_uid=series, study_uid=study, sop_class_uid=sop_class,
        path=path or Path(f"/spool/{study}/{series}/{sop}.dcm"), size_bytes=10, sha256=sha,
        calling_ae="STORESCU", **attrs,
    )


def make_dataset(sop: str, *, series: str = SERIES, study: str = STUDY,
                 sop_class: str = MR_IMAGE, **attrs: object) -> Dataset:
    """A small MR header with file meta (no pixel data)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "MR"
    ds.SeriesDescription = "t1 vibe"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "ACME"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset) -> bytes:
    """The data set as a Part 10 file, the bytes a C-STORE handler would pass on."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
