"""The bulk-encoded SEG is, element for element, the one highdicom builds from all frames."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.pixels.decoders.rle import _rle_decode_frame
from pydicom.uid import generate_uid

from dicom_io import seg as seg_module
from dicom_io._rle import rle_encode_frames
from dicom_io.content import SegmentInfo
from dicom_io.seg import build_seg
from segnode_errors import ExportError
from tests.dicom_io.test_seg import (
    ALGO,
    AXIAL,
    OBLIQUE,
    SEGMENTS,
    make_series,
    to_bytes_and_back,
    volume_from_slices,
)

# Stamped per build by highdicom: times, and the random dimension organisation UID.
_PER_BUILD = {"ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"}


def _highdicom_reference(labels: hd.Volume, sources, segments, kind: str) -> pydicom.Dataset:
    """highdicom given every frame: the SEG segnode wrote before bulk encoding."""
    frames = seg_module.labels_in_source_order(labels, sources)
    present = seg_module._present_segments(seg_module.label_counts(frames), segments)
    lookup = np.zeros(int(frames.max()) + 1, np.uint16)
    lookup[[s.number for s in present]] = np.arange(1, len(present) + 1)
    descriptions = [seg_module._segment_description(n, info, ALGO, sources[0].SeriesInstanceUID)
                    for n, info in enumerate(present, start=1)]
    return seg_module._highdicom_seg(
        sources, lookup[frames], descriptions, ALGO, kind,
        series_number=9001, series_description=f"{ALGO.name} segmentation")


def _assert_same_seg(ours: pydicom.Dataset, reference: pydicom.Dataset) -> None:
    ours, reference = to_bytes_and_back(ours), to_bytes_and_back(reference)
    assert ours.file_meta == reference.file_meta
    for ds in (ours, reference):
        for item in [*ds.DimensionOrganizationSequence, *ds.DimensionIndexSequence]:
            item.DimensionOrganizationUID = "1.2.3"
        for item in ds.ContributingEquipmentSequence:
            item.pop("ContributionDateTime", None)
    if ours.SegmentationType == "BINARY":
        # highdicom pads odd-length BINARY pixel data with "0" (0x30); the
        # standard's pad is NUL, which pydicom writes.
        bits = int(ours.NumberOfFrames) * ours.Rows * ours.Columns
        used = -(-bits // 8)
        assert ours.PixelData[used:] in (b"", b"\0")
        ours.PixelData, reference.PixelData = ours.PixelData[:used], reference.PixelData[:used]
    keywords = {e.keyword for e in ours} | {e.keyword for e in reference}
    different = sorted(k for k in keywords - _PER_BUILD if ours.get(k) != reference.get(k))
    assert not different, f"elements differ from highdicom's: {different}"
    assert int(ours.NumberOfFrames) > 1


def _series_with(truth_of_slice, **kwargs):
    """make_series with the labels of slice k (patient order) from ``truth_of_slice(k)``."""
    sources, by_uid = make_series(**kwargs)
    iop = np.asarray(sources[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ordered = sorted(sources, key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient)))
    return sources, {d.SOPInstanceUID: truth_of_slice(k) for k, d in enumerate(ordered)}


@pytest.mark.parametrize("kind", ["binary", "labelmap"])
@pytest.mark.parametrize("case", ["axial", "oblique-reversed-flipped", "shuffled", "gap"])
def test_same_as_highdicom_single_frame(kind, case):
    if case == "axial":
        sources, by_uid = make_series(AXIAL)
        labels = volume_from_slices(sources, by_uid)
    elif case == "oblique-reversed-flipped":
        sources, by_uid = make_series(OBLIQUE, reverse=True)
        labels = volume_from_slices(sources, by_uid, flip_k=True)
    elif case == "shuffled":
        sources, by_uid = make_series(AXIAL)
        sources = [sources[i] for i in np.random.default_rng(3).permutation(len(sources))]
        labels = volume_from_slices(sources, by_uid)
    else:  # labels on slices 0, 1, 3, 4 only: planes not evenly spaced, no "3D"
        def truth(k):
            lab = np.zeros((5, 7), np.uint16)  # 35 pixels: bits straddle bytes
            if k != 2 and k < 5:
                lab[k % 5, :] = 1 + k % 2
                lab[0, 0] = 5
            return lab
        sources, by_uid = _series_with(truth, rows=5, cols=7)
        labels = volume_from_slices(sources, by_uid)
    ours = build_seg(labels, sources, SEGMENTS, ALGO, seg_type=kind)
    reference = _highdicom_reference(labels, sources, SEGMENTS, kind)
    _assert_same_seg(ours, reference)
    three_d = kind == "labelmap" and case != "gap"  # BINARY of several segments: never 3D
    assert ours.get("DimensionOrganizationType") == ("3D" if three_d else None)


@pytest.mark.filterwarnings("ignore:Cannot determine value")
@pytest.mark.parametrize("kind", ["binary", "labelmap"])
def test_same_as_highdicom_multiframe_source(kind):
    sources, by_uid = make_series(OBLIQUE, reverse=True)
    mf = to_bytes_and_back(hd.legacy.LegacyConvertedEnhancedMRImage(
        sources, series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1))
    labels = volume_from_slices(sources, by_uid, flip_k=True)
    _assert_same_seg(build_seg(labels, [mf], SEGMENTS, ALGO, seg_type=kind),
                     _highdicom_reference(labels, [mf], SEGMENTS, kind))


def test_same_as_highdicom_source_spacing_and_16_bit_labelmap():
    """A source's own SpacingBetweenSlices is kept; 300 structures need 16-bit LABELMAP pixels."""
    many = [SegmentInfo(v, f"structure_{v}", ("10200004", "SCT", "Liver"), (v % 256, 9, 9))
            for v in range(1, 301)]
    sources, by_uid = _series_with(
        lambda k: (np.arange(10 * 12, dtype=np.uint16).reshape(10, 12) * 7 + k) % 301)
    for ds in sources:
        ds.SpacingBetweenSlices = 2.5
    labels = volume_from_slices(sources, by_uid)
    ours = build_seg(labels, sources, many, ALGO, seg_type="labelmap")
    assert ours.BitsAllocated == 16
    _assert_same_seg(ours, _highdicom_reference(labels, sources, many, "labelmap"))


