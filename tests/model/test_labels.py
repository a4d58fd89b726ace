"""Label tables: the MRSegmentator codes against the reference file, matching, fallbacks."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from model.labels import (
    ANATOMICAL_STRUCTURE,
    LEFT,
    MRSEGMENTATOR,
    RIGHT,
    LabelTable,
    Structure,
    normalize_label_name,
    table_from_dataset_json,
)
from segnode_errors import ModelError

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "mrsegmentator_codes.md"


def _reference_rows() -> list[tuple[int, str, str, str, str | None, tuple[int, int, int]]]:
    rows = []
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[0].isdigit():
            continue
        lat = None
        if cells[4].startswith("Left"):
            lat = "left"
        elif cells[4].startswith("Right"):
            lat = "right"
        rgb = tuple(int(v) for v in cells[5].split(","))
        rows.append((int(cells[0]), cells[1], cells[2], cells[3], lat, rgb))
    return rows


def test_mrsegmentator_table_has_40_structures() -> None:
    assert len(MRSEGMENTATOR) == 40
    assert [s.index for s in MRSEGMENTATOR] == list(range(1, 41))
    assert MRSEGMENTATOR.max_index == 40


@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared reference file not available")
def test_codes_equal_the_reference_file() -> None:
    rows = _reference_rows()
    assert len(rows) == 40
    for index, name, code, meaning, laterality, rgb in rows:
        s = MRSEGMENTATOR.by_index(index)
        assert (s.name, s.type_code.value, s.type_code.meaning) == (name, code, meaning)
        assert s.type_code.scheme == "SCT"
        assert s.laterality == laterality
        assert s.rgb == rgb
        assert s.category == ANATOMICAL_STRUCTURE


def test_category_and_laterality_modifiers() -> None:
    assert ANATOMICAL_STRUCTURE.value == "91723000"
    assert (LEFT.value, RIGHT.value) == ("7771000", "24028007")
    assert MRSEGMENTATOR.by_name("right_kidney").laterality_code == RIGHT
    assert MRSEGMENTATOR.by_name("left_kidney").laterality_code == LEFT
    assert MRSEGMENTATOR.by_name("liver").laterality_code is None
    for s in MRSEGMENTATOR:
        side = re.match(r"^(left|right)_", s.name)
        assert s.laterality == (side.group(1) if side else None), s.name


def test_colours_distinct_and_valid() -> None:
    colours = [s.rgb for s in MRSEGMENTATOR]
    assert len(set(colours)) == 40
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)


def test_mrsegmentators_wrong_codes_are_absent() -> None:
    assert MRSEGMENTATOR.by_name("gallbladder").type_code.value == "28231008"
    codes = {s.type_code.value for s in MRSEGMENTATOR}
    for wrong in ("28273000", "32764006", "244411005", "113262008", "91609006", "22356005",
                  "181310005", "72107004", "36005007", "46813001", "110568007"):
        assert wrong not in codes


def test_dataset_json_indices_come_from_the_model() -> None:
    table = table_from_dataset_json(
        {"background": 0, "liver": 7, "kidney_right": 2, "Left Kidney": 3, "ignore": 8}, name="m"
    )
    assert [s.index for s in table] == [2, 3, 7]
    assert table.by_index(2).name == "right_kidney"
    assert table.by_index(2).laterality == "right"
    assert table.by_index(3).name == "left_kidney"
    assert table.by_index(7).type_code.value == "10200004"
    assert all(s.known for s in table)


def test_aliases_and_case() -> None:
    assert normalize_label_name("Right Kidney") == normalize_label_name("kidney_right")
    table = table_from_dataset_json({"background": 0, "Gall_Bladder": 1, "IVC": 2,
                                     "portal_vein_and_splenic_vein": 3})
    assert table.by_index(1).type_code.value == "28231008"
    assert table.by_index(2).type_code.value == "64131007"
    assert table.by_index(3).type_code.value == "110765007"


def test_unknown_label_gets_generic_code_and_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="model.labels"):
        table = table_from_dataset_json({"background": 0, "liver": 1, "Left Mystery Organ": 2})
    s = table.by_index(2)
    assert s.type_code == ANATOMICAL_STRUCTURE
    assert s.known is False
    assert s.laterality == "left"
    assert s.name == "left_mystery_organ"
    assert s.rgb not in {x.rgb for x in MRSEGMENTATOR}
    assert any("Left Mystery Organ" in r.getMessage() for r in caplog.records)


def test_region_labels_rejected() -> None:
    with pytest.raises(ModelError, match="integer value"):
        table_from_dataset_json({"background": 0, "whole": [1, 2]})


def test_duplicate_indices_rejected() -> None:
    s = Structure(1, "a", ANATOMICAL_STRUCTURE, None, (1, 2, 3))
    with pytest.raises(ValueError, match="duplicate"):
        LabelTable("x", [s, s])
    with pytest.raises(ModelError, match="inconsistent"):
        table_from_dataset_json({"liver": 1, "Liver": 2})
