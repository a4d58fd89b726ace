"""The transfer syntaxes whose pixel data :mod:`dicom_io.series` can decode here."""

from __future__ import annotations

from functools import cache

from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.uid import AllTransferSyntaxes as _ALL

__all__ = ["decodable_transfer_syntaxes", "NATIVE_TRANSFER_SYNTAXES"]

#: Uncompressed syntaxes, always readable; Explicit VR Little Endian first.
NATIVE_TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)


@cache
def decodable_transfer_syntaxes() -> tuple[UID, ...]:
    """Native syntaxes first, then every compressed one with an installed decoder.

    Asks pydicom's pixel decoders (pylibjpeg, pyjpegls, ...), so a syntax is
    offered to senders only when this installation can read its pixels.
    """
    compressed = []
    for uid in _ALL:
        if uid in NATIVE_TRANSFER_SYNTAXES or uid in PrivateTransferSyntaxes:
            continue
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        if decoder.is_available:
            compressed.append(UID(uid))
    return (*NATIVE_TRANSFER_SYNTAXES, *compressed)
