"""The durable job queue: a small interface and its embedded (database) implementation.

A job carries ids and names only (the series it covers, rule, model, SEG
type, destinations), never in-memory objects, so any worker can run it. A
job covers one series, or all the series of a study one rule takes (the
stations of a whole-body acquisition are stitched together); ``series_uid``
is the first of them. States:
``queued`` → ``running`` → ``done`` or ``failed`` (with the reason). A job
found ``running`` when the node starts was interrupted by a crash and is
queued again.

A claimed job carries a lease (its worker's name and an expiry) that the
worker renews while it runs; a job whose lease ran out (its worker died,
on this server or another) is queued again by :meth:`SqlJobQueue.requeue_expired`.
Claims take the highest priority first, then the oldest. With
``queue.backend: celery`` the table stays the truth and each queued job is
also published as a Celery task (:mod:`node.publisher`); the worker that
receives it claims that job by id, so a duplicate message runs nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from node.catalogue import Catalogue, jobs

__all__ = ["Job", "JobQueue", "SqlJobQueue", "JOB_STATES", "PRIORITIES"]

JOB_STATES = ("queued", "running", "done", "failed")

#: Job priorities of the rules (higher runs first).
PRIORITIES = {"urgent": 2, "normal": 1, "batch": 0}


@dataclass(frozen=True)
class Job:
    """One unit of work: segment one series with one rule's model."""

    id: int
    series_uid: str
    series_uids: tuple[str, ...]
    study_uid: str
    rule: str
    #: The rule's pack names, comma-separated; None is the built-in demo.
    model: str | None
    seg_type: str
    destinations: tuple[str, ...]
    state: str
    attempts: int
    reason: str
    result: dict[str, Any]
    output_dir: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    priority: int = 1
    lease_owner: str = ""
    published_at: float | None = None


class JobQueue(Protocol):
    """What the node needs of a queue."""

    def enqueue(self, series_uid: str, *, rule: str, model: str | None, seg_type: str,
                destinations: tuple[str, ...], series_uids: tuple[str, ...] = (),
                study_uid: str = "", priority: int = 1,
                db: Connection | None = None) -> int: ...
    def claim(self, owner: str = "", lease_s: float = 0.0) -> Job | None: ...
    def complete(self, job_id: int, result: dict[str, Any], reason: str = "") -> None: ...
    def fail(self, job_id: int, reason: str, result: dict[str, Any] | None = None) -> None: ...
    def requeue(self, job_id: int) -> bool: ...


_other = jobs.alias("other")
#: A newer version of a job waits while an older one of the same series and rule runs, so
#: two workers never segment one series for one rule at once.
_SAME_WORK_RUNNING = sa.exists().where(
    _other.c.state == "running", _other.c.series_uid == jobs.c.series_uid,
    _other.c.rule == jobs.c.rule, _other.c.id != jobs.c.id)


def _queued_again(reason: str) -> dict[str, Any]:
    """The column values of a running job put back in the queue (no lease, unpublished)."""
    return {"state": "queued", "reason": reason, "lease_owner": "", "lease_until": None,
            "published_at": None}


def _job(row: Any) -> Job:
    return Job(
        id=row.id, series_uid=row.series_uid,
        series_uids=tuple(json.loads(row.series_uids or "[]")) or (row.series_uid,),
        study_uid=row.study_uid or "", rule=row.rule, model=row.model,
        seg_type=row.seg_type, destinations=tuple(json.loads(row.destinations)),
        state=row.state, attempts=row.attempts, reason=row.reason or "",
        result=json.loads(row.result) if row.result else {}, output_dir=row.output_dir or "",
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        priority=row.priority, lease_owner=row.lease_owner, published_at=row.published_at,
    )


