"""Reading any DICOM-SEG back: its segments' codes, what it references, its labels on a grid.

A SEG that a viewer saved (3D Slicer, OHIF) numbers and names its segments as
it likes; what survives editing is the coding: segmented property type,
its laterality modifier and the anatomic region. :func:`match_segments`
maps segments to a label table's :class:`~dicom_io.content.SegmentInfo` by
those codes only (category and label are ignored: viewers change them);
segments that map to no label are returned with the reason.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import TypeVar

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_io._instances import convert_header
from dicom_io.content import CodeTuple, SegmentInfo
from dicom_io.stitch import labels_to_station
from segnode_errors import InputRejected

__all__ = [
    "SEGMENTATION_SOP_CLASSES",
    "SegReferences",
    "SegmentCoding",
    "SegmentMatch",
    "match_segments",
    "read_seg",
    "seg_labels_on",
    "seg_references",
    "segment_codings",
]

#: Segmentation Storage and Label Map Segmentation Storage.
SEGMENTATION_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4",
                                      "1.2.840.10008.5.1.4.1.1.66.7"})

_LATERALITY = {("7771000", "SCT"): "left", ("24028007", "SCT"): "right",
               ("51440002", "SCT"): "bilateral",
               ("G-A100", "SRT"): "right",
               ("G-A101", "SRT"): "left", ("G-A102", "SRT"): "bilateral"}


_T = TypeVar("_T")


def read_seg(source: Path | bytes, *, name: str = "SEG") -> Dataset:
    """Read a SEG with every header element decoded now (pixel data included).

    Raises
    ------
    InputRejected
        If the file cannot be parsed or an element cannot be decoded.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the file is bad
        raise InputRejected(f"{name}: not a readable DICOM file ({exc})") from exc
    convert_header(ds, name)
    return ds


def _malformed(what: str) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Turn a type error on a decoded but ill-formed header into InputRejected."""

    def decorate(function: Callable[..., _T]) -> Callable[..., _T]:
        @wraps(function)
        def checked(*args: object, **kwargs: object) -> _T:
            try:
                return function(*args, **kwargs)
            except (AttributeError, TypeError, ValueError, KeyError, IndexError) as exc:
                raise InputRejected(f"SEG: ill-formed {what} ({type(exc).__name__}: {exc})"
                                    ) from exc

        return checked

    return decorate


@dataclass(frozen=True)
class SegmentCoding:
    """What a SEG says one segment is."""

    number: int
    label: str
    type_code: CodeTuple
    laterality: str | None
    region: CodeTuple | None
    algorithm_type: str
    algorithm_name: str

    def describe(self) -> str:
        """e.g. ``segment 3 'Kidney L' (SCT 64033007 Kidney, left)``."""
        value, scheme, meaning = self.type_code
        side = f", {self.laterality}" if self.laterality else ""
        return f"segment {self.number} {self.label!r} ({scheme} {value} {meaning}{side})"


@dataclass(frozen=True)
class SegmentMatch:
    """Segment numbers mapped to label values, and the segments that map to none."""

    labels: dict[int, int] = field(default_factory=dict)
    unmapped: list[tuple[SegmentCoding, str]] = field(default_factory=list)


@dataclass(frozen=True)
class SegReferences:
    """The series and instances a SEG was derived from, and its frame of reference."""

    series_uids: tuple[str, ...]
    instance_uids: tuple[str, ...]
    frame_of_reference_uid: str


def _code(item: Dataset) -> CodeTuple:
    return (str(item.get("CodeValue", "") or item.get("LongCodeValue", "")
                or item.get("URNCodeValue", "")),
            str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeMeaning", "")))


def _laterality(item: Dataset) -> str | None:
    """Laterality from the type's modifier (the standard's place), or the region's."""
    modifiers: list[Dataset] = []
    for coded in item.get("SegmentedPropertyTypeCodeSequence", []) or []:
        modifiers.extend(coded.get("SegmentedPropertyTypeModifierCodeSequence", []) or [])
    modifiers.extend(item.get("SegmentedPropertyTypeModifierCodeSequence", []) or [])
    for region in item.get("AnatomicRegionSequence", []) or []:
        modifiers.extend(region.get("AnatomicRegionModifierSequence", []) or [])
    modifiers.extend(item.get("AnatomicRegionModifierSequence", []) or [])
    for modifier in modifiers:
        side = _LATERALITY.get(_code(modifier)[:2])
        if side is not None:
            return side
    return None


