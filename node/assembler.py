"""The assembler: decides when a series is complete and what to do with it.

A series is complete when no instance of it has arrived for
``timing.series_quiet_s`` (mercure's quiet-period trigger; a study may
arrive over several associations, so the end of an association means
nothing). The rules then decide: a job is queued, or the series is kept
unprocessed with the reason. Both happen in one transaction, so a crash
never leaves a completed series without its job.
"""

from __future__ import annotations

import logging

from node.catalogue import Catalogue
from node.config import NodeConfig
from node.jobqueue import SqlJobQueue
from node.rules import decide

__all__ = ["Assembler"]

logger = logging.getLogger(__name__)


class Assembler:
    """Turns quiet series into jobs.

    Parameters
    ----------
    config
        Rules and the quiet time.
    catalogue, queue
        Where series are found and jobs go (the same database).
    """

    def __init__(self, config: NodeConfig, catalogue: Catalogue, queue: SqlJobQueue) -> None:
        self.config = config
        self.catalogue = catalogue
        self.queue = queue

    def run_once(self) -> int:
        """Decide every series quiet for long enough; returns how many jobs were queued."""
        cutoff = self.catalogue.clock() - self.config.timing.series_quiet_s
        queued = 0
        for series in self.catalogue.quiet_series(cutoff):
            decision = decide(series, self.config.rules)
            with self.catalogue.begin() as db:
                if not self.catalogue.complete_series(db, series.series_uid, decision.reason,
                                                      received_before=cutoff):
                    continue
                if decision.rule is None:
                    logger.info("series %s complete (%d instances), not processed: %s",
                                series.series_uid, series.n_instances, decision.reason)
                    continue
                rule = decision.rule
                job_id = self.queue.enqueue(series.series_uid, rule=rule.name, model=rule.model,
                                            seg_type=rule.seg_type,
                                            destinations=rule.destinations, db=db)
                self.catalogue.set_series_job(db, series.series_uid, job_id)
            queued += 1
            logger.info("series %s complete (%d instances): job %d queued (%s)",
                        series.series_uid, series.n_instances, job_id, decision.reason)
        return queued
