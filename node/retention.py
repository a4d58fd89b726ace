"""Retention: remove a series' files once everything about it was delivered.

A series is purged ``storage.retention_days`` after its newest job finished,
when that job is done and every delivery of it succeeded; a series the rules
did not process is purged that long after it was complete. Its spool files,
catalogue rows and job output folders go. Anything failed, pending or still
receiving is kept, however old.

The purge of one series holds that series' guard exclusively (receivers hold
it, shared, from writing a file to cataloguing it) and checks the conditions again in
its own transaction, so an instance arriving meanwhile is never deleted.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from node.catalogue import COMPLETE, Catalogue, instances, jobs, outbox, series
from node.config import NodeConfig
from node.spool import Spool

__all__ = ["Retention"]

logger = logging.getLogger(__name__)


class Retention:
    """Purges delivered (or unprocessed) series past the retention time."""

    def __init__(self, config: NodeConfig, catalogue: Catalogue, spool: Spool) -> None:
        self.config = config
        self.catalogue = catalogue
        self.spool = spool

    def _cutoff(self) -> float:
        return self.catalogue.clock() - self.config.storage.retention_days * 86400.0

    def _purgeable(self, db: Connection, series_uid: str, cutoff: float) -> bool:
        row = db.execute(sa.select(series.c.state, series.c.last_received_at, series.c.job_id)
                         .where(series.c.series_uid == series_uid)).first()
        if row is None or row.state != COMPLETE or row.last_received_at >= cutoff:
            return False
        newest = db.execute(sa.select(jobs.c.id, jobs.c.state, jobs.c.finished_at)
                            .where(jobs.c.id == row.job_id)).first() if row.job_id else None
        if newest is None:
            return True  # complete and never processed: nothing to deliver
        if newest.state != "done" or newest.finished_at is None or newest.finished_at >= cutoff:
            return False
        undelivered = db.execute(sa.select(sa.func.count()).select_from(outbox).where(
            outbox.c.job_id == newest.id, outbox.c.state != "done")).scalar_one()
        return undelivered == 0

    def expired(self) -> list[str]:
        """UIDs of every series due for purging now."""
        cutoff = self._cutoff()
        with self.catalogue.engine.connect() as db:
            candidates = [row.series_uid for row in db.execute(
                sa.select(series.c.series_uid).where(series.c.state == COMPLETE,
                                                     series.c.last_received_at < cutoff))]
            return [uid for uid in candidates if self._purgeable(db, uid, cutoff)]

    def run_once(self) -> int:
        """Purge every expired series; returns how many."""
        purged = 0
        for series_uid in self.expired():
            with self.spool.series_guard(series_uid).purging():
                purged += self._purge(series_uid)
        return purged

    def _purge(self, series_uid: str) -> bool:
        with self.catalogue.begin() as db:
            if not self._purgeable(db, series_uid, self._cutoff()):
                return False
            paths = [Path(row.path) for row in db.execute(
                sa.select(instances.c.path).where(instances.c.series_uid == series_uid))]
            folders = [row.output_dir for row in db.execute(
                sa.select(jobs.c.output_dir).where(jobs.c.series_uid == series_uid))]
            job_id = db.execute(sa.select(series.c.job_id).where(
                series.c.series_uid == series_uid)).scalar_one()
            shared = db.execute(sa.select(sa.func.count()).select_from(series).where(
                series.c.job_id == job_id, series.c.series_uid != series_uid)).scalar_one()
            if shared:  # a station job: its folder goes with the last of its series
                folders = []
            db.execute(instances.delete().where(instances.c.series_uid == series_uid))
            db.execute(series.delete().where(series.c.series_uid == series_uid))
        for path in paths:
            path.unlink(missing_ok=True)
        for folder in {Path(f) for f in folders if f}:
            shutil.rmtree(folder, ignore_errors=True)
        self.spool.prune_empty(paths)
        logger.info("series %s purged after retention (%d instances)", series_uid, len(paths))
        return True
