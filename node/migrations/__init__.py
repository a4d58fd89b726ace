"""Alembic migrations of the catalogue (SQLite and PostgreSQL); applied by :mod:`node.schema`."""
