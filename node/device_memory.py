"""What the device the networks run on holds: CUDA memory, or the process's resident set."""

from __future__ import annotations

import os

__all__ = ["DeviceMemory", "device_memory"]


class DeviceMemory(dict):
    """``{"device": ..., "used_bytes": ..., "total_bytes": ...}`` (total 0 when unknown)."""

    def describe(self) -> str:
        """One line for ``segnode status``: ``cuda:0 3.1 of 24.0 GiB`` or ``cpu 2.4 GiB RSS``."""
        used = self["used_bytes"] / 2**30
        if self["device"].startswith("cuda"):
            return f"{self['device']} {used:.1f} of {self['total_bytes'] / 2**30:.1f} GiB"
        return f"{self['device']} {used:.1f} GiB resident (process)"


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0


def device_memory(device_type: str, index: int = 0) -> DeviceMemory | None:
    """Memory of ``device_type`` (``cuda`` or ``cpu``); None before a model is loaded.

    On CUDA ``used_bytes`` is what torch holds (reserved by its caching
    allocator, which is what other processes cannot use) and ``total_bytes``
    the card's memory; on the CPU the resident set of this process.
    """
    if device_type == "cuda":
        import torch

        _free, total = torch.cuda.mem_get_info(index)
        return DeviceMemory(device=f"cuda:{index}", used_bytes=torch.cuda.memory_reserved(index),
                            total_bytes=total)
    if device_type == "cpu":
        return DeviceMemory(device="cpu", used_bytes=_resident_bytes(), total_bytes=0)
    return None
