"""The assembler: decides when a series is complete and what to do with it.

A series is complete when no instance of it has arrived for
``timing.series_quiet_s`` (mercure's quiet-period trigger; a study may
arrive over several associations, so the end of an association means
nothing). The rules then decide: the series is kept unprocessed with the
reason, or a job is queued for it, or (a rule with ``whole_study``) it waits
for its study. A study is complete when none of its series is receiving
and nothing of it arrived for ``timing.study_quiet_s``; one job then covers
every series of the study that rule took, those done before included, so
a station that arrives late reruns the whole acquisition. Decisions and
jobs are written in one transaction, so a crash never leaves a completed
series without its job.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

from node.catalogue import Catalogue
from node.config import NodeConfig, RuleConfig
from node.jobqueue import PRIORITIES, SqlJobQueue
from node.metrics import NodeMetrics
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
    metrics
        Counts the series found complete.
    """

    def __init__(self, config: NodeConfig, catalogue: Catalogue, queue: SqlJobQueue,
                 metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.catalogue = catalogue
        self.queue = queue
        self.metrics = metrics

    def run_once(self) -> int:
        """Decide every quiet series, then every quiet study; returns how many jobs were queued."""
        return self._decide_series() + self._queue_studies()

    def _decide_series(self) -> int:
        cutoff = self.catalogue.clock() - self.config.timing.series_quiet_s
        queued = 0
        for series in self.catalogue.quiet_series(cutoff):
            decision = decide(series, self.config.rules)
            rule = decision.rule
            waiting = rule is not None and rule.whole_study
            reason = f"{decision.reason}: waiting for the study" if waiting else decision.reason
            with self.catalogue.begin() as db:
                if not self.catalogue.complete_series(db, series.series_uid, reason,
                                                      received_before=cutoff, waiting=waiting,
                                                      rule=rule.name if rule else ""):
                    continue
                if self.metrics is not None:
                    self.metrics.series_completed.inc()
                if rule is None:
                    logger.info("series %s complete (%d instances), not processed: %s",
                                series.series_uid, series.n_instances, decision.reason)
                    continue
                if waiting:
                    logger.info("series %s complete (%d instances), %s", series.series_uid,
                                series.n_instances, reason)
                    continue
                job_id = self._enqueue(db, rule, [series.series_uid], series.study_uid)
            queued += 1
            logger.info("series %s complete (%d instances): job %d queued (%s)",
                        series.series_uid, series.n_instances, job_id, decision.reason)
        return queued

    def _queue_studies(self) -> int:
        cutoff = self.catalogue.clock() - self.config.timing.study_quiet_s
        rules = {rule.name: rule for rule in self.config.rules}
        queued = 0
        for study_uid, rule_name in self.catalogue.quiet_studies(cutoff):
            rule = rules.get(rule_name)
            with self.catalogue.begin() as db:
                series_uids = self.catalogue.take_study(db, study_uid, rule_name)
                if not series_uids or rule is None:
                    continue
                job_id = self._enqueue(db, rule, series_uids, study_uid)
            queued += 1
            logger.info("study %s complete: job %d queued for %d series (rule %s)", study_uid,
                        job_id, len(series_uids), rule_name)
        return queued

    def _enqueue(self, db: Connection, rule: RuleConfig, series_uids: list[str],
                 study_uid: str) -> int:
        job_id = self.queue.enqueue(series_uids[0], rule=rule.name,
                                    model=",".join(rule.model) or None,
                                    seg_type=rule.seg_type, destinations=rule.destinations,
                                    series_uids=tuple(series_uids), study_uid=study_uid,
                                    priority=PRIORITIES[rule.priority], db=db)
        self.catalogue.set_series_job(db, series_uids, job_id)
        return job_id
