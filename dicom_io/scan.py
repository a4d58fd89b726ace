"""Find DICOM series in a folder tree, reading headers only.

Files are recognised by content (the DICOM preamble), not by name or
extension; anything else is skipped with a log line. Headers are parsed only
up to SeriesInstanceUID (``specific_tags`` and ``stop_before_pixels``), so a
folder of thousands of files is scanned without decoding any pixel data.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom

__all__ = ["SeriesFiles", "find_series", "read_series_uid"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class SeriesFiles:
    """The files of one DICOM series.

    Attributes
    ----------
    series_uid : str
        SeriesInstanceUID shared by all files.
    paths : tuple of pathlib.Path
        Files in sorted path order (the order carries no meaning).
    """

    series_uid: str
    paths: tuple[Path, ...]


def read_series_uid(path: Path) -> str | None:
    """Return the SeriesInstanceUID of a DICOM file, or None when not usable.

    Parameters
    ----------
    path : pathlib.Path
        Any file.

    Returns
    -------
    str or None
        The UID; None (with a log line) for a non-DICOM file, a DICOMDIR or a
        DICOM file without SeriesInstanceUID.
    """
    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["SeriesInstanceUID", "SOPClassUID"],
        )
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID", "")))
        uid = ds.get("SeriesInstanceUID")
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the file is not usable
        logger.info("skipping %s: not a readable DICOM file (%s)", path, type(exc).__name__)
        return None
    if sop_class == _DICOMDIR_CLASS:
        logger.info("skipping %s: DICOMDIR", path)
        return None
    if not uid:
        logger.info("skipping %s: DICOM file without SeriesInstanceUID", path)
        return None
    return str(uid)


def find_series(root: Path) -> list[SeriesFiles]:
    """Group the DICOM files under ``root`` by SeriesInstanceUID.

    Parameters
    ----------
    root : pathlib.Path
        A folder (searched recursively, any nesting, any file names) or a
        single file.

    Returns
    -------
    list of SeriesFiles
        One entry per series, sorted by UID; non-DICOM files are skipped with
        a log line.
    """
    root = Path(root)
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in _walk(root):
        uid = read_series_uid(path)
        if uid is not None:
            groups[uid].append(path)
    logger.info("found %d series under %s", len(groups), root)
    return [SeriesFiles(uid, tuple(sorted(paths))) for uid, paths in sorted(groups.items())]


def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames))
    return found
