"""Log output of the node: plain text or one JSON event per line.

Either way no patient data: segnode's own messages carry UIDs, AE titles,
job and association ids only (tested). JSON events have ``time`` (ISO 8601,
UTC), ``level``, ``logger``, ``thread``, ``message`` and, where the call
passes them as ``extra``, ``job_id`` and ``association_id``.

Control characters in a message (ESC, CR, LF, NUL, C1 codes, ...) are
written as escapes (``\\x1b``, ``\\r``, ``\\n``), so a value sent by a
peer can neither colour a terminal nor forge a log line: one record is one
line. A text traceback keeps its lines, each continuation indented.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

__all__ = ["JsonFormatter", "TextFormatter", "escape_controls", "apply_logging"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_EXTRA_FIELDS = ("job_id", "association_id")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                else f"\\u{ord(char):04x}")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    return _CONTROLS.sub(_escape, text)


class TextFormatter(logging.Formatter):
    """The text format, one line per record (continuation lines of a traceback indented)."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802 - logging's name
        lines = super().formatException(ei).splitlines()  # type: ignore[arg-type]
        return "\n".join("    " + escape_controls(line) for line in lines)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return "\n".join("    " + escape_controls(line) for line in stack_info.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": escape_controls(record.getMessage()),
        }
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                event[name] = getattr(record, name)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def apply_logging(fmt: str, level: str) -> None:
    """Switch the root handlers to ``fmt`` (``text`` or ``json``) at ``level``."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    for handler in root.handlers:
        handler.setFormatter(formatter)
