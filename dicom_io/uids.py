"""Deterministic UIDs for derived objects.

A rerun on the same input with the same model gives the same UIDs, so a
resend replaces the earlier object instead of duplicating it.
"""

from __future__ import annotations

import hashlib

__all__ = ["derived_uid"]


def derived_uid(*parts: str) -> str:
    """Return a UID under the ``2.25`` root derived from ``parts``.

    Parameters
    ----------
    *parts : str
        The inputs that identify the object, e.g. a purpose tag, the source
        SeriesInstanceUID and the model version. Order matters.

    Returns
    -------
    str
        ``"2.25.<decimal>"`` (the first 128 bits of a SHA-256 of the
        length-prefixed parts; at most 44 characters), the same for the same
        parts.

    Raises
    ------
    ValueError
        If no part is given or a part is not a non-empty string.
    """
    if not parts:
        raise ValueError("At least one part is required to derive a UID.")
    for part in parts:
        if not isinstance(part, str) or not part:
            raise ValueError(f"Each part must be a non-empty string, got {part!r}.")
    # Length-prefix the parts so that ("ab", "c") and ("a", "bc") differ.
    # (pydicom's generate_uid(prefix=None) ignores its entropy sources and
    # returns a random UUID-based UID, so hash here.)
    digest = hashlib.sha256("".join(f"{len(p)}:{p}" for p in parts).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"
