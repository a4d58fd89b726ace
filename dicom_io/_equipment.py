"""segnode's equipment identity, written into every object it creates."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from pydicom.dataset import Dataset

__all__ = [
    "MANUFACTURER",
    "MODEL_NAME",
    "SOFTWARE_VERSION",
    "DEVICE_SERIAL_NUMBER",
    "source_character_set",
    "no_phi_warnings",
]

MANUFACTURER = "segnode"
MODEL_NAME = "segnode"
DEVICE_SERIAL_NUMBER = "0"


def _software_version() -> str:
    try:
        return version("segnode")
    except PackageNotFoundError:
        return "0+unknown"


SOFTWARE_VERSION = _software_version()


def source_character_set(source: Dataset) -> str | list[str] | None:
    """SpecificCharacterSet to copy from a source image, None for the default.

    Some scanners write an empty SpecificCharacterSet, which highdicom
    rejects; empty components of the default repertoire are dropped.

    Parameters
    ----------
    source : pydicom.Dataset
        A source image header.

    Returns
    -------
    str, list of str or None
        The value to pass as ``specific_character_set``; None means the
        default repertoire (the attribute is omitted).
    """
    value = source.get("SpecificCharacterSet")
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if all(not v for v in values):
        return None
    return values[0] if len(values) == 1 else values


@contextlib.contextmanager
def no_phi_warnings() -> Iterator[None]:
    """Silence highdicom's person-name warnings, whose text quotes the name.

    highdicom warns "The string "<PatientName>" is unlikely to represent the
    intended person name" for single-component names copied from the source;
    that would put a patient name into the logs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The string .* person name")
        yield
