"""The catalogue's schema comes from its Alembic migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from node import schema
from node.catalogue import Catalogue, jobs, metadata


def test_a_new_catalogue_is_at_head_and_matches_the_tables_of_the_code(database_url: str) -> None:
    catalogue = Catalogue(database_url)
    try:
        assert schema.current_revision(catalogue.engine) == schema.head_revision()
        with catalogue.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    finally:
        catalogue.close()


def test_processes_opening_one_catalogue_together_migrate_it_once(database_url: str) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Catalogue(database_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    engine = sa.create_engine(Catalogue(database_url).url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
            (schema.head_revision(),)]
    engine.dispose()


def test_a_catalogue_made_before_migrations_is_stamped_and_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # the baseline tables, as create_all made them
        config = schema._config(connection)
        from alembic import command

        command.upgrade(config, "0001")
        connection.execute(sa.text("DROP TABLE alembic_version"))
        connection.execute(sa.text(
            "INSERT INTO jobs (series_uid, study_uid, series_uids, rule, seg_type, destinations,"
            " state, attempts, reason, result, output_dir, created_at) VALUES ('1.2', '', '[]',"
            " 'mr', 'binary', '[]', 'done', 1, '', '', '', 1.0)"))
    engine.dispose()
    catalogue = Catalogue(url)
    try:
        assert schema.current_revision(catalogue.engine) == schema.head_revision()
        with catalogue.engine.connect() as connection:
            row = connection.execute(sa.select(jobs)).one()
        assert (row.series_uid, row.state, row.priority, row.lease_owner) == ("1.2", "done", 1, "")
    finally:
        catalogue.close()
