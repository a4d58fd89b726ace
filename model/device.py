"""Device selection: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (``gpu``/``gpu:N`` aliases).

The GPU is an edge of the system: :func:`resolve_device` asks an injected
probe (by default ``torch.cuda``) whether CUDA is usable, so tests can fake a
GPU without patching torch.
"""

from __future__ import annotations

import logging
import re
from typing import Protocol

import torch

from segnode_errors import ConfigError

__all__ = [
    "CudaProbe", "cpu_has_native_bf16", "parse_device", "resolve_device", "resolve_precision",
    "worker_devices",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|gpu)(?::(\d+))?$")


class CudaProbe(Protocol):
    """What :func:`resolve_device` needs to know about CUDA (``torch.cuda`` fits)."""

    def is_available(self) -> bool:  # pragma: no cover - protocol
        ...

    def device_count(self) -> int:  # pragma: no cover - protocol
        ...


def parse_device(spec: str) -> tuple[str, int | None]:
    """Validate a device string.

    Parameters
    ----------
    spec : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"gpu"`` or ``"gpu:N"``
        (case-insensitive, surrounding blanks ignored).

    Returns
    -------
    tuple of (str, int or None)
        Kind (``"auto"``, ``"cpu"`` or ``"cuda"``) and the CUDA index, if any.

    Raises
    ------
    ConfigError
        If ``spec`` is not one of the accepted forms.
    """
    match = _DEVICE_RE.match(str(spec).strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) in ("auto", "cpu")):
        raise ConfigError(
            f"Invalid 'device' value '{spec}' - expected auto, cpu, cuda or cuda:N "
            "(gpu and gpu:N are accepted as aliases)."
        )
    kind = "cuda" if match.group(1) == "gpu" else match.group(1)
    index = int(match.group(2)) if match.group(2) is not None else None
    return kind, index


def resolve_device(spec: str = "auto", *, cuda: CudaProbe | None = None) -> torch.device:
    """Turn a device string into the ``torch.device`` to run on, and log the choice.

    Parameters
    ----------
    spec : str, optional
        See :func:`parse_device`. ``auto`` picks ``cuda:0`` when CUDA is
        available, otherwise the CPU.
    cuda : CudaProbe, optional
        Source of truth about CUDA; ``torch.cuda`` when omitted.

    Returns
    -------
    torch.device
        ``cpu`` or ``cuda:N``.

    Raises
    ------
    ConfigError
        If ``spec`` is invalid, or CUDA is requested but not available, or
        the index is out of range.
    """
    kind, index = parse_device(spec)
    probe = torch.cuda if cuda is None else cuda
    available = bool(probe.is_available())
    if kind == "auto":
        device = torch.device("cuda", 0) if available else torch.device("cpu")
        logger.info("Device 'auto' resolved to %s (CUDA %s).", device,
                    "available" if available else "not available")
        return device
    if kind == "cpu":
        logger.info("Device: cpu.")
        return torch.device("cpu")
    if not available:
        raise ConfigError(f"Invalid 'device' value '{spec}' - CUDA is not available here.")
    count = int(probe.device_count())
    index = 0 if index is None else index
    if index >= count:
        raise ConfigError(
            f"Invalid 'device' value '{spec}' - only {count} CUDA device(s) are visible."
        )
    logger.info("Device: cuda:%d.", index)
    return torch.device("cuda", index)


def worker_devices(specs: str | tuple[str, ...], *,
                   cuda: CudaProbe | None = None) -> tuple[str, ...]:
    """The device of each of a node's workers: one worker per entry, ``auto`` one per GPU.

    Parameters
    ----------
    specs : str or tuple of str
        One device string (see :func:`parse_device`) or several. ``auto``
        alone is one worker per visible CUDA device (``cuda:0``, ``cuda:1``,
        ...), or one CPU worker when there is none; any other string is one
        worker on that device. A tuple is one worker per entry (``cpu`` twice
        is two CPU workers).
    cuda : CudaProbe, optional
        Source of truth about CUDA; ``torch.cuda`` when omitted.

    Returns
    -------
    tuple of str
        Resolved device strings (``cpu``, ``cuda:N``), one per worker.

    Raises
    ------
    ConfigError
        As :func:`resolve_device`, for any entry.
    """
    entries = (specs,) if isinstance(specs, str) else tuple(specs)
    if entries == ("auto",):
        probe = torch.cuda if cuda is None else cuda
        count = int(probe.device_count()) if probe.is_available() else 0
        if count:
            logger.info("Device 'auto': one worker on each of %d CUDA device(s).", count)
            return tuple(f"cuda:{index}" for index in range(count))
    return tuple(str(resolve_device(entry, cuda=cuda)) for entry in entries)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True if the CPU computes bf16 dot products natively (AVX512-BF16 or AMX-BF16).

    Without them oneDNN emulates bf16 and the network gets slower, not faster.
    """
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(spec: str, device: torch.device, *, cuda: CudaProbe | None = None,
                      cpuinfo: str = "/proc/cpuinfo") -> str:
    """The autocast precision of the network's forward pass: ``fp32``, ``bf16`` or ``fp16``.

    Parameters
    ----------
    spec : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16``. ``auto`` is bf16 on a GPU
        that supports it (else fp16, as nnU-Net autocasts), bf16 on a CPU
        with native bf16 (:func:`cpu_has_native_bf16`), else fp32.
    device : torch.device
        Where the network runs.
    cuda : CudaProbe, optional
        Asked ``is_bf16_supported()`` when it has it; ``torch.cuda`` when omitted.
    cpuinfo : str, optional
        The CPU flags file (Linux).

    Raises
    ------
    ConfigError
        If ``spec`` is not one of the four, or fp16 is asked for on the CPU.
    """
    value = str(spec).strip().lower()
    if value not in _PRECISIONS:
        raise ConfigError(f"Invalid 'precision' value '{spec}' - expected one of "
                          f"{', '.join(_PRECISIONS)}.")
    if value == "fp16" and device.type == "cpu":
        raise ConfigError("Invalid 'precision' value 'fp16' - the CPU path runs fp32 or bf16.")
    if value != "auto":
        return value
    if device.type == "cuda":
        probe = torch.cuda if cuda is None else cuda
        supported = getattr(probe, "is_bf16_supported", None)
        return "bf16" if supported is not None and supported() else "fp16"
    return "bf16" if cpu_has_native_bf16(cpuinfo) else "fp32"
