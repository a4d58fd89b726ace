"""SNOMED CT identifiers: the Verhoeff check, and every code of every built-in label table."""

from __future__ import annotations

import pytest

from model.labels import ANATOMICAL_STRUCTURE, BUILTIN_TABLES, LEFT, RIGHT
from model.sctid import check_concept_id, is_valid_sctid

#: Concept ids whose validity is known independently (SNOMED CT browser).
KNOWN = ("91723000", "7771000", "24028007", "64033007", "78961009", "28231008", "10200004",
         "113091000", "77477000", "118565006")


@pytest.mark.parametrize("sctid", KNOWN)
def test_known_concept_ids_are_valid(sctid: str) -> None:
    assert is_valid_sctid(sctid)


@pytest.mark.parametrize("sctid", KNOWN)
def test_every_single_digit_error_is_detected(sctid: str) -> None:
    for position in range(len(sctid)):
        for digit in "0123456789":
            if digit == sctid[position]:
                continue
            typo = sctid[:position] + digit + sctid[position + 1:]
            if typo[-3:-1] in ("00", "10") and not typo.startswith("0"):
                assert not is_valid_sctid(typo), typo


@pytest.mark.parametrize("sctid", KNOWN)
def test_adjacent_transpositions_are_detected(sctid: str) -> None:
    for position in range(len(sctid) - 1):
        a, b = sctid[position], sctid[position + 1]
        if a != b:
            swapped = sctid[:position] + b + a + sctid[position + 2:]
            assert not is_valid_sctid(swapped), swapped


@pytest.mark.parametrize("value", ["", "12345", "0917230", "9172300a", "917230000000000000000",
                                   "91723011", "١٢٣٤٥٦٧٨"])
def test_malformed_ids_are_refused(value: str) -> None:
    assert not is_valid_sctid(value)


def test_check_concept_id_names_what_is_wrong() -> None:
    assert check_concept_id("64033007", "kidney") == "64033007"
    with pytest.raises(ValueError, match=r"labels.yaml liver: '64033008' is not a valid SNOMED"):
        check_concept_id("64033008", "labels.yaml liver")


@pytest.mark.parametrize("table", BUILTIN_TABLES, ids=lambda t: t.name)
def test_every_code_of_every_built_in_table_is_a_valid_sctid(table) -> None:
    for structure in table.structures:
        for code in (structure.type_code, structure.category, structure.laterality_code):
            if code is not None:
                assert code.scheme == "SCT", (structure.name, code)
                assert is_valid_sctid(code.value), (structure.name, code)
    for modifier in (LEFT, RIGHT, ANATOMICAL_STRUCTURE):
        assert is_valid_sctid(modifier.value)


@pytest.mark.parametrize("table", BUILTIN_TABLES, ids=lambda t: t.name)
def test_left_right_pairs_share_the_type_code(table) -> None:
    lateral = [s for s in table.structures if s.laterality is not None]
    assert lateral
    for structure in lateral:
        other = "right" if structure.laterality == "left" else "left"
        twin = table.by_name(structure.name.replace(structure.laterality, other))
        assert twin.laterality == other
        assert twin.type_code == structure.type_code, structure.name
        assert structure.laterality not in structure.type_code.meaning.lower()


@pytest.mark.parametrize("table", BUILTIN_TABLES, ids=lambda t: t.name)
def test_no_two_structures_share_a_colour(table) -> None:
    colours = [s.rgb for s in table.structures]
    assert len(set(colours)) == len(colours)
