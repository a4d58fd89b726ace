"""Corrections (received DICOM-SEG examined as radiologists' corrections), their metrics,
and the DICOM files every job wrote.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 19:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("examined_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=64), server_default="", nullable=False),
        sa.Column("source_series_uid", sa.String(length=64), server_default="", nullable=False),
        sa.Column("modality", sa.String(length=16), server_default="", nullable=False),
        sa.Column("segments", sa.Integer(), server_default="0", nullable=False),
        sa.Column("unmapped", sa.Text(), server_default="[]", nullable=False),
        sa.Column("corrected_structures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("labels_path", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    with op.batch_alter_table("corrections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_corrections_examined_at"), ["examined_at"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_corrections_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_corrections_state"), ["state"], unique=False)
    op.create_table(
        "correction_metrics",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("correction_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("structure", sa.String(length=64), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("dice", sa.Float(), nullable=False),
        sa.Column("hd95_mm", sa.Float(), nullable=True),
        sa.Column("volume_ml", sa.Float(), nullable=False),
        sa.Column("corrected_volume_ml", sa.Float(), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=True),
        sa.Column("corrected_connected", sa.Boolean(), nullable=True),
        sa.Column("examined_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("correction_metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_correction_metrics_correction_id"),
                              ["correction_id"], unique=False)
        batch_op.create_index("ix_correction_metrics_model_structure",
                              ["model", "structure", "examined_at"], unique=False)
    op.create_table(
        "job_outputs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("job_outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_outputs_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_outputs_series_uid"), ["series_uid"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_job_outputs_sop_instance_uid"),
                              ["sop_instance_uid"], unique=False)


def downgrade() -> None:
    op.drop_table("job_outputs")
    op.drop_table("correction_metrics")
    op.drop_table("corrections")
