"""The durable job queue: a small interface and its embedded (database) implementation.

A job carries ids and names only (the series it covers, rule, model, SEG
type, destinations), never in-memory objects, so any worker can run it. A
job covers one series, or all the series of a study one rule takes (the
stations of a whole-body acquisition are stitched together); ``series_uid``
is the first of them. States:
``queued`` → ``running`` → ``done`` or ``failed`` (with the reason). A job
found ``running`` when the node starts was interrupted by a crash and is
queued again. A Celery-backed queue can stand beside :class:`SqlJobQueue`
behind the same :class:`JobQueue` protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from node.catalogue import Catalogue, jobs

__all__ = ["Job", "JobQueue", "SqlJobQueue", "JOB_STATES"]

JOB_STATES = ("queued", "running", "done", "failed")


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


class JobQueue(Protocol):
    """What the node needs of a queue."""

    def enqueue(self, series_uid: str, *, rule: str, model: str | None, seg_type: str,
                destinations: tuple[str, ...], series_uids: tuple[str, ...] = (),
                study_uid: str = "", db: Connection | None = None) -> int: ...
    def claim(self) -> Job | None: ...
    def complete(self, job_id: int, result: dict[str, Any], reason: str = "") -> None: ...
    def fail(self, job_id: int, reason: str, result: dict[str, Any] | None = None) -> None: ...
    def requeue(self, job_id: int) -> bool: ...


def _job(row: Any) -> Job:
    return Job(
        id=row.id, series_uid=row.series_uid,
        series_uids=tuple(json.loads(row.series_uids or "[]")) or (row.series_uid,),
        study_uid=row.study_uid or "", rule=row.rule, model=row.model,
        seg_type=row.seg_type, destinations=tuple(json.loads(row.destinations)),
        state=row.state, attempts=row.attempts, reason=row.reason or "",
        result=json.loads(row.result) if row.result else {}, output_dir=row.output_dir or "",
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
    )


class SqlJobQueue:
    """Jobs as rows of the catalogue's ``jobs`` table (oldest queued first)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def enqueue(self, series_uid: str, *, rule: str, model: str | None, seg_type: str,
                destinations: tuple[str, ...], series_uids: tuple[str, ...] = (),
                study_uid: str = "", db: Connection | None = None) -> int:
        """Queue a job over ``series_uids`` (default: ``series_uid`` alone); returns its id.

        ``db`` joins the caller's transaction.
        """
        if db is None:
            with self.catalogue.begin() as own:
                return self.enqueue(series_uid, rule=rule, model=model, seg_type=seg_type,
                                    destinations=destinations, series_uids=series_uids,
                                    study_uid=study_uid, db=own)
        result = db.execute(jobs.insert().values(
            series_uid=series_uid, series_uids=json.dumps(list(series_uids or (series_uid,))),
            study_uid=study_uid, rule=rule, model=model, seg_type=seg_type,
            destinations=json.dumps(list(destinations)), state="queued", attempts=0,
            reason="", result="", output_dir="", created_at=self.catalogue.clock(),
        ))
        return int(result.inserted_primary_key[0])

    def claim(self) -> Job | None:
        """Take the oldest queued job and mark it running; None when the queue is empty.

        Safe with several workers: the update only takes a row still queued
        (SQLite's write lock serialises claims; PostgreSQL's row lock with
        SKIP LOCKED lets a second claimer take the next job), so no job is
        claimed twice.
        """
        while True:
            with self.catalogue.begin() as db:
                row = db.execute(sa.select(jobs.c.id, jobs.c.attempts)
                                 .where(jobs.c.state == "queued").order_by(jobs.c.id).limit(1)
                                 .with_for_update(skip_locked=True)).first()
                if row is None:
                    return None
                taken = db.execute(jobs.update().where(
                    jobs.c.id == row.id, jobs.c.state == "queued"
                ).values(state="running", attempts=row.attempts + 1,
                         started_at=self.catalogue.clock(), finished_at=None, reason=""))
                if taken.rowcount == 1:
                    return _job(db.execute(sa.select(jobs).where(jobs.c.id == row.id)).one())

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
                finished_at=self.catalogue.clock()))

    def requeue(self, job_id: int) -> bool:
        """Queue a failed or done job again; False when it is queued, running or unknown."""
        with self.catalogue.begin() as db:
            updated = db.execute(jobs.update().where(
                jobs.c.id == job_id, jobs.c.state.in_(("failed", "done"))
            ).values(state="queued", reason="", finished_at=None))
            return updated.rowcount == 1

    def requeue_interrupted(self) -> list[int]:
        """Queue again every job left running by a process that died; returns their ids."""
        with self.catalogue.begin() as db:
            ids = [row.id for row in db.execute(sa.select(jobs.c.id)
                                                .where(jobs.c.state == "running"))]
            if ids:
                db.execute(jobs.update().where(jobs.c.id.in_(ids)).values(
                    state="queued", reason="interrupted; queued again at restart"))
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
