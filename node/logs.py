"""Log output of the node: plain text or one JSON event per line.

Either way no patient data: segnode's own messages carry UIDs, AE titles,
job and association ids only (tested). JSON events have ``time`` (ISO 8601,
UTC), ``level``, ``logger``, ``thread``, ``message`` and, where the call
passes them as ``extra``, ``job_id`` and ``association_id``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

__all__ = ["JsonFormatter", "apply_logging"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_EXTRA_FIELDS = ("job_id", "association_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
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
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(formatter)
