"""Fixtures for dicom_io tests: the shared real-data folder and synthetic series."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """``$SEGNODE_SHARED_DATA`` or ``<repo>/../shared/data``, if it exists."""
    env = os.environ.get("SEGNODE_SHARED_DATA")
    candidate = Path(env) if env else (REPO / ".." / "shared" / "data").resolve()
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips the test when it is absent."""
    found = shared_data_dir()
    if found is None:
        pytest.skip("real data absent: set SEGNODE_SHARED_DATA or provide <repo>/../shared/data")
    return found


def make_slice(
    *,
    series_uid: str,
    position: Sequence[float],
    pixels: np.ndarray,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    spacing: Sequence[float] = (0.7, 0.8),
    slope: float = 1.0,
    intercept: float = 0.0,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    modality: str = "CT",
    instance: int = 1,
    study_uid: str = "1.2.3.4",
    for_uid: str = "1.2.3.5",
    extra: dict | None = None,
) -> Dataset:
    """One classic single-frame image (uint16 stored values), ready to save."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "PHANTOM"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesDescription = "synthetic"
    ds.InstanceNumber = instance
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 1.0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def pattern(k: int, rows: int = 5, cols: int = 4) -> np.ndarray:
    """Stored values identifying each voxel: ``100 * k + 10 * j + i``."""
    j, i = np.mgrid[0:rows, 0:cols]
    return (100 * k + 10 * j + i).astype(np.uint16)


def save_all(folder: Path, datasets: Sequence[Dataset], names: Sequence[str]) -> list[Path]:
    """Write datasets as DICOM files (with preamble) under ``folder``."""
    paths = []
    for ds, name in zip(datasets, names, strict=True):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def axial_stack(
    series_uid: str,
    n: int,
    *,
    gap: float = 2.0,
    origin: Sequence[float] = (-10.0, -20.0, 30.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    **kwargs,
) -> list[Dataset]:
    """``n`` slices along the orientation's normal; slice k holds ``pattern(k)``."""
    normal = np.cross(orientation[:3], orientation[3:])
    return [
        make_slice(
            series_uid=series_uid,
            position=np.asarray(origin, float) + k * gap * normal,
            pixels=pattern(k),
            orientation=orientation,
            instance=k + 1,
            **kwargs,
        )
        for k in range(n)
    ]


@pytest.fixture
def synth():
    """The synthetic-series helpers of this module, as a namespace."""
    from types import SimpleNamespace

    return SimpleNamespace(
        make_slice=make_slice, pattern=pattern, save_all=save_all, axial_stack=axial_stack
    )
