"""Alembic environment: runs on the connection :func:`node.schema.upgrade` hands over."""

from __future__ import annotations

from alembic import context

from node.catalogue import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - segnode always passes its own connection
    raise RuntimeError("segnode's migrations run through node.schema.upgrade()")
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
