"""Progress reporting: a live bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["Progress"]

logger = logging.getLogger(__name__)


class Progress:
    """Reports which series of how many is at which stage.

    On a terminal a tqdm bar counts series and shows the current stage; when
    the output is not a terminal (a log file, CI) each stage is one log line.

    Parameters
    ----------
    total
        Number of series (or volumes) the run will process.
    stream
        Where a live bar would be drawn; decides terminal versus plain.
    live
        ``False`` forces plain log lines (the node's worker), whatever the stream.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, live: bool = True) -> None:
        self.total = total
        self._stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._index = 0
        self._key = ""
        if live and self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="series", file=self._stream, leave=True)

    def start(self, key: str) -> None:
        """Mark the start of the next series, identified by ``key`` (a UID)."""
        self._index += 1
        self._key = key
        self.stage("read")

    def stage(self, name: str) -> None:
        """Report that the current series entered stage ``name``."""
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self._index}/{self.total} {name}")
        else:
            logger.info("series %d/%d %s: %s", self._index, self.total, self._key, name)

    def finish(self, status: str) -> None:
        """Mark the current series as finished with ``status``."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"{self._index}/{self.total} {status}")
        else:
            logger.info("series %d/%d %s: %s", self._index, self.total, self._key, status)

    def close(self) -> None:
        """Close the bar, if any."""
        if self._bar is not None:
            self._bar.close()
