"""outbox delivery: each outbox message's delivery state, for the sender that delivers it
apart from the change that recorded it (issue 9, item 2; domain/mail.py defines the
statuses). A message sent already is `sent`; any other is `pending`, due at once (with
SMTP configured the sender delivers it; without, it stays in the outbox as before).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 09:15:45.878329+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=16), server_default="pending", nullable=False))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("attempt_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))

    outbox = sa.table(
        "outbox",
        sa.column("status", sa.String),
        sa.column("attempts", sa.Integer),
        sa.column("sent_at", sa.DateTime(timezone=True)),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("next_attempt_at", sa.DateTime(timezone=True)),
    )
    op.execute(outbox.update().values(next_attempt_at=outbox.c.created_at))
    op.execute(outbox.update().where(outbox.c.sent_at.is_not(None)).values(status="sent", attempts=1))

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("next_attempt_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_index("ix_outbox_status_created_at", ["status", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_status_created_at")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("attempt_id")
        batch_op.drop_column("last_error")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("status")
