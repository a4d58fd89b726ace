"""Bringing a catalogue's schema to the current version with its Alembic migrations.

Every process that opens the catalogue calls :func:`upgrade`; on PostgreSQL an
advisory lock makes processes starting together take turns, so exactly one
applies each migration. A SQLite file made before segnode had migrations
(tables but no ``alembic_version``) is stamped as the baseline first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

__all__ = ["upgrade", "current_revision", "head_revision"]

_MIGRATIONS = Path(__file__).with_name("migrations")
_BASELINE = "0001"
#: pg_advisory_xact_lock key of schema changes (any constant shared by all processes).
_SCHEMA_LOCK = 0x5E6_0001


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration shipped with this version of segnode."""
    head = ScriptDirectory(str(_MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration a database is at; None when it has none (empty, or pre-migration)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _write_transaction(connection: Connection) -> Iterator[None]:
    # segnode_write: the catalogue's SQLite hook begins with BEGIN IMMEDIATE, so two
    # processes never both read "no tables" and then both create them.
    connection.execution_options(segnode_write=True)
    with connection.begin():
        yield


def upgrade(engine: Engine) -> None:
    """Apply every migration the database lacks (nothing when it is at head)."""
    with engine.connect() as connection, _write_transaction(connection):
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": _SCHEMA_LOCK})
        config = _config(connection)
        revision = MigrationContext.configure(connection).get_current_revision()
        if revision is None and sa.inspect(connection).has_table("jobs"):
            command.stamp(config, _BASELINE)  # made by create_all before migrations existed
        if revision != head_revision():
            command.upgrade(config, "head")
