"""Write a Volume as a classic single-frame MR or CT DICOM series.

Used by the demo and the tests to turn phantom volumes
(:mod:`model.phantom`, built by the caller) into series the node reads like
any scanner's: one MR Image Storage or CT Image Storage file per slice, with
Patient, General Study, General Series, Frame of Reference, General
Equipment, General Image, Image Plane, Image Pixel, MR/CT Image, VOI LUT and
SOP Common modules. Geometry comes from the Volume's affine alone:

- ImagePositionPatient of slice ``k`` is ``affine @ (k, 0, 0, 1)``;
- ImageOrientationPatient is (row direction, column direction), where the
  row direction is the step of the column index ``i`` (``affine[:3, 2]``)
  and the column direction the step of the row index ``j``
  (``affine[:3, 1]``), both normalised;
- PixelSpacing is ``[row spacing, column spacing]`` =
  ``[|affine[:3, 1]|, |affine[:3, 2]|]``; SliceThickness and
  SpacingBetweenSlices are ``|affine[:3, 0]|``.

This module imports pydicom, highdicom and numpy only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from ._equipment import MANUFACTURER, MODEL_NAME, SOFTWARE_VERSION
from .uids import derived_uid

__all__ = ["write_series"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_STUDY_DATE = "20260101"
_STUDY_TIME = "120000"


def _uid(seed: str | None, *parts: str) -> str:
    """Deterministic UID from ``seed`` and ``parts``, or a random one without a seed."""
    return derived_uid("phantom_series", seed, *parts) if seed else generate_uid()


def _geometry(affine: np.ndarray) -> tuple[list[float], list[float], float]:
    """Return ImageOrientationPatient, PixelSpacing and the slice spacing (mm)."""
    slice_step, row_step, col_step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    row_spacing, col_spacing = float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))
    iop = [*(col_step / col_spacing), *(row_step / row_spacing)]
    return (
        [round(float(v), 8) for v in iop],
        [round(row_spacing, 6), round(col_spacing, 6)],
        float(np.linalg.norm(slice_step)),
    )


def _encode_pixels(
    array: np.ndarray, modality: str, rescale: tuple[float, float] | None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Quantise real values to stored values; returns (stored array, rescale)."""
    if modality == "CT":
        slope, intercept = rescale if rescale is not None else (1.0, -1024.0)
        stored = np.round((array.astype(np.float64) - intercept) / slope)
        if stored.min() >= 0:
            return np.clip(stored, 0, 65535).astype(np.uint16), (slope, intercept)
        return np.clip(stored, -32768, 32767).astype(np.int16), (slope, intercept)
    if rescale is not None:
        raise ValueError("Argument 'rescale' is only supported for modality 'CT', got 'MR'.")
    return np.clip(np.round(array), 0, 65535).astype(np.uint16), None


def _common_header(
    modality: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
    patient: tuple[str, str, str],
    description: str,
) -> Dataset:
    """Patient, study, series, frame of reference and equipment attributes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient
    ds.PatientSex = "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, _STUDY_DATE, _STUDY_TIME
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.StudyDescription = "segnode phantom"
    ds.Modality, ds.SeriesInstanceUID = modality, series_uid
    ds.SeriesNumber, ds.SeriesDescription = series_number, description
    ds.SeriesDate, ds.SeriesTime = _STUDY_DATE, _STUDY_TIME
    ds.PatientPosition, ds.BodyPartExamined = "HFS", "WHOLEBODY"
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, MODEL_NAME
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.ContentDate, ds.ContentTime = _STUDY_DATE, _STUDY_TIME
    ds.AcquisitionNumber = 1
    return ds


def _add_modality_module(ds: Dataset, modality: str, rescale: tuple[float, float] | None) -> None:
    """MR Image or CT Image module attributes (beyond the pixel description)."""
    if modality == "MR":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant = "GR", "SP"
        ds.ScanOptions, ds.MRAcquisitionType = "", "3D"
        ds.SequenceName = "phantom_t1"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 5.0, 2.0, 1
        ds.ImagedNucleus, ds.MagneticFieldStrength = "1H", 1.5
        ds.NumberOfAverages, ds.FlipAngle = 1.0, 10.0
        ds.WindowCenter, ds.WindowWidth = 500.0, 1200.0
        return
    slope, intercept = rescale if rescale is not None else (1.0, -1024.0)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, slope, "HU"
    ds.KVP, ds.ConvolutionKernel = 120.0, "STANDARD"
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0


def _add_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Image Pixel module for a 2D uint16/int16 slice."""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()


