"""The outbox: one durable row per output file and destination.

States: ``pending`` (due at ``next_attempt_at``) → ``done``, or ``failed``
when the failure is permanent or retries ran past ``timing.retry.max_age_s``.
Failed rows stay listed until retried (``segnode outbox retry``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from node.catalogue import Catalogue, outbox
from node.config import RetryConfig

__all__ = ["Delivery", "Outbox", "OUTBOX_STATES"]

OUTBOX_STATES = ("pending", "done", "failed")


@dataclass(frozen=True)
class Delivery:
    """One file to send to one destination."""

    id: int
    job_id: int
    destination: str
    path: Path
    sop_instance_uid: str
    state: str
    attempts: int
    last_error: str
    created_at: float
    next_attempt_at: float
    delivered_at: float | None


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id, job_id=row.job_id, destination=row.destination, path=Path(row.path),
        sop_instance_uid=row.sop_instance_uid, state=row.state, attempts=row.attempts,
        last_error=row.last_error or "", created_at=row.created_at,
        next_attempt_at=row.next_attempt_at, delivered_at=row.delivered_at,
    )


class Outbox:
    """Deliveries in the catalogue's ``outbox`` table."""

    def __init__(self, catalogue: Catalogue, retry: RetryConfig) -> None:
        self.catalogue = catalogue
        self.policy = retry

    def add(self, job_id: int, destination: str, path: Path, sop_instance_uid: str) -> None:
        """Queue ``path`` for ``destination``: one row per job, destination and file.

        A row that exists already (the job ran again: after a crash, a late
        instance or ``segnode jobs retry``) becomes pending again, so the
        run's outputs are sent; the PACS replaces them (same UIDs).
        """
        now = self.catalogue.clock()
        fresh = {"state": "pending", "attempts": 0, "last_error": "", "created_at": now,
                 "next_attempt_at": now, "delivered_at": None,
                 "sop_instance_uid": sop_instance_uid}
        with self.catalogue.begin() as db:
            exists = db.execute(sa.select(outbox.c.id).where(
                outbox.c.job_id == job_id, outbox.c.destination == destination,
                outbox.c.path == str(path))).first()
            if exists is None:
                db.execute(outbox.insert().values(job_id=job_id, destination=destination,
                                                  path=str(path), **fresh))
            else:
                db.execute(outbox.update().where(outbox.c.id == exists.id).values(**fresh))

    def due(self, limit: int = 100) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first."""
        query = (sa.select(outbox)
                 .where(outbox.c.state == "pending",
                        outbox.c.next_attempt_at <= self.catalogue.clock())
                 .order_by(outbox.c.id).limit(limit))
        with self.catalogue.engine.connect() as db:
            return [_delivery(row) for row in db.execute(query)]

    def delivered(self, delivery_id: int) -> None:
        """Mark a delivery done."""
        self._update(delivery_id, state="done", delivered_at=self.catalogue.clock(),
                     last_error="", attempts=outbox.c.attempts + 1)

    def failed_transient(self, delivery: Delivery, error: str) -> str:
        """Schedule the next attempt with exponential backoff, or give up past the age limit.

        Returns the new state (``pending`` or ``failed``).
        """
        now = self.catalogue.clock()
        attempts = delivery.attempts + 1
        if now - delivery.created_at >= self.policy.max_age_s:
            self._update(delivery.id, state="failed", attempts=attempts,
                         last_error=f"gave up after {attempts} attempts: {error}")
            return "failed"
        delay = min(self.policy.max_delay_s,
                    self.policy.initial_delay_s * self.policy.backoff_factor ** (attempts - 1))
        self._update(delivery.id, attempts=attempts, last_error=error, next_attempt_at=now + delay)
        return "pending"

    def failed_permanent(self, delivery: Delivery, error: str) -> None:
        """Mark a delivery failed at once (the destination will not take it)."""
        self._update(delivery.id, state="failed", attempts=delivery.attempts + 1,
                     last_error=error)

    def retry(self, delivery_id: int | None = None) -> int:
        """Make failed deliveries (one, or all when ``None``) pending now; returns how many."""
        now = self.catalogue.clock()
        query = outbox.update().where(outbox.c.state == "failed")
        if delivery_id is not None:
            query = query.where(outbox.c.id == delivery_id)
        with self.catalogue.begin() as db:
            result = db.execute(query.values(state="pending", next_attempt_at=now,
                                             created_at=now, attempts=0))
            return int(result.rowcount)

    def list(self, state: str | None = None, limit: int = 100) -> list[Delivery]:
        """Deliveries, newest first, optionally of one state."""
        query = sa.select(outbox).order_by(outbox.c.id.desc()).limit(limit)
        if state is not None:
            query = query.where(outbox.c.state == state)
        with self.catalogue.engine.connect() as db:
            return [_delivery(row) for row in db.execute(query)]

    def for_job(self, job_id: int) -> list[Delivery]:
        """Every delivery of one job."""
        with self.catalogue.engine.connect() as db:
            rows = db.execute(sa.select(outbox).where(outbox.c.job_id == job_id)
                              .order_by(outbox.c.id))
            return [_delivery(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Number of deliveries per state (every state present, zero included)."""
        return self.catalogue.count_by_state(outbox, OUTBOX_STATES)

    def _update(self, delivery_id: int, **values: Any) -> None:
        with self.catalogue.begin() as db:
            db.execute(outbox.update().where(outbox.c.id == delivery_id).values(**values))
