"""DICOM-SEGs as a radiologist's viewer, another AI product or another node would send them.

Built with highdicom from a label array on a series' grid, with the
renumbering and renaming a viewer does: segments numbered in reverse label
order and labelled ``Segment_<n>``, codes (type, laterality modifier)
kept, algorithm type MANUAL, the viewer's own Manufacturer.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_io.nifti import read_nifti


def _description(number: int, template: Dataset, algorithm_type: str,
                 algorithm_name: str | None) -> hd.seg.SegmentDescription:
    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(
            name=algorithm_name or "viewer", version="1.0",
            family=(hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")
                    if algorithm_type == "AUTOMATIC"
                    else hd.sr.CodedConcept("123109", "DCM", "Manual Processing")))
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=f"Segment_{number}",
        segmented_property_category=hd.sr.CodedConcept.from_dataset(
            template.SegmentedPropertyCategoryCodeSequence[0]),
        segmented_property_type=hd.sr.CodedConcept.from_dataset(
            template.SegmentedPropertyTypeCodeSequence[0]),
        algorithm_type=algorithm_type, algorithm_identification=algorithm)
    # The whole type item, with its laterality modifier nested as the standard puts it.
    description.SegmentedPropertyTypeCodeSequence = copy.deepcopy(
        template.SegmentedPropertyTypeCodeSequence)
    return description


def neoplasm_template() -> Dataset:
    """A segment a radiologist adds that no anatomy table has: a tumour."""
    item = Dataset()
    category, kind = Dataset(), Dataset()
    category.CodeValue, category.CodingSchemeDesignator = "49755003", "SCT"
    category.CodeMeaning = "Morphologically Altered Structure"
    kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning = "108369006", "SCT", "Neoplasm"
    item.SegmentedPropertyCategoryCodeSequence = [category]
    item.SegmentedPropertyTypeCodeSequence = [kind]
    return item


def segment_templates(our_seg: Dataset, labels: np.ndarray) -> dict[int, Dataset]:
    """segnode's segment items by label value (its segments are the labels present, in order)."""
    present = [int(v) for v in np.unique(labels) if v]
    items = {int(item.SegmentNumber): item for item in our_seg.SegmentSequence}
    return {label: items[n] for n, label in enumerate(present, 1)}


def write_seg(path: Path, labels: hd.Volume, sources: Sequence[Dataset],
              templates: dict[int, Dataset], *, manufacturer: str = "Radiologist's Viewer",
              algorithm_type: str = "MANUAL", algorithm_name: str | None = None) -> Dataset:
    """Write ``labels`` (values = the templates' labels) as a viewer-made BINARY SEG."""
    present = [int(v) for v in np.unique(labels.array) if v]
    numbers = {label: n for n, label in enumerate(reversed(present), 1)}
    lut = np.zeros(int(labels.array.max()) + 1, dtype=np.uint16)
    for label, number in numbers.items():
        lut[label] = number
    volume = hd.Volume(lut[labels.array], labels.affine, coordinate_system="PATIENT",
                       frame_of_reference_uid=sources[0].FrameOfReferenceUID)
    descriptions = [_description(number, templates[label], algorithm_type, algorithm_name)
                    for label, number in sorted(numbers.items(), key=lambda kv: kv[1])]
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=volume, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=manufacturer,
        manufacturer_model_name="viewer", software_versions="1.0", device_serial_number="1",
        series_description="corrected segmentation")
    seg.save_as(path)
    return seg


def moved_and_reshaped(labels: np.ndarray, label: int, shift: int, cut: int) -> np.ndarray:
    """``label`` moved by ``shift`` voxels along the row axis, its last ``cut`` slices removed."""
    mask = labels == label
    moved = np.zeros_like(mask)
    moved[:, shift:, :] = mask[:, :-shift, :]
    slices = np.flatnonzero(moved.any(axis=(1, 2)))
    moved[slices[-cut:]] = False
    corrected = labels.copy()
    corrected[mask] = 0
    corrected[moved & (corrected == 0)] = label
    return corrected


def job_labels(folder: Path) -> tuple[Dataset, hd.Volume]:
    """segnode's SEG and label map of one output folder."""
    return pydicom.dcmread(folder / "seg.dcm"), read_nifti(folder / "labels.nii.gz",
                                                            dtype=np.uint16)