def _file_names(n: int, shuffle: bool, rng: np.random.Generator | None) -> list[str]:
    """Slice-ordered names, or random hexadecimal names when shuffling."""
    if not shuffle:
        return [f"IM{k + 1:05d}.dcm" for k in range(n)]
    rng = np.random.default_rng() if rng is None else rng
    names: list[str] = []
    while len(names) < n:
        name = f"{int(rng.integers(0, 2**40)):010x}.dcm"
        if name not in names:
            names.append(name)
    return names


def write_series(
    image: hd.Volume,
    out_dir: Path,
    *,
    modality: Literal["MR", "CT"] = "MR",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "phantom",
    shuffle_names: bool = False,
    rng: np.random.Generator | None = None,
    uid_seed: str | None = None,
    patient_name: str = "Phantom^Demo",
    patient_id: str = "PHANTOM",
    patient_birth_date: str = "",
    rescale: tuple[float, float] | None = None,
) -> list[Path]:
    """Write a scalar Volume as single-frame MR or CT Image Storage files.

    Parameters
    ----------
    image : highdicom.Volume
        Scalar volume, ``array[k, j, i]`` (slice, row, column), affine to LPS
        mm. Real-world values: MR arbitrary units (stored as uint16 after
        rounding and clipping to [0, 65535]); CT Hounsfield units.
    out_dir : pathlib.Path
        Folder to write into (created if missing).
    modality : {"MR", "CT"}
        MR Image Storage or CT Image Storage.
    study_uid, series_uid, frame_of_reference_uid : str, optional
        UIDs to use; missing ones are derived from ``uid_seed`` (or from the
        Volume's frame of reference UID for the latter), else random.
    series_number : int
        SeriesNumber.
    series_description : str
        SeriesDescription.
    shuffle_names : bool
        Name files with random hexadecimal names so that name order says
        nothing about slice order.
    rng : numpy.random.Generator, optional
        Source of the shuffled names.
    uid_seed : str, optional
        Makes every generated UID deterministic (same seed, same UIDs).
    patient_name, patient_id, patient_birth_date : str
        PatientName, PatientID and PatientBirthDate (YYYYMMDD; empty by default).
    rescale : tuple of float, optional
        CT only: (RescaleSlope, RescaleIntercept); stored = (HU - intercept)
        / slope, rounded. Default (1, -1024).

    Returns
    -------
    list[pathlib.Path]
        The written files in slice order ``k``.

    Raises
    ------
    ValueError
        If the volume is not 3D scalar or the modality is unsupported.
    """
    if modality not in ("MR", "CT"):
        raise ValueError(f"Argument 'modality' must be 'MR' or 'CT', got {modality!r}.")
    if image.array.ndim != 3:
        raise ValueError(f"Argument 'image' must be a 3D scalar volume, got shape {image.shape}.")
    study_uid = study_uid or _uid(uid_seed, "study")
    series_uid = series_uid or _uid(uid_seed, "series", str(series_number), modality)
    frame_uid = frame_of_reference_uid or image.frame_of_reference_uid or _uid(uid_seed, "for")
    stored, rescale = _encode_pixels(image.array, modality, rescale)
    header = _common_header(modality, study_uid, series_uid, frame_uid, series_number,
                            (patient_name, patient_id, patient_birth_date),
                            series_description)
    _add_modality_module(header, modality, rescale)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = _file_names(stored.shape[0], shuffle_names, rng)
    paths = [
        _write_slice(header, image.affine, k, stored[k], out_dir / names[k], uid_seed)
        for k in range(stored.shape[0])
    ]
    logger.info("wrote %d %s instances of series %s", len(paths), modality, series_uid)
    return paths


def _write_slice(
    header: Dataset, affine: np.ndarray, k: int, pixels: np.ndarray, path: Path,
    uid_seed: str | None,
) -> Path:
    """Write slice ``k``: geometry, pixels, SOP Common and file meta."""
    ds = Dataset()
    ds.update(header)
    iop, pixel_spacing, slice_spacing = _geometry(affine)
    position = affine @ np.array([k, 0.0, 0.0, 1.0])
    normal = np.cross(iop[:3], iop[3:])
    ds.SOPClassUID = MRImageStorage if header.Modality == "MR" else CTImageStorage
    ds.SOPInstanceUID = _uid(uid_seed, header.SeriesInstanceUID, "instance", str(k))
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [round(float(v), 6) for v in position[:3]]
    ds.ImageOrientationPatient = iop
    ds.PixelSpacing = pixel_spacing
    ds.SliceThickness = round(slice_spacing, 6)
    ds.SliceLocation = round(float(np.dot(normal, position[:3])), 6)
    if header.Modality == "MR":
        ds.SpacingBetweenSlices = round(slice_spacing, 6)
    _add_pixels(ds, pixels)
    ds.file_meta = _file_meta(ds)
    ds.save_as(path, enforce_file_format=True)
    return path


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """Part 10 file meta information for ``ds`` (explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta

