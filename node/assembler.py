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

Quiet time is measured on the monotonic clock, so a wall-clock jump (NTP)
neither completes a series early nor holds it back: for every series still
receiving and every waiting study the assembler keeps when, on the
monotonic clock, its current newest arrival began its quiet. The wall
clock only says how long ago that arrival was, and never counts from before
the previous look at it (or, for one not seen before, the previous round:
the arrival came after it), so a jump shifts the quiet time by one poll
interval at most, and time the node was down (when nobody could send)
never counts as quiet.
A series is completed only if its newest arrival time is still the one
watched, so an instance arriving meanwhile keeps it open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

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
    monotonic
        The clock quiet time is measured on (``time.monotonic``).
    """

    def __init__(self, config: NodeConfig, catalogue: Catalogue, queue: SqlJobQueue,
                 metrics: NodeMetrics | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.catalogue = catalogue
        self.queue = queue
        self.metrics = metrics
        self._monotonic = monotonic
        #: When the previous round began (first: the start). Quiet time never counts from
        #: before it, so time the node was down (when nobody could send) is not quiet time.
        self._previous_round = monotonic()
        #: Watched series and studies: (newest arrival seen, monotonic start of its quiet,
        #: monotonic time of the last look).
        self._watches: dict[Hashable, tuple[float, float, float]] = {}

    def _quiet(self, key: Hashable, last_received_at: float, quiet_s: float) -> bool:
        """True once ``key``'s newest arrival has stayed ``last_received_at`` over ``quiet_s``."""
        now = self._monotonic()
        watch = self._watches.get(key)
        if watch is None or watch[0] != last_received_at:
            # Quiet for as long as the wall clock says, but never since before the last look
            # at it or, new, the previous round (the arrival came after them), so a clock jump
            # counts for one poll at most and the time the node was down not at all.
            elapsed = max(0.0, self.catalogue.clock() - last_received_at)
            elapsed = min(elapsed, now - (watch[2] if watch is not None else self._previous_round))
            watch = (last_received_at, now - elapsed, now)
        self._watches[key] = (watch[0], watch[1], now)
        return now - watch[1] > quiet_s

    def _forget_all_but(self, keys: set[Hashable], kind: str) -> None:
        for key in [k for k in self._watches if k[0] == kind and k not in keys]:
            del self._watches[key]

    def run_once(self) -> int:
        """Decide every quiet series, then every quiet study; returns how many jobs were queued."""
        started = self._monotonic()
        try:
            return self._decide_series() + self._queue_studies()
        finally:
            self._previous_round = started

    def _decide_series(self) -> int:
        quiet_s = self.config.timing.series_quiet_s
        receiving = self.catalogue.receiving_series()
        self._forget_all_but({("series", s.series_uid) for s in receiving}, "series")
        queued = 0
        for series in receiving:
            if not self._quiet(("series", series.series_uid), series.last_received_at, quiet_s):
                continue
            decision = decide(series, self.config.rules)
            rule = decision.rule
            waiting = rule is not None and rule.whole_study
            reason = f"{decision.reason}: waiting for the study" if waiting else decision.reason
            with self.catalogue.begin() as db:
                if not self.catalogue.complete_series(db, series.series_uid, reason,
                                                      last_received_at=series.last_received_at,
                                                      waiting=waiting,
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
        quiet_s = self.config.timing.study_quiet_s
        rules = {rule.name: rule for rule in self.config.rules}
        waiting = self.catalogue.waiting_studies()
        self._forget_all_but({("study", uid, rule) for uid, rule, _ in waiting}, "study")
        queued = 0
        for study_uid, rule_name, latest in waiting:
            if not self._quiet(("study", study_uid, rule_name), latest, quiet_s):
                continue
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
