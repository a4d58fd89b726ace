"""Label tables: which structure each label index of a model means, and its codes.

A :class:`LabelTable` maps the integer label indices of one model pack to
:class:`Structure` entries carrying everything a DICOM SEG segment
description needs (type code, laterality modifier, category, display
colour), without depending on pydicom: ``node`` maps them to
``dicom_io``'s segment descriptions.

The built-in tables are data (module-level tuples), not code branches. The
MRSegmentator table follows ``shared/reference/mrsegmentator_codes.md``:
SNOMED CT type codes (correcting the wrong ones in MRSegmentator's own
``class_codes.py``, e.g. gallbladder is 28231008, not 28273000 "Bile duct"),
category SCT 91723000 "Anatomical Structure", laterality as a type modifier
(Left SCT 7771000, Right SCT 24028007) and the RGB display colours listed
there.

When a model pack is loaded, :func:`table_from_dataset_json` matches the label
names of its ``dataset.json`` against the built-in tables (case, word order
and separators do not matter: ``right_kidney``, ``kidney_right`` and
``Right Kidney`` are the same structure); the indices always come from the
model. A name no table knows becomes a generic "Anatomical Structure" segment
and a warning is logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from segnode_errors import ModelError

__all__ = [
    "Code",
    "Structure",
    "LabelTable",
    "ANATOMICAL_STRUCTURE",
    "BILATERAL",
    "LEFT",
    "RIGHT",
    "MRSEGMENTATOR",
    "BUILTIN_TABLES",
    "normalize_label_name",
    "table_from_dataset_json",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

Laterality = Literal["left", "right", "bilateral"]


@dataclass(frozen=True)
class Code:
    """A coded concept (value, coding scheme designator, meaning).

    Parameters
    ----------
    value : str
        Code value, e.g. ``"64033007"``.
    scheme : str
        Coding scheme designator, ``"SCT"`` for SNOMED CT.
    meaning : str
        Code meaning, e.g. ``"Kidney"``.
    """

    value: str
    scheme: str
    meaning: str


ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
BILATERAL = Code("51440002", "SCT", "Bilateral")
_LATERALITY_CODES = {"left": LEFT, "right": RIGHT, "bilateral": BILATERAL}


@dataclass(frozen=True)
class Structure:
    """One segmented structure of a model: its label index and its codes.

    Parameters
    ----------
    index : int
        Label value in the model's output (1..N; 0 is background).
    name : str
        Label name, snake_case as MRSegmentator writes it (``right_kidney``).
    type_code : Code
        Segmented property type (SNOMED CT), without laterality.
    laterality : {"left", "right", "bilateral"} or None
        Laterality, written as a type modifier code.
    rgb : tuple of int
        Recommended display colour, 0..255 per channel (R, G, B).
    category : Code
        Segmented property category, SCT 91723000 "Anatomical Structure".
    known : bool
        False when the name matched no built-in table (generic coding).
    region : Code or None
        Anatomic region, for tissue classes told apart by where they are
        (abdominal vs gluteofemoral subcutaneous fat).
    """

    index: int
    name: str
    type_code: Code
    laterality: Laterality | None
    rgb: tuple[int, int, int]
    category: Code = ANATOMICAL_STRUCTURE
    known: bool = True
    region: Code | None = None

    @property
    def laterality_code(self) -> Code | None:
        """Code: the type modifier code for the laterality, or None."""
        return None if self.laterality is None else _LATERALITY_CODES[self.laterality]

    @property
    def label(self) -> str:
        """str: human-readable name, e.g. ``"Right kidney"``."""
        return self.name.replace("_", " ").capitalize()


class LabelTable:
    """An ordered, immutable set of structures indexed by label value.

    Parameters
    ----------
    name : str
        Name of the table (e.g. ``"mrsegmentator"`` or a model pack name).
    structures : iterable of Structure
        The structures; indices and names must be unique and indices >= 1.

    Raises
    ------
    ValueError
        If an index is < 1 or an index or a name occurs twice.
    """

    def __init__(self, name: str, structures: tuple[Structure, ...] | list[Structure]) -> None:
        self._name = name
        ordered = tuple(sorted(structures, key=lambda s: s.index))
        self._by_index = {s.index: s for s in ordered}
        self._by_name = {s.name: s for s in ordered}
        if len(self._by_index) != len(ordered) or len(self._by_name) != len(ordered):
            raise ValueError(f"Label table '{name}' has duplicate indices or names.")
        if ordered and ordered[0].index < 1:
            raise ValueError(
                f"Label table '{name}': indices must be >= 1, received {ordered[0].index}."
            )
        self._structures = ordered

    @property
    def name(self) -> str:
        """str: name of the table."""
        return self._name

    @property
    def structures(self) -> tuple[Structure, ...]:
        """tuple of Structure: the structures in ascending index order."""
        return self._structures

    @property
    def max_index(self) -> int:
        """int: the largest label index (0 for an empty table)."""
        return self._structures[-1].index if self._structures else 0

    def __len__(self) -> int:
        return len(self._structures)

    def __iter__(self) -> Iterator[Structure]:
        return iter(self._structures)

    def __contains__(self, index: object) -> bool:
        return index in self._by_index

    def __repr__(self) -> str:
        return f"LabelTable({self._name!r}, {len(self)} structures)"

    def by_index(self, index: int) -> Structure:
        """Return the structure with label value ``index`` (KeyError if absent)."""
        return self._by_index[index]

    def by_name(self, name: str) -> Structure:
        """Return the structure named ``name``, matched as :func:`normalize_label_name` does.

        Raises
        ------
        KeyError
            If no structure has that name.
        """
        key = normalize_label_name(name)
        for structure in self._structures:
            if normalize_label_name(structure.name) == key:
                return structure
        raise KeyError(name)


# index, name, SCT type code, code meaning, laterality, RGB (mrsegmentator_codes.md)
_MRSEGMENTATOR_ROWS: tuple[tuple[int, str, str, str, str | None, tuple[int, int, int]], ...] = (
    (1, "spleen", "78961009", "Spleen", None, (50, 170, 60)),
    (2, "right_kidney", "64033007", "Kidney", "right", (34, 102, 136)),
    (3, "left_kidney", "64033007", "Kidney", "left", (46, 138, 184)),
    (4, "gallbladder", "28231008", "Gallbladder", None, (54, 216, 119)),
    (5, "liver", "10200004", "Liver", None, (40, 140, 40)),
    (6, "stomach", "69695003", "Stomach", None, (180, 70, 160)),
    (7, "pancreas", "15776009", "Pancreas", None, (60, 150, 80)),
    (8, "right_adrenal_gland", "23451007", "Adrenal gland", "right", (178, 128, 26)),
    (9, "left_adrenal_gland", "23451007", "Adrenal gland", "left", (241, 172, 34)),
    (10, "left_lung", "39607008", "Lung", "left", (71, 232, 244)),
    (11, "right_lung", "39607008", "Lung", "right", (26, 144, 153)),
    (12, "heart", "80891009", "Heart", None, (180, 0, 40)),
    (13, "aorta", "15825003", "Aorta", None, (216, 108, 54)),
    (14, "inferior_vena_cava", "64131007", "Inferior vena cava", None, (0, 70, 200)),
    (15, "portal_vein_and_splenic_vein", "110765007", "Portal vein and splenic vein", None,
     (0, 90, 220)),
    (16, "left_iliac_artery", "73634005", "Common iliac artery", "left", (218, 0, 0)),
    (17, "right_iliac_artery", "73634005", "Common iliac artery", "right", (162, 0, 0)),
    (18, "left_iliac_vena", "46027005", "Common iliac vein", "left", (0, 92, 230)),
    (19, "right_iliac_vena", "46027005", "Common iliac vein", "right", (0, 68, 170)),
    (20, "esophagus", "32849002", "Esophagus", None, (190, 90, 170)),
    (21, "small_bowel", "30315005", "Small intestine", None, (160, 60, 180)),
    (22, "duodenum", "38848004", "Duodenum", None, (170, 80, 190)),
    (23, "colon", "71854001", "Colon", None, (150, 40, 170)),
    (24, "urinary_bladder", "89837001", "Urinary bladder", None, (54, 94, 216)),
    (25, "spine", "421060004", "Spine", None, (245, 220, 185)),
    (26, "sacrum", "54735007", "Sacrum", None, (100, 216, 54)),
    (27, "left_hip", "29836001", "Hip", "left", (230, 248, 62)),
    (28, "right_hip", "29836001", "Hip", "right", (184, 46, 184)),
    (29, "left_femur", "71341001", "Femur", "left", (248, 212, 62)),
    (30, "right_femur", "71341001", "Femur", "right", (46, 184, 60)),
    (31, "left_autochthonous_muscle", "244849004", "Deep muscle of back", "left",
     (241, 126, 57)),
    (32, "right_autochthonous_muscle", "244849004", "Deep muscle of back", "right",
     (178, 94, 42)),
    (33, "left_iliopsoas_muscle", "68455001", "Iliopsoas muscle", "left", (230, 115, 46)),
    (34, "right_iliopsoas_muscle", "68455001", "Iliopsoas muscle", "right", (170, 85, 34)),
    (35, "left_gluteus_maximus", "206007", "Gluteus maximus muscle", "left", (253, 115, 34)),
    (36, "right_gluteus_maximus", "206007", "Gluteus maximus muscle", "right", (187, 85, 26)),
    (37, "left_gluteus_medius", "78333006", "Gluteus medius muscle", "left", (255, 126, 46)),
    (38, "right_gluteus_medius", "78333006", "Gluteus medius muscle", "right", (196, 94, 34)),
    (39, "left_gluteus_minimus", "75297007", "Gluteus minimus muscle", "left", (255, 138, 57)),
    (40, "right_gluteus_minimus", "75297007", "Gluteus minimus muscle", "right",
     (204, 102, 42)),
)

# Alternative spellings seen in other datasets -> the built-in name.
_ALIASES: tuple[tuple[str, str], ...] = (
    ("gall_bladder", "gallbladder"),
    ("bladder", "urinary_bladder"),
    ("small_intestine", "small_bowel"),
    ("oesophagus", "esophagus"),
    ("ivc", "inferior_vena_cava"),
    ("portal_and_splenic_vein", "portal_vein_and_splenic_vein"),
    ("left_iliac_vein", "left_iliac_vena"),
    ("right_iliac_vein", "right_iliac_vena"),
    ("left_common_iliac_artery", "left_iliac_artery"),
    ("right_common_iliac_artery", "right_iliac_artery"),
    ("left_common_iliac_vein", "left_iliac_vena"),
    ("right_common_iliac_vein", "right_iliac_vena"),
    ("vertebrae", "spine"),
    ("left_adrenal", "left_adrenal_gland"),
    ("right_adrenal", "right_adrenal_gland"),
    ("left_iliopsoas", "left_iliopsoas_muscle"),
    ("right_iliopsoas", "right_iliopsoas_muscle"),
)

# Colours for structures no table knows (distinct from the MRSegmentator ones).
_FALLBACK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
    (255, 250, 220), (230, 220, 70), (200, 200, 235), (250, 250, 210), (244, 214, 49),
)


def _table_from_rows(name: str, rows: tuple) -> LabelTable:
    structures = [
        Structure(index=i, name=n, type_code=Code(v, "SCT", m), laterality=lat, rgb=rgb)
        for i, n, v, m, lat, rgb in rows
    ]
    return LabelTable(name, structures)


MRSEGMENTATOR = _table_from_rows("mrsegmentator", _MRSEGMENTATOR_ROWS)
BUILTIN_TABLES: tuple[LabelTable, ...] = (MRSEGMENTATOR,)


def normalize_label_name(name: str) -> str:
    """Return a key under which spellings of one label name compare equal.

    Lower case, any run of non-alphanumeric characters is a word break, and
    the words are sorted, so ``"Right Kidney"``, ``"kidney_right"`` and
    ``"right-kidney"`` all give ``"kidney right"``.

    Parameters
    ----------
    name : str
        A label name as written in a ``dataset.json``.

    Returns
    -------
    str
        The normalized key.
    """
    words = [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]
    return " ".join(sorted(words))


def _builtin_index() -> dict[str, Structure]:
    known: dict[str, Structure] = {}
    for table in BUILTIN_TABLES:
        for structure in table:
            known.setdefault(normalize_label_name(structure.name), structure)
    for alias, target in _ALIASES:
        key = normalize_label_name(target)
        if key in known:
            known.setdefault(normalize_label_name(alias), known[key])
    return known


_KNOWN = _builtin_index()


def table_from_dataset_json(labels: Mapping[str, object], *, name: str = "model") -> LabelTable:
    """Build the label table of a model from its ``dataset.json`` ``labels``.

    Parameters
    ----------
    labels : mapping of str to int
        ``dataset.json["labels"]``: label name -> label value. ``background``
        (value 0) and nnU-Net's ``ignore`` label are skipped.
    name : str, optional
        Name given to the table (the model pack's name).

    Returns
    -------
    LabelTable
        One structure per label; indices from ``labels``, codes and colours
        from the built-in tables, generic "Anatomical Structure" coding (with
        a logged warning) for names that no table knows.

    Raises
    ------
    ModelError
        If a label value is not an integer (nnU-Net region-based labels are
        not supported) or the table is inconsistent.
    """
    structures: list[Structure] = []
    used_colours = {s.rgb for t in BUILTIN_TABLES for s in t}
    for label_name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelError(
                f"Label '{label_name}' in dataset.json must have an integer value, received "
                f"{value!r} (region-based nnU-Net models are not supported)."
            )
        if value == 0 or label_name.lower() == "ignore":
            continue
        structures.append(_structure_for(label_name, value, used_colours))
    try:
        return LabelTable(name, structures)
    except ValueError as exc:
        raise ModelError(f"dataset.json labels of '{name}' are inconsistent: {exc}") from exc


def _structure_for(
    label_name: str, value: int, used_colours: set[tuple[int, int, int]]
) -> Structure:
    known = _KNOWN.get(normalize_label_name(label_name))
    if known is not None:
        return Structure(
            index=value, name=known.name, type_code=known.type_code,
            laterality=known.laterality, rgb=known.rgb, category=known.category,
        )
    logger.warning(
        "Label '%s' (value %d) matches no built-in label table; coded as generic "
        "SCT 91723000 'Anatomical Structure'.", label_name, value,
    )
    rgb = next((c for c in _FALLBACK_COLOURS if c not in used_colours), None)
    if rgb is None:
        rgb = ((value * 67) % 256, (value * 131) % 256, (value * 197) % 256)
    used_colours.add(rgb)
    words = re.split(r"[^0-9A-Za-z]+", label_name.strip())
    return Structure(
        index=value, name="_".join(w.lower() for w in words if w) or f"label_{value}",
        type_code=ANATOMICAL_STRUCTURE, laterality=_laterality_of(label_name), rgb=rgb,
        known=False,
    )


def _laterality_of(label_name: str) -> Laterality | None:
    words = set(normalize_label_name(label_name).split())
    if "left" in words and "right" not in words:
        return "left"
    if "right" in words and "left" not in words:
        return "right"
    return None
