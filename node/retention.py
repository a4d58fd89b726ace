"""Retention: remove a series' files once everything about it was delivered.

A series is purged ``storage.retention_days`` after its newest job finished,
when that job is done and every delivery of it succeeded: its spool files,
its catalogue rows and the job's output folder go. Anything failed, pending
or still receiving is kept, however old.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import sqlalchemy as sa

from node.catalogue import COMPLETE, Catalogue, instances, jobs, outbox, series
from node.config import NodeConfig
from node.spool import Spool

__all__ = ["Retention"]

logger = logging.getLogger(__name__)


class Retention:
    """Purges delivered series past the retention time."""

    def __init__(self, config: NodeConfig, catalogue: Catalogue, spool: Spool) -> None:
        self.config = config
        self.catalogue = catalogue
        self.spool = spool

    def expired(self) -> list[tuple[str, str, list[str]]]:
        """(study UID, series UID, output folders) of every series due for purging."""
        cutoff = self.catalogue.clock() - self.config.storage.retention_days * 86400.0
        undelivered = sa.select(outbox.c.job_id).where(outbox.c.state != "done")
        query = (
            sa.select(series.c.study_uid, series.c.series_uid, jobs.c.output_dir)
            .select_from(series.join(jobs, jobs.c.series_uid == series.c.series_uid))
            .where(series.c.state == COMPLETE)
            .where(series.c.last_received_at < cutoff)
        )
        found: dict[tuple[str, str], list[str]] = {}
        blocked: set[str] = set()
        with self.catalogue.engine.connect() as db:
            for row in db.execute(query.add_columns(jobs.c.state, jobs.c.finished_at,
                                                    jobs.c.id.in_(undelivered).label("open"))):
                key = (row.study_uid, row.series_uid)
                if (row.state != "done" or row.open or row.finished_at is None
                        or row.finished_at >= cutoff):
                    blocked.add(row.series_uid)
                found.setdefault(key, []).append(row.output_dir)
        return [(study, uid, dirs) for (study, uid), dirs in found.items() if uid not in blocked]

    def run_once(self) -> int:
        """Purge every expired series; returns how many."""
        purged = 0
        for study_uid, series_uid, output_dirs in self.expired():
            self.spool.remove_series(study_uid, series_uid)
            for folder in output_dirs:
                if folder:
                    shutil.rmtree(Path(folder), ignore_errors=True)
            with self.catalogue.begin() as db:
                db.execute(instances.delete().where(instances.c.series_uid == series_uid))
                db.execute(series.delete().where(series.c.series_uid == series_uid))
            purged += 1
            logger.info("series %s purged after retention", series_uid)
        return purged
