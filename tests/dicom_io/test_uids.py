"""Derived UIDs are deterministic, valid and distinct."""

import pytest
from pydicom.uid import UID

from dicom_io.uids import derived_uid


def test_same_parts_same_uid():
    assert derived_uid("seg", "1.2.3", "1.0") == derived_uid("seg", "1.2.3", "1.0")


def test_different_parts_differ():
    uids = {
        derived_uid("seg", "1.2.3", "1.0"),
        derived_uid("seg", "1.2.3", "1.1"),
        derived_uid("sr", "1.2.3", "1.0"),
        derived_uid("seg", "1.2.", "31.0"),
        derived_uid("seg1.2.3", "1.0"),
    }
    assert len(uids) == 5


def test_valid_uid():
    uid = derived_uid("x")
    assert uid.startswith("2.25.") and len(uid) <= 64 and UID(uid).is_valid
    assert not uid[5:].startswith("0") or uid == "2.25.0"


@pytest.mark.parametrize("bad", [(), ("",), ("a", None)])
def test_bad_parts_rejected(bad):
    with pytest.raises(ValueError):
        derived_uid(*bad)