@_malformed("SegmentSequence")
def segment_codings(seg: Dataset) -> list[SegmentCoding]:
    """The coding of every segment of ``seg`` (the LABELMAP background, 0, left out).

    Raises
    ------
    InputRejected
        If a segment has no segmented property type.
    """
    codings = []
    for item in seg.get("SegmentSequence", []) or []:
        number = int(item.get("SegmentNumber", 0) or 0)
        if number == 0:
            continue
        types = item.get("SegmentedPropertyTypeCodeSequence") or []
        if not types:
            raise InputRejected(f"SEG segment {number} has no SegmentedPropertyTypeCodeSequence")
        regions = item.get("AnatomicRegionSequence") or []
        codings.append(SegmentCoding(
            number=number, label=str(item.get("SegmentLabel", "")),
            type_code=_code(types[0]), laterality=_laterality(item),
            region=_code(regions[0]) if regions else None,
            algorithm_type=str(item.get("SegmentAlgorithmType", "")),
            algorithm_name=str(item.get("SegmentAlgorithmName", "")),
        ))
    return codings


def match_segments(codings: Sequence[SegmentCoding],
                   segments: Sequence[SegmentInfo]) -> SegmentMatch:
    """Map segments to ``segments``' label values by type code, laterality and region.

    A type code shared by several labels (left and right kidney) needs the
    laterality, and the region when the laterality does not tell them apart.
    Several segments may map to one label (a viewer that split a structure).
    """
    labels: dict[int, int] = {}
    unmapped: list[tuple[SegmentCoding, str]] = []
    for coding in codings:
        same_type = [s for s in segments if s.type_code[:2] == coding.type_code[:2]]
        if not same_type:
            unmapped.append((coding, "its type code is no structure of the label table"))
            continue
        candidates = [s for s in same_type if s.laterality == coding.laterality]
        if len(candidates) > 1 and coding.region is not None:
            candidates = [s for s in candidates
                          if s.region is not None and s.region[:2] == coding.region[:2]]
        if len(candidates) == 1:
            labels[coding.number] = candidates[0].number
        elif not candidates:
            sides = ", ".join(sorted(str(s.laterality) for s in same_type))
            unmapped.append((coding, f"laterality {coding.laterality or '(none)'} is not "
                                     f"the table's ({sides})"))
        else:
            unmapped.append((coding, "several structures share its codes: "
                                     + ", ".join(s.label for s in candidates)))
    return SegmentMatch(labels, unmapped)


@_malformed("Referenced Series or derivation sequences")
def seg_references(seg: Dataset) -> SegReferences:
    """Series and instances named by the SEG's Referenced Series and derivation sequences."""
    series_uids: list[str] = []
    instance_uids: list[str] = []
    for item in seg.get("ReferencedSeriesSequence", []) or []:
        if "SeriesInstanceUID" in item:
            series_uids.append(str(item.SeriesInstanceUID))
        instance_uids.extend(str(ref.get("ReferencedSOPInstanceUID", ""))
                             for ref in item.get("ReferencedInstanceSequence", []) or [])
    groups = list(seg.get("PerFrameFunctionalGroupsSequence", []) or [])
    groups += list(seg.get("SharedFunctionalGroupsSequence", []) or [])
    for group in groups:
        for derivation in group.get("DerivationImageSequence", []) or []:
            instance_uids.extend(str(source.get("ReferencedSOPInstanceUID", ""))
                                 for source in derivation.get("SourceImageSequence", []) or [])
    return SegReferences(tuple(dict.fromkeys(series_uids)),
                         tuple(dict.fromkeys(u for u in instance_uids if u)),
                         str(seg.get("FrameOfReferenceUID", "")))


def seg_labels_on(seg: Dataset, grid: hd.Volume, segments: Sequence[SegmentInfo],
                  *, name: str = "SEG") -> tuple[hd.Volume, SegmentMatch]:
    """The SEG's segments as ``segments``' label values on the voxel grid of ``grid``.

    Frames are placed by their own positions (nearest neighbour, exact when
    the SEG's frames lie on the grid's planes); voxels of unmapped segments are
    0. Where segments overlap the higher segment number wins.

    Raises
    ------
    InputRejected
        If the SEG cannot be read as a volume (naming ``name``).
    """
    match = match_segments(segment_codings(seg), segments)
    frame_of_reference = seg.get("FrameOfReferenceUID")
    if frame_of_reference is not None and not isinstance(frame_of_reference, str):
        raise InputRejected(f"{name}: FrameOfReferenceUID is not one UID "
                            f"({frame_of_reference!r})")
    try:
        volume = hd.seg.Segmentation.from_dataset(seg, copy=False).get_volume(
            combine_segments=True, skip_overlap_checks=True, dtype=np.uint16)
    except Exception as exc:  # noqa: BLE001 - highdicom's errors on a malformed SEG vary
        raise InputRejected(f"{name}: its frames do not form a volume ({exc})") from exc
    if volume is None:
        return grid.with_array(np.zeros(grid.spatial_shape, dtype=np.uint16)), match
    lookup = np.zeros(int(volume.array.max(initial=0)) + 1, dtype=np.uint16)
    for number, label in match.labels.items():
        if number < len(lookup):
            lookup[number] = label
    mapped = volume.with_array(lookup[volume.array])
    placed = labels_to_station(mapped, grid)
    return placed, match
