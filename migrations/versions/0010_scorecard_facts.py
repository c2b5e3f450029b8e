"""scorecard facts: what the scorecards read of each customer-health event, as columns
beside its JSON (`domain.customer_health.signal_facts`) with the time it was received
(its processed_events row's), filled here for the rows already recorded; and two partial
indexes of won opportunities, by owner and by customer (issue 8, item 9).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 08:41:53.353005+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from domain.customer_health import signal_facts

#: Rows read and updated per round trip while filling the new columns.
BATCH = 5000


revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("customer_signals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("received_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("month", sa.String(length=7), nullable=True))
        batch_op.add_column(sa.Column("score", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("transactions", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("opportunity_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("on_time", sa.Boolean(), nullable=True))

    _fill_facts()

    with op.batch_alter_table("customer_signals", schema=None) as batch_op:
        batch_op.alter_column("received_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.alter_column("month", existing_type=sa.String(length=7), nullable=False)
        batch_op.create_index("ix_customer_signals_type_month", ["type", "month"], unique=False)

    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.create_index(
            "ix_opportunities_won_owner_customer",
            ["owner_id", "customer_id", "closed_at"],
            unique=False,
            postgresql_where=sa.text("status = 'won'"),
            postgresql_include=["amount"],
            sqlite_where=sa.text("status = 'won'"),
        )
        batch_op.create_index(
            "ix_opportunities_won_customer_owner",
            ["customer_id", "owner_id", "closed_at"],
            unique=False,
            postgresql_where=sa.text("status = 'won'"),
            postgresql_include=["amount"],
            sqlite_where=sa.text("status = 'won'"),
        )


def _fill_facts() -> None:
    """Every recorded event's facts, by the function the events API calls for new ones,
    and its receiving time, in batches by event id."""
    from store.models import JSONDoc, UTCDateTime

    signals = sa.table(
        "customer_signals",
        sa.column("event_id", sa.String),
        sa.column("type", sa.String),
        sa.column("data", JSONDoc),
        sa.column("occurred_at", UTCDateTime()),
        sa.column("received_at", UTCDateTime()),
        sa.column("month", sa.String),
        sa.column("score", sa.Integer),
        sa.column("transactions", sa.Integer),
        sa.column("opportunity_id", sa.String),
        sa.column("on_time", sa.Boolean),
    )
    processed = sa.table("processed_events", sa.column("id", sa.String), sa.column("processed_at", UTCDateTime()))
    fill = (
        signals.update()
        .where(signals.c.event_id == sa.bindparam("id"))
        .values(
            received_at=sa.bindparam("r", type_=UTCDateTime()),
            month=sa.bindparam("m"),
            score=sa.bindparam("s"),
            transactions=sa.bindparam("t"),
            opportunity_id=sa.bindparam("o"),
            on_time=sa.bindparam("ot"),
        )
    )
    conn = op.get_bind()
    last = ""
    while True:
        rows = conn.execute(
            sa.select(
                signals.c.event_id, signals.c.type, signals.c.data, signals.c.occurred_at, processed.c.processed_at
            )
            .join(processed, processed.c.id == signals.c.event_id)
            .where(signals.c.event_id > last, processed.c.id > last)  # both sides seek, not scan
            .order_by(signals.c.event_id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        params = []
        for event_id, event_type, data, occurred_at, received_at in rows:
            f = signal_facts(event_type, data, occurred_at)
            params.append(
                {
                    "id": event_id,
                    "r": received_at,
                    "m": f.month,
                    "s": f.score,
                    "t": f.transactions,
                    "o": f.opportunity_id,
                    "ot": f.on_time,
                }
            )
        conn.execute(fill, params)
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_opportunities_won_owner_customer",
            postgresql_where=sa.text("status = 'won'"),
            postgresql_include=["amount"],
            sqlite_where=sa.text("status = 'won'"),
        )
        batch_op.drop_index(
            "ix_opportunities_won_customer_owner",
            postgresql_where=sa.text("status = 'won'"),
            postgresql_include=["amount"],
            sqlite_where=sa.text("status = 'won'"),
        )

    with op.batch_alter_table("customer_signals", schema=None) as batch_op:
        batch_op.drop_index("ix_customer_signals_type_month")
        batch_op.drop_column("on_time")
        batch_op.drop_column("opportunity_id")
        batch_op.drop_column("transactions")
        batch_op.drop_column("score")
        batch_op.drop_column("month")
        batch_op.drop_column("received_at")
