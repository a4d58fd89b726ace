"""The exception hierarchy shared by segnode's packages.

A dependency-free leaf: ``dicom_io``, ``model`` and ``node`` all import it, it
imports nothing of theirs. Messages name the argument or file, what was
expected and what was received.
"""

__all__ = [
    "SegnodeError",
    "ConfigError",
    "InputRejected",
    "NotSegmented",
    "ModelError",
    "ExportError",
]


class SegnodeError(Exception):
    """Base of every error segnode raises on purpose."""


class ConfigError(SegnodeError):
    """Raised when configuration or command-line options are invalid."""


class InputRejected(SegnodeError):
    """Raised when input data (a file, a series, a volume) cannot be processed.

    The message says which file or series and why, precisely enough for a
    PACS administrator to act on it.
    """


class NotSegmented(InputRejected):
    """Raised for valid input that is never segmented by design.

    Localizers, segmentations, reports, presentation states and other
    non-image objects: they are skipped with their reason, and are not a
    failure of the run.
    """


class ModelError(SegnodeError):
    """Raised when a model pack cannot be found, installed, verified or run."""


class ExportError(SegnodeError):
    """Raised when a result (SEG, SR, NIfTI, table) cannot be written."""