def test_in_memory_seg_reads_like_the_written_one():
    """The raw per-frame element parses in memory as it does after writing."""
    sources, by_uid = make_series(AXIAL)
    seg = build_seg(volume_from_slices(sources, by_uid), sources, SEGMENTS, ALGO)
    written = to_bytes_and_back(seg)
    assert len(seg.PerFrameFunctionalGroupsSequence) == int(written.NumberOfFrames)
    assert seg.PerFrameFunctionalGroupsSequence == written.PerFrameFunctionalGroupsSequence
    assert seg.ReferencedSeriesSequence == written.ReferencedSeriesSequence


def test_sources_of_two_orientations_rejected():
    """A transposed frame on the same grid: SEG frames must share one orientation."""
    sources, by_uid = make_series(AXIAL, rows=12, cols=12, spacing=(0.8, 0.8))
    labels = volume_from_slices(sources, by_uid)
    sources[3].ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    with pytest.raises(ExportError, match=f"{sources[3].SOPInstanceUID} differs in orientation"):
        build_seg(labels, sources, SEGMENTS, ALGO)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rle_frames_decode_to_the_input(dtype):
    """Runs of every length (1, 2, 128, 129, whole rows), noise, and odd sizes round-trip."""
    rng = np.random.default_rng(7)
    high = 256 if dtype == np.uint8 else 70000
    cases = [
        rng.integers(0, 3, (4, 7, 300)),
        rng.integers(0, high, (3, 5, 301)),
        np.zeros((2, 3, 1000)),
        np.repeat(rng.integers(0, 4, (2, 3, 10)), [1, 2, 128, 129, 1, 3, 127, 2, 1, 1], axis=2),
    ]
    for frames in cases:
        frames = frames.astype(dtype) if dtype == np.uint8 else (frames % 65536).astype(dtype)
        n, rows, cols = frames.shape
        encoded = rle_encode_frames(frames)
        assert len(encoded) == n
        for f, data in enumerate(encoded):
            assert len(data) % 2 == 0
            decoded = _rle_decode_frame(data, rows, cols, 1, frames.itemsize * 8)
            got = np.frombuffer(decoded, "<u2" if dtype == np.uint16 else np.uint8)
            np.testing.assert_array_equal(got.reshape(rows, cols), frames[f])


def test_rle_rejects_other_types():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        rle_encode_frames(np.zeros((1, 2, 2), np.int32))

