"""team version: a counter the database itself raises on every write to `employees`, so
routing can tell whether its cached team is still the team from one small row instead of
reading every employee (issue 10: routing took ~1.3 ms of each referral's ~10 to build its
cache key from the whole table).

Triggers, not application code, keep it: every writer of employees (the API, the import,
a seed, an operator's SQL) raises it alike, and none can forget; the raise commits with
the change it counts, so a routing never sees one without the other. SQLite has one
writer at a time: a row trigger per INSERT, UPDATE, DELETE. On PostgreSQL the trigger is a
deferred constraint trigger, run at commit: a transaction locks the one `team_version`
row only once it has taken every employee row it writes, so two writers of employees
wait for each other's commit, never in a deadlock (an immediate trigger would lock it at
the first write: one transaction writing employee `a` then `b`, another locking `b` then
writing it, deadlocked). Like SQLite's, it fires per row written: a statement that
changes no row raises nothing. One consequence: on PostgreSQL the raise is not visible
inside the transaction that changes employees, only from its commit on, so a routing
must not run in the same transaction as an employee change (none does: deactivation
commits first, then re-routes through the workflows, api/deactivation.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 17:25:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = "UPDATE team_version SET version = version + 1"
_SQLITE_EVENTS = ("insert", "update", "delete")


def upgrade() -> None:
    op.create_table(
        "team_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_team_version_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_team_version")),
    )
    op.execute("INSERT INTO team_version (id, version) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION bump_team_version() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {_BUMP}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE CONSTRAINT TRIGGER employees_team_version AFTER INSERT OR UPDATE OR DELETE ON employees "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bump_team_version()"
        )
    else:
        for event in _SQLITE_EVENTS:
            op.execute(
                f"CREATE TRIGGER employees_team_version_{event} AFTER {event.upper()} ON employees BEGIN {_BUMP}; END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER employees_team_version ON employees")
        op.execute("DROP FUNCTION bump_team_version()")
    else:
        for event in _SQLITE_EVENTS:
            op.execute(f"DROP TRIGGER employees_team_version_{event}")
    op.drop_table("team_version")
