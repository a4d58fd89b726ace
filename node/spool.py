"""The spool: received instances as durable files, and the quarantine beside it.

Every instance is written as the bytes received (file meta plus data set) to
a temporary file, fsynced, renamed into place and its folder fsynced, so the
file survives a crash the moment :meth:`Spool.store` returns. File and folder
names come from validated UIDs only (``<study>/<series>/<sop>.dcm``), never
from other tag values. Quarantined files get names from the time and a
counter, with the reason beside them in a ``.txt`` file.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segnode_errors import InputRejected

__all__ = ["Spool", "SeriesGuard", "Quarantine", "check_uid", "free_disk_mb", "durable_write"]

_LOCK_STRIPES = 64
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID string or raise :class:`InputRejected` naming ``keyword``."""
    text = str(value or "").strip().rstrip("\x00")
    if not text:
        raise InputRejected(f"{keyword} is missing.")
    if len(text) > 64 or not _UID.match(text):
        raise InputRejected(f"{keyword} {text[:70]!r} is not a valid UID.")
    return text


def free_disk_mb(path: Path) -> float:
    """Free space of the file system holding ``path``, in MiB."""
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free / 2**20


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``path`` atomically: temp file in ``tmp_dir``, fsync, rename, fsync.

    ``tmp_dir`` must be on the same file system as ``path``. Nothing is left
    behind when the write fails (``OSError`` propagates, e.g. ENOSPC).
    """
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class SeriesGuard:
    """Many writers of a series at once, or one purge of it, never both.

    Receivers hold :meth:`writing` from writing a file to cataloguing it, so
    parallel associations of one series never wait for each other; retention
    holds :meth:`purging`, which waits until no write is in flight.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._writers = 0
        self._purging = False

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Shared: one instance being stored."""
        with self._condition:
            self._condition.wait_for(lambda: not self._purging)
            self._writers += 1
        try:
            yield
        finally:
            with self._condition:
                self._writers -= 1
                self._condition.notify_all()

    @contextmanager
    def purging(self) -> Iterator[None]:
        """Exclusive: the series' files and rows being removed."""
        with self._condition:
            self._condition.wait_for(lambda: not self._purging and self._writers == 0)
            self._purging = True
        try:
            yield
        finally:
            with self._condition:
                self._purging = False
                self._condition.notify_all()


class Spool:
    """Received instances under ``root/<study>/<series>/<sop>.dcm``.

    Parameters
    ----------
    root
        The spool folder (created when missing); ``root/.tmp`` holds partial
        writes, which are removed at start.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._guards = [SeriesGuard() for _ in range(_LOCK_STRIPES)]
        for leftover in self.tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance with these (validated) UIDs lives."""
        return self.root / study_uid / series_uid / f"{sop_uid}.dcm"

    def store(self, data: bytes, study_uid: str, series_uid: str, sop_uid: str) -> tuple[Path, str]:
        """Write one instance durably; return its path and SHA-256 (hex).

        Raises
        ------
        InputRejected
            If a UID is not valid (nothing is written).
        OSError
            If the file system refuses the write (full, read-only, permission).
        """
        path = self.path_for(check_uid(study_uid, "StudyInstanceUID"),
                             check_uid(series_uid, "SeriesInstanceUID"),
                             check_uid(sop_uid, "SOPInstanceUID"))
        durable_write(path, data, self.tmp)
        return path, hashlib.sha256(data).hexdigest()

    def series_guard(self, series_uid: str) -> SeriesGuard:
        """The guard of a series: shared while storing its files, exclusive while purging."""
        return self._guards[zlib.crc32(series_uid.encode()) % len(self._guards)]

    def prune_empty(self, paths: list[Path]) -> None:
        """Remove the series and study folders of ``paths`` that are now empty."""
        for folder in sorted({p.parent for p in paths} | {p.parent.parent for p in paths},
                             key=lambda f: len(f.parts), reverse=True):
            if folder != self.root and self.root in folder.parents:
                try:
                    folder.rmdir()
                except OSError:
                    pass


class Quarantine:
    """Files that could not be taken in, kept with the reason for an administrator."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)

    def put(self, data: bytes, reason: str) -> Path:
        """Write ``data`` and ``reason`` durably; return the file's path."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{next(self._counter):06d}"
        path = self.root / time.strftime("%Y-%m-%d", time.gmtime()) / f"{name}.dcm"
        durable_write(path, data, self.tmp)
        durable_write(path.with_suffix(".txt"), (reason + "\n").encode(), self.tmp)
        return path
