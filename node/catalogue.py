"""The node's catalogue: every instance, series, job, delivery and quarantined file.

One module reaches the database, through SQLAlchemy Core, so that PostgreSQL
can replace the embedded SQLite by configuration (``database.url``); the
schema is kept by Alembic migrations (:mod:`node.schema`) on both. SQLite
runs in WAL mode with ``synchronous=FULL``: a row committed here is on disk
before the C-STORE success status leaves the node. Write transactions take
turns on both backends (SQLite's write lock; on PostgreSQL a transaction
advisory lock), so the read-then-write steps here need no retry logic.

Tables
------
``instances``   one row per SOP Instance UID in the spool (path, size, SHA-256)
``series``      one row per series: its attributes for the rules, when the last
                instance arrived, and its state (``receiving`` → [``waiting`` for
                its study →] ``complete``)
``jobs``        the durable queue (see :mod:`node.jobqueue`)
``outbox``      one row per output file and destination (see :mod:`node.outbox`)
``quarantine``  files that could not be stored as instances, with the reason
``corrections`` every received DICOM-SEG examined as a possible radiologist's
                correction: the outcome, the job it corrects, its segment mapping
``correction_metrics``  per correction and structure: Dice, HD95, volumes, connectivity
``job_outputs`` every DICOM file a job wrote (SOP Instance and Series UIDs), delivered or not
``node_state``  key/value facts of the running node for ``segnode status``
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from node import schema

__all__ = [
    "Catalogue",
    "InstanceRecord",
    "SeriesRow",
    "StoreOutcome",
    "WORKER_STATE_PREFIX",
    "metadata",
]

metadata = sa.MetaData()

instances = sa.Table(
    "instances", metadata,
    sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
    sa.Column("series_uid", sa.String(64), nullable=False, index=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("calling_ae", sa.String(16), nullable=False),
)

series = sa.Table(
    "series", metadata,
    sa.Column("series_uid", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("modality", sa.String(16), nullable=False, default=""),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("body_part", sa.String(64), nullable=False, default=""),
    sa.Column("image_type", sa.Text, nullable=False, default=""),
    sa.Column("sop_class_uid", sa.String(64), nullable=False, default=""),
    sa.Column("manufacturer", sa.Text, nullable=False, default=""),
    sa.Column("first_received_at", sa.Float, nullable=False),
    sa.Column("last_received_at", sa.Float, nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("decision", sa.Text, nullable=False, default=""),
    sa.Column("rule", sa.String(64), nullable=False, default=""),
    sa.Column("job_id", sa.Integer, nullable=True),
    sa.Column("purged_at", sa.Float, nullable=True),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("series_uid", sa.String(64), nullable=False, index=True),
    sa.Column("study_uid", sa.String(64), nullable=False, default=""),
    sa.Column("series_uids", sa.Text, nullable=False, default="[]"),
    sa.Column("rule", sa.String(64), nullable=False),
    sa.Column("model", sa.Text, nullable=True),
    sa.Column("seg_type", sa.String(16), nullable=False),
    sa.Column("destinations", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("result", sa.Text, nullable=False, default=""),
    sa.Column("output_dir", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
    #: Higher runs first (rules: urgent 2, normal 1, batch 0).
    sa.Column("priority", sa.Integer, nullable=False, server_default="1"),
    #: The worker running it and until when its lease holds (renewed while it runs).
    sa.Column("lease_owner", sa.String(128), nullable=False, server_default=""),
    sa.Column("lease_until", sa.Float, nullable=True),
    #: When it was last handed to the broker (queue.backend celery); null: not yet.
    sa.Column("published_at", sa.Float, nullable=True),
    sa.Index("ix_jobs_claim", "state", "priority", "id"),
)

outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, nullable=False, index=True),
    sa.Column("destination", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.UniqueConstraint("job_id", "destination", "path", name="uq_outbox_job_dest_path"),
)

quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("calling_ae", sa.String(16), nullable=False, default=""),
    sa.Column("received_at", sa.Float, nullable=False),
)

associations = sa.Table(
    "associations", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", sa.Float, nullable=False, index=True),
    sa.Column("calling_ae", sa.String(16), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("files", sa.Integer, nullable=False, default=0),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("bytes", sa.Integer, nullable=False, default=0),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    sa.Column("result", sa.Text, nullable=False),
)

corrections = sa.Table(
    "corrections", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("examined_at", sa.Float, nullable=False, index=True),
    #: examining, then correction (scored), not_correction, quarantined or failed (a
    #: correction not scored).
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("job_id", sa.Integer, nullable=True, index=True),
    sa.Column("model", sa.String(64), nullable=False, server_default=""),
    sa.Column("source_series_uid", sa.String(64), nullable=False, server_default=""),
    sa.Column("modality", sa.String(16), nullable=False, server_default=""),
    sa.Column("segments", sa.Integer, nullable=False, server_default="0"),
    #: JSON list of the segments mapped to no label, each with the reason.
    sa.Column("unmapped", sa.Text, nullable=False, server_default="[]"),
    #: Structures whose corrected mask differs from the model's.
    sa.Column("corrected_structures", sa.Integer, nullable=False, server_default="0"),
    #: The corrected label map on the grid the model saw (NIfTI), for training exports.
    sa.Column("labels_path", sa.Text, nullable=False, server_default=""),
)

job_outputs = sa.Table(
    "job_outputs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, nullable=False, index=True),
    sa.Column("sop_instance_uid", sa.String(64), nullable=False, index=True),
    sa.Column("series_uid", sa.String(64), nullable=False, index=True),
    sa.Column("path", sa.Text, nullable=False),
)

correction_metrics = sa.Table(
    "correction_metrics", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("correction_id", sa.Integer, nullable=False, index=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("structure", sa.String(64), nullable=False),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("dice", sa.Float, nullable=False),
    sa.Column("hd95_mm", sa.Float, nullable=True),
    sa.Column("volume_ml", sa.Float, nullable=False),
    sa.Column("corrected_volume_ml", sa.Float, nullable=False),
    sa.Column("connected", sa.Boolean, nullable=True),
    sa.Column("corrected_connected", sa.Boolean, nullable=True),
    sa.Column("examined_at", sa.Float, nullable=False),
    sa.Index("ix_correction_metrics_model_structure", "model", "structure", "examined_at"),
)

node_state = sa.Table(
    "node_state", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

#: Catalogue state keys of ``segnode worker`` processes: ``worker:<pid>@<host>``.
WORKER_STATE_PREFIX = "worker:"

#: Series states: still receiving; waiting for the rest of its study (a rule
#: with whole_study took it); complete (a decision was taken, a job queued).
RECEIVING = "receiving"
WAITING = "waiting"
COMPLETE = "complete"

#: The state of a correction row while one examiner works on it.
EXAMINING = "examining"


#: Writers on PostgreSQL take turns on this transaction advisory lock, as on SQLite's.
_PG_WRITE_LOCK = sa.text("SELECT pg_advisory_xact_lock(5060001)")

# The statements of record_instance, built once (it runs for every instance received).
_INSTANCE_BY_UID = sa.select(instances.c.path, instances.c.sha256).where(
    instances.c.sop_instance_uid == sa.bindparam("uid"))
_INSERT_INSTANCE = instances.insert()
_UPDATE_INSTANCE = instances.update().where(
    instances.c.sop_instance_uid == sa.bindparam("uid")).values(
    {c: sa.bindparam(c) for c in ("series_uid", "study_uid", "sop_class_uid", "path",
                                  "size_bytes", "sha256", "received_at", "calling_ae")})
_SERIES_STATE = sa.select(series.c.state).where(series.c.series_uid == sa.bindparam("uid"))
_SERIES_ARRIVAL = series.update().where(series.c.series_uid == sa.bindparam("uid")).values(
    last_received_at=sa.bindparam("now"), purged_at=None)
_SERIES_REOPENED = series.update().where(series.c.series_uid == sa.bindparam("uid")).values(
    last_received_at=sa.bindparam("now"), purged_at=None, state=RECEIVING, decision="")


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance, already durable in the spool."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    path: Path
    size_bytes: int
    sha256: str
    calling_ae: str
    modality: str = ""
    description: str = ""
    body_part: str = ""
    image_type: str = ""
    manufacturer: str = ""


@dataclass(frozen=True)
class StoreOutcome:
    """What recording an instance changed.

    ``kind`` is ``new``, ``replaced`` (same SOP Instance UID, other content) or
    ``identical`` (a resend of the same bytes: nothing changes).
    ``old_path`` is a spool file no longer referenced (to delete), if any.
    ``reopened`` is True when the instance reopened a completed series.
    """

    kind: str
    old_path: Path | None = None
    reopened: bool = False


@dataclass(frozen=True)
class SeriesRow:
    """A series as the assembler and the rules see it."""

    series_uid: str
    study_uid: str
    modality: str
    description: str
    body_part: str
    image_type: tuple[str, ...]
    sop_class_uid: str
    manufacturer: str
    n_instances: int
    last_received_at: float
    state: str


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling is off: _sqlite_begin emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # Writers take the write lock at BEGIN, so two writers never deadlock
    # upgrading read locks (SQLITE_BUSY would bypass busy_timeout).
    immediate = connection.get_execution_options().get("segnode_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


#: One lock per SQLite file for the writers of this process: they queue on it instead of
#: polling SQLite's lock (busy_timeout sleeps up to 100 ms a try and lets newcomers in
#: first, which starved some writers for seconds under concurrent associations).
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def _sqlite_writer_lock(url: str) -> threading.RLock:
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(url, threading.RLock())


@contextmanager
def _holding(lock: threading.RLock | contextlib.nullcontext) -> Iterator[None]:
    """Hold ``lock`` for a write, giving up after SQLite's own busy timeout (30 s)."""
    if isinstance(lock, contextlib.nullcontext):
        yield
        return
    if not lock.acquire(timeout=30):
        raise TimeoutError("the catalogue's write lock was not free within 30 s")
    try:
        yield
    finally:
        lock.release()


