"""The frames of a DICOM-SEG, encoded in bulk: per-frame functional groups and pixel data.

highdicom builds one pydicom Dataset per frame and pydicom writes them one by
one, about 1 ms per frame: 4-5 s for a whole-body BINARY SEG of 40
structures. Here highdicom builds the header once, from a probe: the first
source image alone, or every frame of a multi-frame source (see
:func:`probe_sources`), with segment 1 in one pixel. This module then encodes the
per-frame item of each source plane once, copies it per frame with the
segment number patched in, packs the BINARY bits or RLE-compresses the
LABELMAP frames in bulk, and completes the header (frame count, dimension
organisation, references to every source image, slice spacing). The result
is, element for element, the Segmentation highdicom builds from the whole
pixel array (a test compares the two).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector, get_volume_positions
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from dicom_io._rle import rle_encode_frames
from segnode_errors import ExportError

__all__ = ["complete_seg", "is_multiframe_source", "probe_sources"]

_PFFG = Tag(0x52009230)
_PIXEL_DATA = Tag(0x7FE00010)
# Explicit VR little endian headers of the two values that change per frame.
_DIMENSION_INDEX_VALUES = b"\x20\x00\x57\x91UL"
_SEGMENT_NUMBER = b"\x62\x00\x0b\x00US\x02\x00"
_ITEM = b"\xfe\xff\x00\xe0"
_CHUNK_FRAMES = 8  # BINARY frames packed together: 8 frames are always whole bytes


def is_multiframe_source(source_images: Sequence[Dataset]) -> bool:
    """True for one multi-frame source image, False for single-frame images."""
    return len(source_images) == 1 and int(getattr(source_images[0], "NumberOfFrames", 1)) > 1


def probe_sources(source_images: Sequence[Dataset], frame_shape: tuple[int, int],
                  ) -> tuple[list[Dataset], np.ndarray]:
    """The source images highdicom builds the header from, and its pixel array.

    Single-frame images: the first one alone (one frame). A multi-frame image:
    itself, one frame per source frame. Every probe frame holds segment 1 in
    its first pixel, the rest is background.
    """
    frames = int(source_images[0].NumberOfFrames) if is_multiframe_source(source_images) else 1
    probe = np.zeros((frames, *frame_shape), np.uint8)
    probe[:, 0, 0] = 1
    return [source_images[0]], probe


def complete_seg(
    header: Dataset,
    source_images: Sequence[Dataset],
    frames: np.ndarray,
    present: Sequence[int],
    counts: np.ndarray,
    positions: Sequence[hd.PlanePositionSequence],
) -> Dataset:
    """The SEG of ``frames`` from the header highdicom built on the probe.

    Parameters
    ----------
    header : pydicom.Dataset
        highdicom's Segmentation of the probe (:func:`probe_sources`), every
        probe frame holding segment 1 in its first pixel.
    source_images : sequence of pydicom.Dataset
        All source images, in the order of ``frames``.
    frames : numpy.ndarray
        Labels (n_planes, Rows, Columns), plane ``p`` on source plane ``p``.
    present : sequence of int
        Label values of segments 1..n, ascending.
    counts : numpy.ndarray
        Voxel count of each label value on each plane (n_planes, max label + 1).
    positions : sequence of highdicom.PlanePositionSequence
        Position of each source plane, as highdicom copies it.

    Returns
    -------
    pydicom.Dataset
        The Segmentation; its per-frame functional groups are one raw
        element, written as encoded and parsed only when read.

    Raises
    ------
    ExportError
        If two source planes share a position.
    """
    seg = Dataset(header)
    seg.file_meta = header.file_meta
    correct_ambiguous_vr(seg, True)  # before any raw element: it would parse them
    binary = seg.SegmentationType == "BINARY"
    values = np.array([[float(x) for x in p[0].ImagePositionPatient] for p in positions])
    holding = counts[:, 1:].any(axis=1)  # source planes holding a label
    order, dimension_index = _frame_order(seg, values, holding)
    if not is_multiframe_source(source_images):
        _reference_all_sources(seg, source_images, values)
    _set_dimension_organization(seg, values, holding)
    items = _plane_items(seg, source_images, positions, dimension_index, binary)
    if binary:
        frame_items, pixel_data = _binary_frames(frames, present, counts, order, items)
    else:
        frame_items, pixel_data = _labelmap_frames(seg, frames, present, order, items)
    del seg.PerFrameFunctionalGroupsSequence
    del seg.PixelData
    seg.NumberOfFrames = len(frame_items)
    body = b"".join(frame_items)
    seg[_PFFG] = RawDataElement(_PFFG, "SQ", len(body), body, 0, False, True)
    encapsulated = seg.file_meta.TransferSyntaxUID.is_encapsulated
    vr = "OW" if seg.BitsAllocated > 8 and not encapsulated else "OB"
    seg[_PIXEL_DATA] = DataElement(_PIXEL_DATA, vr, pixel_data, is_undefined_length=encapsulated)
    # Marked as encoded in the transfer syntax it is written in, with the
    # character set pydicom's writer compares against, so the raw elements are
    # written as they are rather than parsed and encoded again.
    seg.set_original_encoding(False, True, seg._character_set)
    return seg


def _frame_order(
    seg: Dataset, values: np.ndarray, holding: np.ndarray,
) -> tuple[list[int], dict[int, int]]:
    """Source planes holding a label in highdicom's order, and each one's dimension index.

    ``values`` holds the position of each source plane (n_planes, 3),
    ``holding`` whether it holds a label.
    """
    normal = get_normal_vector(_orientation(seg), index_convention=VOLUME_INDEX_CONVENTION)
    _, sort_index = np.unique(values @ normal, return_index=True)
    if len(sort_index) != len(values):
        raise ExportError("Two source images share a position: no SEG can reference them.")
    order = [int(p) for p in sort_index if holding[p]]
    return order, {p: rank for rank, p in enumerate(order, start=1)}


def _orientation(seg: Dataset) -> list[float]:
    return list(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                .ImageOrientationPatient)


def _set_dimension_organization(seg: Dataset, values: np.ndarray, holding: np.ndarray) -> None:
    """``3D`` as highdicom decides it: frames told apart by position alone, evenly spaced.

    That is a LABELMAP or a BINARY SEG of one segment, whose planes holding
    labels (in source order) are evenly spaced.
    """
    included = np.flatnonzero(holding)
    by_position_only = seg.SegmentationType != "BINARY" or len(seg.SegmentSequence) == 1
    spacing = None
    if len(included) > 1 and by_position_only:
        spacing, _ = get_volume_positions(image_positions=values[included],
                                          image_orientation=_orientation(seg), sort=False)
    if spacing is not None and spacing > 0.0:
        seg.DimensionOrganizationType = "3D"
    elif "DimensionOrganizationType" in seg:
        del seg.DimensionOrganizationType


def _reference_all_sources(
    seg: Dataset, source_images: Sequence[Dataset], values: np.ndarray,
) -> None:
    """Source Image and Referenced Series Sequences of every source; the slice spacing of all.

    The two sequences are encoded here (one raw element each), in the order
    and form highdicom gives them.
    """
    references, by_series = [], {}
    for image in source_images:
        ref = _ui_bytes(0x00081150, image.SOPClassUID) + _ui_bytes(0x00081155, image.SOPInstanceUID)
        references.append(ref)
        by_series.setdefault(image.SeriesInstanceUID, []).append(ref)
    _set_raw_sequence(seg, 0x00082112, references)
    _set_raw_sequence(seg, 0x00081115, [
        _sequence_bytes(0x0008114A, refs) + _ui_bytes(0x0020000E, uid)
        for uid, refs in by_series.items()
    ])
    if "SpacingBetweenSlices" in source_images[0]:
        return  # highdicom copied the source's
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing, _ = get_volume_positions(image_positions=values,
                                      image_orientation=_orientation(seg))
    if spacing is not None:
        measures.SpacingBetweenSlices = format_number_as_ds(spacing)
    elif "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices


def _set_raw_sequence(seg: Dataset, tag: int, item_bodies: Sequence[bytes]) -> None:
    body = b"".join(_item(item) for item in item_bodies)
    seg[tag] = RawDataElement(Tag(tag), "SQ", len(body), body, 0, False, True)


def _sequence_bytes(tag: int, item_bodies: Sequence[bytes]) -> bytes:
    body = b"".join(_item(item) for item in item_bodies)
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\0\0" + struct.pack(
        "<I", len(body)) + body


def _plane_items(
    seg: Dataset, source_images: Sequence[Dataset],
    positions: Sequence[hd.PlanePositionSequence], dimension_index: dict[int, int],
    binary: bool,
) -> dict[int, tuple[bytes, ...]]:
    """Per plane holding a label: its encoded per-frame item, split where the segment goes.

    BINARY items come in three parts (before the segment number in the
    dimension index values, between it and the referenced segment number,
    after); LABELMAP items are whole.
    """
    encoder = _ItemEncoder(seg.PerFrameFunctionalGroupsSequence[0])
    multiframe = is_multiframe_source(source_images)
    items = {}
    for plane, rank in dimension_index.items():
        values = {
            0x00209157: _element_bytes(
                DataElement(0x00209157, "UL", [1, rank] if binary else [rank])),
            0x00200032: _element_bytes(positions[plane][0]["ImagePositionPatient"]),
        }
        if multiframe:
            values[0x00081160] = _element_bytes(DataElement(0x00081160, "IS", plane + 1))
        else:
            values[0x00081150] = _ui_bytes(0x00081150, source_images[plane].SOPClassUID)
            values[0x00081155] = _ui_bytes(0x00081155, source_images[plane].SOPInstanceUID)
        body = encoder.encode(values)
        items[plane] = _split_at_segment(body) if binary else (body,)
    return items


class _ItemEncoder:
    """Encodes copies of one per-frame item that differ only in a few leaf values.

    The template's elements are encoded once; an element named in
    :meth:`encode` is encoded anew, and the lengths of the items and
    sequences holding it are recomputed. An element replaced must occur
    once in the template.
    """

    def __init__(self, template: Dataset) -> None:
        self._leaves: Counter[int] = Counter()
        self._tree = self._compile(template)

    def _compile(self, dataset: Dataset) -> list[tuple[int, bytes | list]]:
        nodes: list[tuple[int, bytes | list]] = []
        for tag in sorted(dataset.keys()):
            element = dataset[tag]
            if element.VR == "SQ":
                nodes.append((int(tag), [self._compile(item) for item in element.value]))
                continue
            self._leaves[int(tag)] += 1
            nodes.append((int(tag), _element_bytes(element)))
        return nodes

    def encode(self, values: dict[int, bytes]) -> bytes:
        """The template's item body with ``values`` (tag -> encoded element) in place of its own."""
        ambiguous = sorted(tag for tag in values if self._leaves[tag] != 1)
        if ambiguous:
            raise ExportError(
                f"Per-frame item template holds elements {ambiguous} not exactly once.")
        return self._encode(self._tree, values)

    def _encode(self, nodes: list[tuple[int, bytes | list]], values: dict[int, bytes]) -> bytes:
        out = []
        for tag, node in nodes:
            if isinstance(node, bytes):
                out.append(values.get(tag, node))
                continue
            out.append(_sequence_bytes(tag, [self._encode(item, values) for item in node]))
        return b"".join(out)


