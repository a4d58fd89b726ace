"""SNOMED CT identifiers: the format and Verhoeff check digit of an SCTID.

An SCTID is 6 to 18 digits without a leading zero; the last digit is a
Verhoeff check digit over the others, and the two digits before it are the
partition identifier (``00`` or ``10`` for a concept: short or long format).
SNOMED International, "SNOMED CT Technical Implementation Guide", section
"SCTID Data Type" and "Check-digit" (Verhoeff's dihedral-group algorithm).
"""

from __future__ import annotations

__all__ = ["is_valid_sctid", "check_concept_id"]

_MULTIPLY = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6), (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8), (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2), (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4), (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_PERMUTE = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2), (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0), (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5), (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_CONCEPT_PARTITIONS = ("00", "10")


def _verhoeff_ok(digits: str) -> bool:
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _MULTIPLY[check][_PERMUTE[position % 8][int(digit)]]
    return check == 0


def is_valid_sctid(value: str) -> bool:
    """True when ``value`` is a well-formed SNOMED CT concept identifier."""
    return (value.isascii() and value.isdigit() and 6 <= len(value) <= 18
            and not value.startswith("0") and value[-3:-1] in _CONCEPT_PARTITIONS
            and _verhoeff_ok(value))


def check_concept_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid SCTID, else raise ValueError naming ``what``."""
    if not is_valid_sctid(value):
        raise ValueError(f"{what}: {value!r} is not a valid SNOMED CT concept identifier "
                         "(6-18 digits, concept partition, Verhoeff check digit)")
    return value