class Catalogue:
    """The database behind the node; safe to share between threads.

    Parameters
    ----------
    url
        SQLAlchemy URL, e.g. ``sqlite:////var/lib/segnode/segnode.db`` or
        ``postgresql://user:password@host/db`` (driver psycopg 3). The schema
        is created or migrated to this version's when opened.
    clock
        Returns the current time in seconds (injected so tests can move it).
    """

    def __init__(self, url: str, *, clock: Any = time.time) -> None:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        self.url = url
        self.clock = clock
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        self._writers: threading.RLock | contextlib.nullcontext = contextlib.nullcontext()
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", _sqlite_begin)
            self._writers = _sqlite_writer_lock(url)
        schema.upgrade(self.engine)

    @property
    def shared(self) -> bool:
        """True when other processes or servers may use this catalogue (PostgreSQL)."""
        return self.engine.dialect.name != "sqlite"

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends without an exception."""
        with _holding(self._writers), self.engine.connect() as connection:
            connection.execution_options(segnode_write=True)
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(_PG_WRITE_LOCK)
                yield connection

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    # Instances and series ---------------------------------------------------------------

    def record_instance(self, record: InstanceRecord, *, reopen_complete: bool) -> StoreOutcome:
        """Catalogue a durable spool file; returns what changed.

        A repeated SOP Instance UID with the same SHA-256 changes nothing. With
        other content the newer copy replaces the older (its row, and its file
        if stored at another path) and counts as a new arrival for its series.
        An arrival in a completed series reopens it for a new run when
        ``reopen_complete`` is set; otherwise it is kept but not processed.

        Called once per instance received: the statements are built once
        (module constants with bound parameters), not per call.
        """
        now = self.clock()
        with self.begin() as db:
            old = db.execute(_INSTANCE_BY_UID, {"uid": record.sop_instance_uid}).first()
            if old is not None and old.sha256 == record.sha256:
                return StoreOutcome("identical")
            values = {
                "sop_instance_uid": record.sop_instance_uid,
                "series_uid": record.series_uid,
                "study_uid": record.study_uid,
                "sop_class_uid": record.sop_class_uid,
                "path": str(record.path),
                "size_bytes": record.size_bytes,
                "sha256": record.sha256,
                "received_at": now,
                "calling_ae": record.calling_ae,
            }
            if old is None:
                db.execute(_INSERT_INSTANCE, values)
            else:
                values["uid"] = values.pop("sop_instance_uid")
                db.execute(_UPDATE_INSTANCE, values)
            reopened = self._touch_series(db, record, now, reopen_complete)
        old_path = Path(old.path) if old is not None and old.path != str(record.path) else None
        return StoreOutcome("new" if old is None else "replaced", old_path, reopened)

    def _touch_series(self, db: Connection, record: InstanceRecord, now: float,
                      reopen_complete: bool) -> bool:
        row = db.execute(_SERIES_STATE, {"uid": record.series_uid}).first()
        if row is None:
            db.execute(series.insert().values(
                series_uid=record.series_uid, study_uid=record.study_uid,
                modality=record.modality, description=record.description,
                body_part=record.body_part, image_type=record.image_type,
                sop_class_uid=record.sop_class_uid, manufacturer=record.manufacturer,
                first_received_at=now, last_received_at=now, state=RECEIVING, decision="",
            ))
            return False
        reopen = row.state == COMPLETE and reopen_complete
        if reopen or row.state == WAITING:
            db.execute(_SERIES_REOPENED, {"uid": record.series_uid, "now": now})
        else:
            db.execute(_SERIES_ARRIVAL, {"uid": record.series_uid, "now": now})
        return reopen

    def receiving_series(self) -> list[SeriesRow]:
        """Every series still receiving, with its instance count, oldest arrival first."""
        receiving = sa.select(series.c.series_uid).where(series.c.state == RECEIVING)
        counts = (  # only the receiving series' instances are counted (this runs every poll)
            sa.select(instances.c.series_uid, sa.func.count().label("n"))
            .where(instances.c.series_uid.in_(receiving))
            .group_by(instances.c.series_uid).subquery()
        )
        query = (
            sa.select(series, sa.func.coalesce(counts.c.n, 0).label("n"))
            .select_from(series.outerjoin(counts, counts.c.series_uid == series.c.series_uid))
            .where(series.c.state == RECEIVING)
            .order_by(series.c.last_received_at)
        )
        with self.engine.connect() as db:
            return [_series_row(row) for row in db.execute(query)]

    def complete_series(self, db: Connection, series_uid: str, decision: str, *,
                        last_received_at: float, rule: str = "", waiting: bool = False) -> bool:
        """Mark a quiet series complete (or waiting for its study) with its decision.

        Runs in the transaction ``db``. Returns False (and changes nothing)
        when the series' newest arrival is no longer ``last_received_at`` (an
        instance arrived since it was found quiet): it stays receiving.
        """
        result = db.execute(
            series.update()
            .where(series.c.series_uid == series_uid, series.c.state == RECEIVING,
                   series.c.last_received_at == last_received_at)
            .values(state=WAITING if waiting else COMPLETE, decision=decision, rule=rule)
        )
        return result.rowcount == 1

    def waiting_studies(self) -> list[tuple[str, str, float]]:
        """(study, rule, newest arrival in the study) with series waiting and none receiving."""
        busy = sa.select(series.c.study_uid).where(series.c.state == RECEIVING)
        pairs = (sa.select(series.c.study_uid, series.c.rule).distinct()
                 .where(series.c.state == WAITING, series.c.study_uid.not_in(busy)).subquery())
        latest = (sa.select(series.c.study_uid, sa.func.max(series.c.last_received_at)
                            .label("latest")).group_by(series.c.study_uid).subquery())
        query = (sa.select(pairs.c.study_uid, pairs.c.rule, latest.c.latest)
                 .join(latest, latest.c.study_uid == pairs.c.study_uid)
                 .order_by(pairs.c.study_uid, pairs.c.rule))
        with self.engine.connect() as db:
            return [(row.study_uid, row.rule, float(row.latest)) for row in db.execute(query)]

    def take_study(self, db: Connection, study_uid: str, rule: str) -> list[str]:
        """Series of a study that ``rule`` took, waiting or done before, in UID order.

        Returns [] when none is waiting any more (another round took them).
        """
        rows = db.execute(sa.select(series.c.series_uid, series.c.state).where(
            series.c.study_uid == study_uid, series.c.rule == rule,
            series.c.state.in_((WAITING, COMPLETE))).order_by(series.c.series_uid)).all()
        if not any(row.state == WAITING for row in rows):
            return []
        db.execute(series.update().where(series.c.study_uid == study_uid,
                                         series.c.rule == rule, series.c.state == WAITING)
                   .values(state=COMPLETE))
        return [row.series_uid for row in rows]

    def set_series_job(self, db: Connection, series_uids: list[str], job_id: int) -> None:
        """Record the job that processes completed series."""
        db.execute(series.update().where(series.c.series_uid.in_(series_uids))
                   .values(job_id=job_id))

    def series_paths(self, series_uid: str) -> list[Path]:
        """Spool files of a series, in SOP Instance UID order."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(instances.c.path)
                              .where(instances.c.series_uid == series_uid)
                              .order_by(instances.c.sop_instance_uid))
            return [Path(row.path) for row in rows]

    def series_received(self, series_uid: str) -> tuple[float, float] | None:
        """When the first and the last instance of a series arrived, or None."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(series.c.first_received_at, series.c.last_received_at)
                             .where(series.c.series_uid == series_uid)).first()
            return None if row is None else (float(row[0]), float(row[1]))

    def series_in_study(self, study_uid: str) -> set[str]:
        """The SeriesInstanceUIDs catalogued for one study."""
        with self.engine.connect() as db:
            return set(db.execute(sa.select(series.c.series_uid)
                                  .where(series.c.study_uid == study_uid)).scalars())

    def instance_count(self, series_uid: str | None = None) -> int:
        """Number of catalogued instances (of one series, or all)."""
        query = sa.select(sa.func.count()).select_from(instances)
        if series_uid is not None:
            query = query.where(instances.c.series_uid == series_uid)
        with self.engine.connect() as db:
            return int(db.execute(query).scalar_one())

    def get_series(self, series_uid: str) -> dict[str, Any] | None:
        """One series row as a mapping, or None."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(series).where(series.c.series_uid == series_uid)).first()
            return dict(row._mapping) if row is not None else None

    def list_studies(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recently received studies with their series (state, modality, job)."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(
                series.c.study_uid, series.c.series_uid, series.c.modality, series.c.state,
                series.c.job_id, series.c.first_received_at, series.c.last_received_at,
            ).order_by(series.c.last_received_at.desc()).limit(50 * limit)).all()
        studies: dict[str, dict[str, Any]] = {}
        for row in rows:
            study = studies.setdefault(row.study_uid, {
                "study_uid": row.study_uid, "series": [], "first_received_at": None,
                "last_received_at": row.last_received_at})
            study["series"].append({"series_uid": row.series_uid, "modality": row.modality,
                                    "state": row.state, "job_id": row.job_id})
            first = study["first_received_at"]
            study["first_received_at"] = min(first, row.first_received_at) if first else \
                row.first_received_at
        return list(studies.values())[:limit]

    def count_by_state(self, table: sa.Table, states: tuple[str, ...] = ()) -> dict[str, int]:
        """Rows of ``table`` per ``state``; every one of ``states`` is present, zero or not."""
        with self.engine.connect() as db:
            rows = dict(db.execute(sa.select(table.c.state, sa.func.count())
                                   .group_by(table.c.state)).all())
        return {**{state: 0 for state in states}, **{k: int(v) for k, v in rows.items()}}

    def series_counts(self) -> dict[str, int]:
        """Number of series per state."""
        return self.count_by_state(series)

    # Quarantine ---------------------------------------------------------------------------

    def add_quarantine(self, path: Path, reason: str, calling_ae: str) -> int:
        """Record a quarantined file; returns its id."""
        with self.begin() as db:
            result = db.execute(quarantine.insert().values(
                path=str(path), reason=reason, calling_ae=calling_ae, received_at=self.clock()))
            return int(result.inserted_primary_key[0])

    def list_quarantine(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent quarantined files, newest first."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(quarantine).order_by(quarantine.c.id.desc()).limit(limit))
            return [dict(row._mapping) for row in rows]

    # Corrections --------------------------------------------------------------------------

    def unexamined_segs(self, sop_classes: frozenset[str], limit: int = 20) -> list[dict]:
        """SEG instances of complete series not examined yet (or received again since)."""
        query = (sa.select(instances.c.sop_instance_uid, instances.c.series_uid,
                           instances.c.study_uid, instances.c.path, instances.c.received_at,
                           instances.c.calling_ae)
                 .join(series, series.c.series_uid == instances.c.series_uid)
                 .outerjoin(corrections,
                            corrections.c.sop_instance_uid == instances.c.sop_instance_uid)
                 .where(instances.c.sop_class_uid.in_(sorted(sop_classes)),
                        series.c.state == COMPLETE,
                        sa.or_(corrections.c.id.is_(None),
                               sa.and_(corrections.c.state != EXAMINING,
                                       corrections.c.received_at < instances.c.received_at)))
                 .order_by(instances.c.received_at).limit(limit))
        with self.engine.connect() as db:
            return [dict(row._mapping) for row in db.execute(query)]

    def claim_correction(self, row: dict[str, Any]) -> int | None:
        """Start examining one SEG instance; its row id, or None when another examiner has it.

        ``row`` holds the instance's ``sop_instance_uid``, ``series_uid``,
        ``study_uid``, ``path`` and ``received_at``. A SEG examined before and
        received again since (other content) is examined again: its metrics go.
        """
        with self.begin() as db:
            old = db.execute(sa.select(corrections.c.id, corrections.c.state,
                                       corrections.c.received_at).where(
                corrections.c.sop_instance_uid == row["sop_instance_uid"])).first()
            values = {**row, "state": EXAMINING, "reason": "", "examined_at": self.clock()}
            if old is None:
                inserted = db.execute(corrections.insert().values(**values))
                return int(inserted.inserted_primary_key[0])
            if old.state == EXAMINING or old.received_at >= row["received_at"]:
                return None
            db.execute(correction_metrics.delete().where(
                correction_metrics.c.correction_id == old.id))
            db.execute(corrections.update().where(corrections.c.id == old.id).values(
                **values, job_id=None, model="", source_series_uid="", modality="",
                segments=0, unmapped="[]", corrected_structures=0, labels_path=""))
            return int(old.id)

    def finish_correction(self, correction_id: int, values: dict[str, Any],
                          metrics: list[dict[str, Any]]) -> None:
        """Record what examining a claimed SEG found (state, reason, link) and its metrics."""
        now = self.clock()
        values = {**values, "examined_at": now}
        if "unmapped" in values:
            values["unmapped"] = json.dumps(values["unmapped"])
        with self.begin() as db:
            db.execute(corrections.update().where(corrections.c.id == correction_id)
                       .values(**values))
            if metrics:
                db.execute(correction_metrics.insert(), [
                    {**metric, "correction_id": correction_id, "examined_at": now}
                    for metric in metrics])

    def forget_unfinished_corrections(self) -> int:
        """Drop the rows of examinations a crash interrupted, so they run again; how many."""
        with self.begin() as db:
            return int(db.execute(corrections.delete().where(
                corrections.c.state == EXAMINING)).rowcount)

    def instance(self, sop_uid: str) -> dict[str, Any]:
        """One catalogued instance as a mapping (KeyError when unknown)."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(instances).where(
                instances.c.sop_instance_uid == sop_uid)).first()
        if row is None:
            raise KeyError(sop_uid)
        return dict(row._mapping)

    def series_of_instances(self, sop_uids: list[str]) -> list[str]:
        """The series of those of ``sop_uids`` that are catalogued instances."""
        with self.engine.connect() as db:
            return sorted(set(db.execute(sa.select(instances.c.series_uid).where(
                instances.c.sop_instance_uid.in_(sop_uids))).scalars()))

    def done_job_of_series(self, series_uids: list[str]) -> dict[str, Any] | None:
        """The newest finished job over one of ``series_uids``, or None.

        Read from the jobs themselves, so a series that retention purged
        (its rows deleted) still finds the job that processed it.
        """
        if not series_uids:
            return None
        covers = [jobs.c.series_uid.in_(series_uids),
                  *(jobs.c.series_uids.contains(json.dumps(uid)) for uid in series_uids)]
        with self.engine.connect() as db:
            row = db.execute(sa.select(jobs).where(jobs.c.state == "done", sa.or_(*covers))
                             .order_by(jobs.c.id.desc()).limit(1)).first()
            return dict(row._mapping) if row is not None else None

    def record_outputs(self, job_id: int, outputs: list[tuple[str, str, Path]]) -> None:
        """Remember the DICOM files a job wrote: (SOP Instance UID, Series UID, path) each."""
        with self.begin() as db:
            db.execute(job_outputs.delete().where(job_outputs.c.job_id == job_id))
            if outputs:
                db.execute(job_outputs.insert(), [
                    {"job_id": job_id, "sop_instance_uid": sop, "series_uid": series_uid,
                     "path": str(path)} for sop, series_uid, path in outputs])

    def job_of_outputs(self, sop_uids: list[str], series_uids: Sequence[str] = ()
                       ) -> dict[str, Any] | None:
        """The newest job that wrote an instance or series of these UIDs, or None."""
        with self.engine.connect() as db:
            job_id = db.execute(sa.select(job_outputs.c.job_id).where(sa.or_(
                job_outputs.c.sop_instance_uid.in_(sop_uids),
                job_outputs.c.series_uid.in_(list(series_uids)))).order_by(
                job_outputs.c.job_id.desc()).limit(1)).scalar()
            if job_id is None:
                return None
            row = db.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
            return dict(row._mapping) if row is not None else None

    def is_output(self, sop_uid: str, series_uid: str = "") -> bool:
        """True when segnode wrote this instance, or an instance of this series."""
        with self.engine.connect() as db:
            return db.execute(sa.select(job_outputs.c.id).where(sa.or_(
                job_outputs.c.sop_instance_uid == sop_uid,
                job_outputs.c.series_uid == series_uid)).limit(1)).first() is not None

    def list_corrections(self, *, states: tuple[str, ...] = (), model: str | None = None,
                         since: float | None = None, until: float | None = None,
                         limit: int = 1000) -> list[dict[str, Any]]:
        """Examined SEGs, newest first, filtered by state, model pack and examination time."""
        query = sa.select(corrections).order_by(corrections.c.id.desc()).limit(limit)
        if states:
            query = query.where(corrections.c.state.in_(states))
        if model is not None:
            query = query.where(corrections.c.model == model)
        if since is not None:
            query = query.where(corrections.c.examined_at >= since)
        if until is not None:
            query = query.where(corrections.c.examined_at < until)
        with self.engine.connect() as db:
            rows = [dict(row._mapping) for row in db.execute(query)]
        for row in rows:
            row["unmapped"] = json.loads(row["unmapped"] or "[]")
        return rows

    def correction_metrics(self, *, correction_id: int | None = None,
                           model: str | None = None) -> list[dict[str, Any]]:
        """Per-structure metrics (of one correction, or of every correction of a pack)."""
        query = sa.select(correction_metrics, corrections.c.job_id,
                          corrections.c.source_series_uid).join(
            corrections, corrections.c.id == correction_metrics.c.correction_id).order_by(
            correction_metrics.c.examined_at, correction_metrics.c.label)
        if correction_id is not None:
            query = query.where(correction_metrics.c.correction_id == correction_id)
        if model is not None:
            query = query.where(correction_metrics.c.model == model)
        with self.engine.connect() as db:
            return [dict(row._mapping) for row in db.execute(query)]

    # Associations -------------------------------------------------------------------------

    def record_association(self, *, started_at: float, calling_ae: str, address: str,
                           files: int, failures: int, size_bytes: int, seconds: float,
                           result: str, keep: int = 10000) -> None:
        """Log one closed association (the dashboard's log keeps the newest ``keep``)."""
        with self.begin() as db:
            result_row = db.execute(associations.insert().values(
                started_at=started_at, calling_ae=calling_ae, address=address, files=files,
                failures=failures, bytes=size_bytes, seconds=seconds, result=result))
            newest = int(result_row.inserted_primary_key[0])
            if newest % 100 == 0:
                db.execute(associations.delete().where(associations.c.id <= newest - keep))

    def list_associations(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent associations, newest first."""
        with self.engine.connect() as db:
            rows = db.execute(sa.select(associations).order_by(associations.c.id.desc())
                              .limit(limit))
            return [dict(row._mapping) for row in rows]

    def received_since(self, since: float) -> tuple[int, int]:
        """Instances and bytes received since ``since`` (epoch seconds)."""
        with self.engine.connect() as db:
            row = db.execute(sa.select(sa.func.count(), sa.func.coalesce(
                sa.func.sum(instances.c.size_bytes), 0)).where(
                instances.c.received_at >= since)).one()
            return int(row[0]), int(row[1])

    # Node state ---------------------------------------------------------------------------

    def set_state(self, **values: str) -> None:
        """Store key/value facts about the running node (listener, device, pid, heartbeat)."""
        with self.begin() as db:
            for key, value in values.items():
                updated = db.execute(node_state.update().where(node_state.c.key == key)
                                     .values(value=str(value)))
                if updated.rowcount == 0:
                    db.execute(node_state.insert().values(key=key, value=str(value)))

    def get_state(self) -> dict[str, str]:
        """Every key/value fact the node stored."""
        with self.engine.connect() as db:
            return {row.key: row.value for row in db.execute(sa.select(node_state))}

    def workers(self, fresh_s: float) -> list[dict[str, Any]]:
        """Every live worker: the node's own (while its heartbeat is fresh), then the processes."""
        state = self.get_state()
        own_fresh = time.time() - float(state.get("heartbeat_at") or 0) < fresh_s
        own = json.loads(state.get("workers") or "[]") if own_fresh and state.get("pid") else []
        return own + self.worker_processes(fresh_s)

    def worker_processes(self, fresh_s: float) -> list[dict[str, Any]]:
        """The ``segnode worker`` processes whose heartbeat is under ``fresh_s`` old.

        Each writes ``worker:<pid>@<host>`` (:mod:`node.worker_process`): its
        name, device, memory, running job and heartbeat time.
        """
        found = []
        for key, value in sorted(self.get_state().items()):
            if key.startswith(WORKER_STATE_PREFIX) and value:
                entry = json.loads(value)
                if time.time() - float(entry.get("heartbeat_at", 0)) < fresh_s:
                    found.append(entry)
        return found


def _series_row(row: Any) -> SeriesRow:
    image_type = tuple(part for part in (row.image_type or "").split("\\") if part)
    return SeriesRow(
        series_uid=row.series_uid, study_uid=row.study_uid, modality=row.modality or "",
        description=row.description or "", body_part=row.body_part or "",
        image_type=image_type, sop_class_uid=row.sop_class_uid or "",
        manufacturer=row.manufacturer or "", n_instances=int(row.n),
        last_received_at=float(row.last_received_at), state=row.state,
    )
