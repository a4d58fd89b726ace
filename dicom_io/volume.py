"""The volume type that leaves :mod:`dicom_io.series`: a thin wrapper of ``hd.Volume``.

A :class:`SeriesVolume` pairs one ``highdicom.Volume`` (array indexed
``(k, j, i)`` = (slice, row, column), affine mapping ``(k, j, i, 1)`` to patient
LPS millimetres) with the DICOM headers it was read from, so that writers of
derived objects (SEG, SR) can reference the source instances slice by slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import highdicom as hd
from pydicom.dataset import Dataset

__all__ = ["SeriesVolume", "Rejection", "SeriesReadResult"]


@dataclass(frozen=True)
class SeriesVolume:
    """One image stack of a DICOM series, as a volume plus its source headers.

    Attributes
    ----------
    volume : highdicom.Volume
        float32 array ``(k, j, i)`` with rescale slope/intercept applied; the
        affine maps array indices to patient LPS mm; frame of reference set.
    key : str
        ``SeriesInstanceUID``, or ``"<uid>.<n>"`` (n from 1) for the n-th stack of
        a series that held several.
    source : tuple of pydicom.Dataset
        Source headers without pixel data. Classic single-frame images: one per
        slice, in slice order k. Enhanced multi-frame or Siemens mosaic: the
        single source dataset.
    source_frames : tuple of int
        Enhanced multi-frame only: 1-based frame numbers in slice order k;
        empty otherwise.
    modality, study_uid, series_uid, description : str
        From the source headers (``description`` is SeriesDescription, may be "").
    layout : str
        ``"classic"``, ``"enhanced"`` or ``"mosaic"`` (a mosaic has one source
        dataset and no frames: each slice is a tile of the one image).
    """

    volume: hd.Volume
    key: str
    source: tuple[Dataset, ...]
    modality: str
    study_uid: str
    series_uid: str
    description: str = ""
    source_frames: tuple[int, ...] = field(default=())
    layout: str = "classic"


@dataclass(frozen=True)
class Rejection:
    """A stack, file or whole series that is not turned into a volume.

    Attributes
    ----------
    key : str
        Series UID (or ``"<uid>.<n>"`` for one stack of a split series).
    reason : str
        Precise human-readable reason, naming what was expected and found.
    paths : tuple of str
        The files concerned (may be empty when the reason concerns the series).
    ignored : bool
        True for input that is never segmented by design (a localizer, a SEG,
        an SR): reported, but not a failure.
    """

    key: str
    reason: str
    paths: tuple[str, ...] = ()
    ignored: bool = False


@dataclass(frozen=True)
class SeriesReadResult:
    """What :func:`dicom_io.series.read_series` returns: volumes and rejections."""

    volumes: list[SeriesVolume]
    rejected: list[Rejection]
