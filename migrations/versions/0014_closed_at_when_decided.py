"""closed_at when decided: an opportunity has `closed_at` exactly when it is won or lost
(a CHECK), so "when was it won" is `closed_at` everywhere, one definition instead of
several fallbacks (the audit, campaigns, customer health and the daily review each had
their own for a decided row without one).

Every writer already set it (the stage change's activity, the import). Rows that break
the rule anyway are mended first, and what reads them may move:
- a decided row without `closed_at` gets its last checkpoint's time, else `opened_at`
  (the audit's old fallback, so its verdicts stay). The scorecards, which skipped such a
  row, now count it at that time; campaigns and customer health, which took `opened_at`
  for it, now take that time.
- an open row with a `closed_at` loses it (an open opportunity has not closed); nothing
  read it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 18:05:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "(status = 'open') = (closed_at IS NULL)"


def upgrade() -> None:
    op.execute(
        "UPDATE opportunities SET closed_at = COALESCE("
        "(SELECT max(c.entered_at) FROM checkpoints c WHERE c.opportunity_id = opportunities.id), opened_at) "
        "WHERE status <> 'open' AND closed_at IS NULL"
    )
    op.execute("UPDATE opportunities SET closed_at = NULL WHERE status = 'open' AND closed_at IS NOT NULL")
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.create_check_constraint(op.f("ck_opportunities_closed_at_when_decided"), CHECK)


def downgrade() -> None:
    with op.batch_alter_table("opportunities", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_opportunities_closed_at_when_decided"), type_="check")