def _ui_bytes(tag: int, uid: str) -> bytes:
    """One UI element, explicit VR little endian: the UID padded with NUL to even length."""
    value = str(uid).encode("ascii")
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, b"UI", len(value)) + value


def _element_bytes(element: DataElement) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element)
    return buffer.getvalue()


def _split_at_segment(body: bytes) -> tuple[bytes, bytes, bytes]:
    """Cut an encoded BINARY item around its two segment number values."""
    cuts = []
    for header, size in ((_DIMENSION_INDEX_VALUES, 4), (_SEGMENT_NUMBER, 2)):
        at = body.find(header)
        if at < 0 or body.find(header, at + 1) >= 0:
            raise ExportError(f"Per-frame item template has not exactly one {header!r}.")
        start = at + len(header) + (2 if size == 4 else 0)
        cuts.append((start, start + size))
    (a0, a1), (b0, b1) = sorted(cuts)
    return body[:a0], body[a1:b0], body[b1:]


def _item(body: bytes) -> bytes:
    return _ITEM + struct.pack("<I", len(body)) + body


def _binary_frames(
    frames: np.ndarray, present: Sequence[int], counts: np.ndarray, order: Sequence[int],
    items: dict[int, tuple[bytes, ...]],
) -> tuple[list[bytes], bytes]:
    """One frame per segment and plane holding it, segment by segment; bits packed LSB first."""
    frame_items, packed, pending = [], [], []
    for number, value in enumerate(present, start=1):
        as_ul, as_us = struct.pack("<I", number), struct.pack("<H", number)
        for plane in order:
            if not counts[plane, value]:
                continue
            before, between, after = items[plane]
            frame_items.append(_item(before + as_ul + between + as_us + after))
            pending.append(frames[plane] == value)
            if len(pending) == _CHUNK_FRAMES:
                packed.append(np.packbits(np.stack(pending), bitorder="little").tobytes())
                pending = []
    if pending:
        packed.append(np.packbits(np.stack(pending), bitorder="little").tobytes())
    return frame_items, b"".join(packed)


def _labelmap_frames(
    seg: Dataset, frames: np.ndarray, present: Sequence[int], order: Sequence[int],
    items: dict[int, tuple[bytes, ...]],
) -> tuple[list[bytes], bytes]:
    """One RLE frame per plane holding a label; pixel values are segment numbers."""
    dtype = np.uint8 if seg.BitsAllocated == 8 else np.uint16
    lookup = np.zeros(int(frames.max()) + 1, dtype=dtype)
    lookup[list(present)] = np.arange(1, len(present) + 1)
    encoded = rle_encode_frames(lookup[frames[order]])
    return [_item(items[plane][0]) for plane in order], encapsulate(encoded)