class SqlJobQueue:
    """Jobs as rows of the catalogue's ``jobs`` table (oldest queued first)."""

    def __init__(self, catalogue: Catalogue, *, max_running: int | None = None) -> None:
        self.catalogue = catalogue
        #: Most jobs running at once in the whole catalogue (``limits.max_running_jobs``).
        self.max_running = max_running

    def enqueue(self, series_uid: str, *, rule: str, model: str | None, seg_type: str,
                destinations: tuple[str, ...], series_uids: tuple[str, ...] = (),
                study_uid: str = "", priority: int = 1,
                db: Connection | None = None) -> int:
        """Queue a job over ``series_uids`` (default: ``series_uid`` alone); returns its id.

        ``db`` joins the caller's transaction.
        """
        if db is None:
            with self.catalogue.begin() as own:
                return self.enqueue(series_uid, rule=rule, model=model, seg_type=seg_type,
                                    destinations=destinations, series_uids=series_uids,
                                    study_uid=study_uid, priority=priority, db=own)
        result = db.execute(jobs.insert().values(
            series_uid=series_uid, series_uids=json.dumps(list(series_uids or (series_uid,))),
            study_uid=study_uid, rule=rule, model=model, seg_type=seg_type,
            destinations=json.dumps(list(destinations)), state="queued", attempts=0,
            reason="", result="", output_dir="", created_at=self.catalogue.clock(),
            priority=priority,
        ))
        return int(result.inserted_primary_key[0])

    def claim(self, owner: str = "", lease_s: float = 0.0) -> Job | None:
        """Take the most urgent, oldest queued job for ``owner``; None when there is none.

        Safe with several workers and processes: the update only takes a row
        still queued (writers take turns, see :class:`Catalogue`), so no job
        is claimed twice. ``lease_s`` > 0 gives the claim a lease to renew.
        """
        with self.catalogue.begin() as db:
            row = db.execute(sa.select(jobs.c.id).where(jobs.c.state == "queued",
                                                        ~_SAME_WORK_RUNNING)
                             .order_by(jobs.c.priority.desc(), jobs.c.id).limit(1)).first()
            return None if row is None else self._take(db, row.id, owner, lease_s)

    def claim_job(self, job_id: int, owner: str, lease_s: float) -> Job | None:
        """Take job ``job_id`` if it is queued; None when it is running, done, failed or unknown.

        A queued job whose series and rule another job is running stays
        queued, marked unpublished, so the publisher sends it again once the
        other is finished.
        """
        with self.catalogue.begin() as db:
            taken = self._take(db, job_id, owner, lease_s)
            if taken is None:
                db.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.state == "queued")
                           .values(published_at=None))
            return taken

    def _take(self, db: Connection, job_id: int, owner: str, lease_s: float) -> Job | None:
        now = self.catalogue.clock()
        conditions = [jobs.c.id == job_id, jobs.c.state == "queued", ~_SAME_WORK_RUNNING]
        if self.max_running is not None:
            running = (sa.select(sa.func.count()).select_from(_other)
                       .where(_other.c.state == "running").scalar_subquery())
            conditions.append(running < self.max_running)
        taken = db.execute(jobs.update().where(*conditions)
                           .values(state="running", attempts=jobs.c.attempts + 1,
                                   started_at=now, finished_at=None, reason="",
                                   lease_owner=owner,
                                   lease_until=now + lease_s if lease_s > 0 else None))
        if taken.rowcount != 1:
            return None
        return _job(db.execute(sa.select(jobs).where(jobs.c.id == job_id)).one())

    def renew(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend ``owner``'s lease on a running job; False when it no longer holds it."""
        with self.catalogue.begin() as db:
            renewed = db.execute(jobs.update().where(
                jobs.c.id == job_id, jobs.c.state == "running", jobs.c.lease_owner == owner
            ).values(lease_until=self.catalogue.clock() + lease_s))
            return renewed.rowcount == 1

    def requeue_expired(self) -> list[int]:
        """Queue again every running job whose lease ran out (its worker died); their ids."""
        with self.catalogue.begin() as db:
            ids = [row.id for row in db.execute(sa.select(jobs.c.id).where(
                jobs.c.state == "running", jobs.c.lease_until.is_not(None),
                jobs.c.lease_until < self.catalogue.clock()))]
            if ids:
                db.execute(jobs.update().where(jobs.c.id.in_(ids)).values(
                    **_queued_again("its worker stopped renewing the lease; queued again")))
        return ids

    def to_publish(self, republish_after_s: float, limit: int = 100) -> list[Job]:
        """Queued jobs never handed to the broker, or handed over long ago and still waiting."""
        stale = self.catalogue.clock() - republish_after_s
        query = (sa.select(jobs).where(jobs.c.state == "queued", ~_SAME_WORK_RUNNING, sa.or_(
            jobs.c.published_at.is_(None), jobs.c.published_at < stale))
            .order_by(jobs.c.priority.desc(), jobs.c.id).limit(limit))
        with self.catalogue.engine.connect() as db:
            return [_job(row) for row in db.execute(query)]

    def mark_published(self, job_id: int) -> None:
        """Record that job ``job_id`` was handed to the broker now."""
        with self.catalogue.begin() as db:
            db.execute(jobs.update().where(jobs.c.id == job_id)
                       .values(published_at=self.catalogue.clock()))

    def set_output_dir(self, job_id: int, output_dir: str) -> None:
        """Record where a job writes its outputs."""
        with self.catalogue.begin() as db:
            db.execute(jobs.update().where(jobs.c.id == job_id).values(output_dir=output_dir))

    def complete(self, job_id: int, result: dict[str, Any], reason: str = "") -> None:
        """Mark a job done with its result summary."""
        self._finish(job_id, "done", reason, result)

    def fail(self, job_id: int, reason: str, result: dict[str, Any] | None = None) -> None:
        """Mark a job failed with the reason."""
        self._finish(job_id, "failed", reason, result or {})

    def _finish(self, job_id: int, state: str, reason: str, result: dict[str, Any]) -> None:
        with self.catalogue.begin() as db:
            db.execute(jobs.update().where(jobs.c.id == job_id).values(
                state=state, reason=reason, result=json.dumps(result),
                finished_at=self.catalogue.clock(), lease_until=None))

    def requeue(self, job_id: int) -> bool:
        """Queue a failed or done job again; False when it is queued, running or unknown."""
        with self.catalogue.begin() as db:
            updated = db.execute(jobs.update().where(
                jobs.c.id == job_id, jobs.c.state.in_(("failed", "done"))
            ).values(state="queued", reason="", finished_at=None, published_at=None))
            return updated.rowcount == 1

    def requeue_interrupted(self) -> list[int]:
        """Queue again every job left running by a process that died; returns their ids."""
        with self.catalogue.begin() as db:
            ids = [row.id for row in db.execute(sa.select(jobs.c.id)
                                                .where(jobs.c.state == "running"))]
            if ids:
                db.execute(jobs.update().where(jobs.c.id.in_(ids)).values(
                    **_queued_again("interrupted; queued again at restart")))
        return ids

    def get(self, job_id: int) -> Job | None:
        """One job, or None."""
        with self.catalogue.engine.connect() as db:
            row = db.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
            return _job(row) if row is not None else None

    def list(self, state: str | None = None, limit: int = 50) -> list[Job]:
        """Jobs, newest first, optionally of one state."""
        query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if state is not None:
            query = query.where(jobs.c.state == state)
        with self.catalogue.engine.connect() as db:
            return [_job(row) for row in db.execute(query)]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, zero included)."""
        return self.catalogue.count_by_state(jobs, JOB_STATES)
