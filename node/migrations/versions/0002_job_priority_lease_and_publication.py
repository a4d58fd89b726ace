"""Jobs get a priority, a worker lease and a publication time; instances an index on arrival.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 06:26:19.088974
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_received_at'), ['received_at'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=128), server_default='', nullable=False))
        batch_op.add_column(sa.Column('lease_until', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('published_at', sa.Float(), nullable=True))
        batch_op.create_index('ix_jobs_claim', ['state', 'priority', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_claim')
        batch_op.drop_column('published_at')
        batch_op.drop_column('lease_until')
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('priority')

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_received_at'))

