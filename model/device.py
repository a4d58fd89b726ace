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

__all__ = ["CudaProbe", "parse_device", "resolve_device"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

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
