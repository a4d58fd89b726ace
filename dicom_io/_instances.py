"""Read the instances of one series and screen out what is not a grey image (private)."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from segnode_errors import InputRejected, NotSegmented

__all__ = ["convert_header", "read_instance", "strip_pixels"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: SOP class UID prefixes of objects that are never image volumes for us.
_NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.66": "segmentation / raw data / registration",
    "1.2.840.10008.5.1.4.1.1.88": "structured report or key object selection",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.481": "radiotherapy object",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9": "waveform",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = ("MONOCHROME1", "MONOCHROME2")


def read_instance(path: Path) -> Dataset:
    """Read one instance (pixel data deferred) and check it is a grey image.

    Parameters
    ----------
    path : pathlib.Path
        A DICOM file.

    Returns
    -------
    pydicom.Dataset
        The instance; its pixel data is read from disk when first accessed.

    Raises
    ------
    InputRejected
        Unreadable file, a non-image SOP class (SEG, SR, PR, KO, RT, ...), an
        instance without pixel data, or a colour image (RGB, YBR, palette).
    """
    try:
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except RecursionError as exc:
        raise InputRejected(f"{path.name}: not a readable DICOM file (sequences nested too "
                            "deeply)") from exc
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the file is bad
        raise InputRejected(f"{path.name}: not a readable DICOM file ({exc})") from exc
    convert_header(ds, path.name)
    sop_class = str(ds.get("SOPClassUID", ""))
    for prefix, what in _NON_IMAGE_PREFIXES.items():
        if sop_class == prefix or sop_class.startswith(prefix + "."):
            name = getattr(ds.SOPClassUID, "name", sop_class)
            raise NotSegmented(f"{path.name}: SOP class {name} ({sop_class}) is a {what}, "
                                "not an image volume")
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise InputRejected(f"{path.name}: SOP class {sop_class} has no pixel data")
    if "Rows" not in ds or "Columns" not in ds:
        raise InputRejected(f"{path.name}: Rows or Columns is missing")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        samples = int(ds.get("SamplesPerPixel", 1))
    except (TypeError, ValueError) as exc:
        raise InputRejected(f"{path.name}: SamplesPerPixel {ds.SamplesPerPixel!r} is not a "
                            "number") from exc
    if photometric not in _GREY or samples != 1:
        raise InputRejected(
            f"{path.name}: colour image (PhotometricInterpretation {photometric}, "
            f"SamplesPerPixel {samples}); only greyscale MONOCHROME1/2 images are volumes"
        )
    return ds


def convert_header(ds: Dataset, where: str) -> None:
    """Decode every header element now (pixel data stays deferred), naming a broken one.

    pydicom converts raw elements when first accessed; without this a value
    that cannot be decoded (wrong length for its VR, an unknown VR) would
    raise later, anywhere the header is read.
    """
    pending = [ds, getattr(ds, "file_meta", Dataset())]
    while pending:
        current = pending.pop()
        for tag in list(current.keys()):
            if tag.group == 0x7FE0:
                continue
            try:
                element = current[tag]
            except Exception as exc:  # noqa: BLE001 - any decoding failure names the element
                raise InputRejected(f"{where}: element {tag} cannot be decoded ({exc})"
                                    ) from exc
            if element.VR == "SQ":
                pending.extend(element.value)


def strip_pixels(ds: Dataset) -> Dataset:
    """Remove pixel data elements from ``ds`` in place and return it."""
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    return ds
