"""Progress reporting: a live bar on a terminal, plain log lines otherwise; stage timings."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

__all__ = ["Progress"]

logger = logging.getLogger(__name__)


class Progress:
    """Reports which series of how many is at which stage.

    On a terminal a tqdm bar counts series and shows the current stage; when
    the output is not a terminal (a log file, CI) each stage is one log line.
    The wall time of each stage of the current series is kept for
    :meth:`timings` (run reports, the node's job summary and metrics).

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
        self._timings: dict[str, float] = {}
        self._stage = ""
        self._since = time.perf_counter()
        if live and self._stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="series", file=self._stream, leave=True)

    def start(self, key: str, *, read_s: float = 0.0) -> None:
        """Mark the start of the next series, identified by ``key`` (a UID).

        ``read_s`` is the time its files took to read before it started (the
        series are read before the run knows how many volumes they hold); it
        opens the ``read`` stage.
        """
        self._index += 1
        self._key = key
        self._timings = {"read": read_s} if read_s else {}
        self._stage = ""
        self.stage("read")

    def stage(self, name: str) -> None:
        """Report that the current series entered stage ``name``."""
        self._close_stage()
        self._stage = name
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self._index}/{self.total} {name}")
        else:
            logger.info("series %d/%d %s: %s", self._index, self.total, self._key, name)

    def detail(self, name: str, seconds: float) -> None:
        """Add a measured part of a stage (``segment.network``) to the current series' timings."""
        self._timings[name] = self._timings.get(name, 0.0) + seconds

    def timings(self) -> dict[str, float]:
        """Seconds per stage of the current series so far (the running stage up to now)."""
        self._close_stage()
        return {name: round(seconds, 3) for name, seconds in self._timings.items()}

    def _close_stage(self) -> None:
        now = time.perf_counter()
        if self._stage:
            self._timings[self._stage] = self._timings.get(self._stage, 0.0) + now - self._since
        self._since = now

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
