"""segnode's equipment identity, written into every object it creates."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["MANUFACTURER", "MODEL_NAME", "SOFTWARE_VERSION", "DEVICE_SERIAL_NUMBER"]

MANUFACTURER = "segnode"
MODEL_NAME = "segnode"
DEVICE_SERIAL_NUMBER = "0"


def _software_version() -> str:
    try:
        return version("segnode")
    except PackageNotFoundError:
        return "0+unknown"


SOFTWARE_VERSION = _software_version()
