"""Plain descriptions of what the SEG and SR writers encode.

These dataclasses are ``dicom_io``'s own input types: ``node`` fills them from
the model pack's label table and from ``model.volumetry`` results, so that
``dicom_io`` never imports ``model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CodeTuple",
    "ANATOMICAL_STRUCTURE",
    "SegmentInfo",
    "AlgorithmInfo",
    "VolumeMeasurement",
]

CodeTuple = tuple[str, str, str]
"""A coded concept as ``(code value, coding scheme designator, code meaning)``."""

ANATOMICAL_STRUCTURE: CodeTuple = ("91723000", "SCT", "Anatomical Structure")
"""Default segmented property category."""


@dataclass(frozen=True)
class SegmentInfo:
    """Description of one structure of the label set.

    Parameters
    ----------
    number : int
        The structure's value in the label volume (1..65535). The SEG numbers
        its segments 1..n over the labels present, in ascending label order;
        this value is *not* necessarily the SEG segment number.
    label : str
        Short machine name, e.g. ``"left_kidney"``; written as SegmentLabel
        and as the SR tracking identifier.
    type_code : tuple of str
        Segmented property type ``(value, scheme, meaning)``, e.g.
        ``("64033007", "SCT", "Kidney")``.
    rgb : tuple of int
        Recommended display colour, 0..255 each.
    tracking_id : str
        Human-readable tracking identifier; defaults to ``label``.
    category_code : tuple of str
        Segmented property category, default SCT 91723000.
    laterality : {"left", "right", "bilateral", None}
        Laterality, written as a type modifier (SEG) and a finding-site
        laterality (SR).
    region : tuple of str, optional
        Anatomic region ``(value, scheme, meaning)`` of a tissue class,
        written as AnatomicRegionSequence (SEG) and finding site (SR).
    """

    number: int
    label: str
    type_code: CodeTuple
    rgb: tuple[int, int, int] = (128, 128, 128)
    tracking_id: str = ""
    category_code: CodeTuple = ANATOMICAL_STRUCTURE
    laterality: Literal["left", "right", "bilateral"] | None = None
    region: CodeTuple | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.number <= 65535:
            raise ValueError(
                f"Argument 'number' must be in 1..65535, got {self.number}."
            )
        if self.laterality not in ("left", "right", "bilateral", None):
            raise ValueError(
                "Argument 'laterality' must be 'left', 'right', 'bilateral' or None, "
                f"got {self.laterality!r}."
            )
        if not self.tracking_id:
            object.__setattr__(self, "tracking_id", self.label)


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identification of the model that produced the segmentation.

    Parameters
    ----------
    name : str
        Model pack name (AlgorithmName).
    version : str
        Model pack version (AlgorithmVersion); part of every derived UID.
    weights_sha256 : str
        Hex SHA-256 of the weights; written as the AlgorithmParameters
        ``weights_sha256=<hex>`` of the SEG and as an algorithm parameter in
        the SR's algorithm identification.
    family : str
        Meaning of the DCM algorithm family code; only
        ``"Artificial Intelligence"`` (DCM 113033) is supported.
    """

    name: str
    version: str
    weights_sha256: str
    family: str = "Artificial Intelligence"


@dataclass(frozen=True)
class VolumeMeasurement:
    """Volumetry of one structure, as written to the SR.

    Parameters
    ----------
    segment_number : int
        The structure's value in the label volume, i.e. the matching
        :attr:`SegmentInfo.number` (the SR resolves the SEG segment number).
    volume_ml : float
        Volume in millilitres (= cm3), from voxel count and true voxel size.
    mean_intensity : float or None
        Mean image value inside the structure; HU for CT. Written only for CT.
    incomplete : bool
        The structure touches the edge of the field of view, so its volume
        may be incomplete.
    """

    segment_number: int
    volume_ml: float
    mean_intensity: float | None = None
    incomplete: bool = False
