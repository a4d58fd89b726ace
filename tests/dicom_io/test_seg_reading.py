"""Reading any SEG back: segments mapped by codes and laterality, frames onto a grid."""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pytest

from dicom_io.content import SegmentInfo
from dicom_io.seg import build_seg
from dicom_io.seg_reading import (
    match_segments,
    seg_labels_on,
    seg_references,
    segment_codings,
)
from segnode_errors import InputRejected
from tests.dicom_io.test_seg import (
    ALGO,
    AXIAL,
    OBLIQUE,
    SEGMENTS,
    make_series,
    to_bytes_and_back,
    volume_from_slices,
)


def _renumbered(seg, order: list[int]):
    """What a viewer does: segments renumbered (``order``: old numbers, new first) and renamed."""
    viewer = copy.deepcopy(seg)
    new_number = {old: new for new, old in enumerate(order, 1)}
    for item in viewer.SegmentSequence:
        item.SegmentNumber = new_number[item.SegmentNumber]
        item.SegmentLabel = f"Segment {item.SegmentNumber}"
        item.SegmentAlgorithmType = "MANUAL"
    viewer.SegmentSequence = sorted(viewer.SegmentSequence, key=lambda s: s.SegmentNumber)
    for frame in viewer.PerFrameFunctionalGroupsSequence:
        ident = frame.SegmentIdentificationSequence[0]
        ident.ReferencedSegmentNumber = new_number[ident.ReferencedSegmentNumber]
    return viewer


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_a_renumbered_renamed_seg_reads_back_onto_the_grid_by_codes(orientation) -> None:
    sources, by_uid = make_series(orientation, reverse=True)
    labels = volume_from_slices(sources, by_uid, flip_k=True)
    seg = to_bytes_and_back(build_seg(labels, sources, SEGMENTS, ALGO))
    viewer = to_bytes_and_back(_renumbered(seg, order=[4, 3, 1, 2]))
    assert [s.SegmentLabel for s in viewer.SegmentSequence][0] == "Segment 1"
    back, match = seg_labels_on(viewer, labels, SEGMENTS)
    assert match.unmapped == []
    assert np.array_equal(back.array, labels.array)
    assert np.allclose(back.affine, labels.affine)


def test_segments_map_by_type_and_laterality_not_by_number_or_label() -> None:
    sources, by_uid = make_series()
    seg = to_bytes_and_back(build_seg(volume_from_slices(sources, by_uid), sources, SEGMENTS,
                                      ALGO))
    codings = segment_codings(seg)
    assert [(c.label, c.laterality) for c in codings] == [
        ("spleen", None), ("right_kidney", "right"), ("left_kidney", "left"), ("liver", None)]
    assert codings[0].algorithm_type == "AUTOMATIC" and codings[0].algorithm_name == "demo-pack"
    # Another table numbering the same structures differently: values follow the codes.
    other = [SegmentInfo(40, "kidney_l", ("64033007", "SCT", "Kidney"), laterality="left"),
             SegmentInfo(41, "kidney_r", ("64033007", "SCT", "Kidney"), laterality="right"),
             SegmentInfo(7, "leber", ("10200004", "SCT", "Liver"))]
    match = match_segments(codings, other)
    assert match.labels == {2: 41, 3: 40, 4: 7}
    [(spleen, reason)] = match.unmapped
    assert spleen.number == 1 and reason == "its type code is no structure of the label table"


def test_a_paired_structure_without_laterality_maps_to_nothing() -> None:
    sources, by_uid = make_series()
    seg = to_bytes_and_back(build_seg(volume_from_slices(sources, by_uid), sources, SEGMENTS,
                                      ALGO))
    for item in seg.SegmentSequence:
        item.SegmentedPropertyTypeCodeSequence[0].pop(0x00620011, None)  # the modifier
    match = match_segments(segment_codings(seg), SEGMENTS)
    assert match.labels == {1: 1, 4: 5}
    assert [(c.number, why) for c, why in match.unmapped] == [
        (2, "laterality (none) is not the table's (left, right)"),
        (3, "laterality (none) is not the table's (left, right)")]


def test_references_name_the_source_series_and_instances() -> None:
    sources, by_uid = make_series()
    seg = to_bytes_and_back(build_seg(volume_from_slices(sources, by_uid), sources, SEGMENTS,
                                      ALGO))
    refs = seg_references(seg)
    assert refs.series_uids == (sources[0].SeriesInstanceUID,)
    assert set(refs.instance_uids) == set(by_uid)
    assert refs.frame_of_reference_uid == sources[0].FrameOfReferenceUID


def test_a_seg_on_a_sub_block_of_the_grid_lands_in_place() -> None:
    sources, by_uid = make_series(reverse=True)
    labels = volume_from_slices(sources, by_uid)
    seg = to_bytes_and_back(build_seg(labels, sources, SEGMENTS, ALGO))
    affine = labels.affine.copy()
    affine[:3, 3] -= labels.affine[:3, :3] @ np.array([2.0, 1.0, 3.0])
    padded = hd.Volume(np.zeros((10, 14, 16), dtype=np.uint16), affine,
                       coordinate_system="PATIENT")
    back, _ = seg_labels_on(seg, padded, SEGMENTS)
    assert np.array_equal(back.array[2:8, 1:11, 3:15], labels.array)
    assert np.count_nonzero(back.array) == np.count_nonzero(labels.array)


def test_a_frame_of_reference_that_is_not_one_uid_is_refused_naming_it() -> None:
    sources, by_uid = make_series()
    labels = volume_from_slices(sources, by_uid)
    seg = to_bytes_and_back(build_seg(labels, sources, SEGMENTS, ALGO))
    seg.FrameOfReferenceUID = ["1.2.3", "1.2.4"]  # found by the seg fuzz target
    with pytest.raises(InputRejected, match="correction.dcm: FrameOfReferenceUID is not one UID"):
        seg_labels_on(seg, labels, SEGMENTS, name="correction.dcm")
