"""The Alembic migrations build exactly the schema `store.models` describes, both ways, and
that schema stores what the models hand it. Runs on SQLite, or on PostgreSQL when
DATABASE_URL names a server (each test gets a fresh database there)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, column, inspect, select, table, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.db import make_sync_engine
from store.migrate import alembic_config, upgrade
from store.models import (
    Base,
    Checkpoint,
    Customer,
    Employee,
    Household,
    JSONDoc,
    Need,
    Opportunity,
    TeamVersion,
    UTCDateTime,
)
from tests import dbutil


@pytest.fixture
def database_url() -> Iterator[str]:
    with dbutil.fresh_database_url(dbutil.test_database_base_url()) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


def test_head_matches_models(database_url: str, engine: Engine) -> None:
    upgrade(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], "models and migrations disagree; see migrations/README.md:\n" + "\n".join(map(repr, diff))


def test_downgrade_to_base_and_back(database_url: str, engine: Engine) -> None:
    upgrade(database_url)
    command.downgrade(alembic_config(database_url), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}  # alembic keeps its own table
    upgrade(database_url)
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}


def test_checkpoint_round_trip(database_url: str, engine: Engine) -> None:
    upgrade(database_url)
    entered_at = datetime(2025, 3, 30, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    evidence = {"note": "signed – ünïcode", "amount": 1.5, "documents": ["a", "b"], "ok": True}
    rows = [
        Household(id="h1", name="Doe"),
        Customer(id="c1", household_id="h1", name="Jane Doe"),
        Employee(id="e1", name="Sam", email="sam@bank.test", role="banker", line_of_business="retail", capacity=10),
        Need(id="n1", customer_id="c1", kind="mortgage", description="first home", recorded_by="e1"),
        Opportunity(
            id="o1",
            customer_id="c1",
            product="mortgage",
            process_version=1,
            owner_id="e1",
            need_id="n1",
            amount=Decimal("250000.00"),
            stage="discovery",
            probability=10,
            status="open",
            workflow_id="opportunity-o1",
            opened_at=entered_at,
        ),
        Checkpoint(
            opportunity_id="o1",
            seq=1,
            stage="discovery",
            entered_at=entered_at,
            trigger="signal",
            actor="e1",
            evidence=evidence,
        ),
    ]
    with Session(engine) as session, session.begin():
        for row in rows:  # the models declare no relationships to order the inserts by
            session.add(row)
            session.flush()

    with Session(engine) as session:
        checkpoint = session.scalars(select(Checkpoint)).one()
        opportunity = session.get_one(Opportunity, "o1")
    assert checkpoint.entered_at == entered_at
    assert checkpoint.entered_at.tzinfo == UTC
    assert checkpoint.evidence == evidence
    assert opportunity.amount == Decimal("250000.00")


def test_0010_fills_the_scorecard_facts_of_events_recorded_before_it(database_url: str, engine: Engine) -> None:
    """The facts the scorecards read (domain.customer_health.signal_facts) are filled in for
    every event already recorded, by the same function the events API calls for new ones."""
    upgrade(database_url, "0009")
    at = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    events = {
        "ev-nps": ("nps.response", {"score": 9, "comment": "great"}),
        "ev-act": ("account.activity", {"product": "checking", "period": "2026-09", "transactions": 3}),
        "ev-pay": (
            "mortgage.payment",
            {"opportunity_id": "o1", "due_date": "2026-11-01", "paid_date": "2026-10-30T23:00:00-05:00", "amount": "1"},
        ),
    }
    # The table as 0009 left it (the model has the new columns).
    signals_0009 = table(
        "customer_signals",
        column("event_id"),
        column("customer_id"),
        column("type"),
        column("data", JSONDoc),
        column("occurred_at", UTCDateTime()),
    )
    with engine.begin() as conn:
        conn.execute(Base.metadata.tables["households"].insert(), [{"id": "h1", "name": "Doe", "created_at": at}])
        conn.execute(
            Base.metadata.tables["customers"].insert(),
            [{"id": "c1", "household_id": "h1", "name": "Jane Doe", "created_at": at}],
        )
        for event_id, (kind, data) in events.items():
            conn.execute(
                Base.metadata.tables["processed_events"].insert(),
                [{"id": event_id, "type": kind, "subject_id": "c1", "body_sha256": "x", "processed_at": at}],
            )
            conn.execute(
                signals_0009.insert(),
                [{"event_id": event_id, "customer_id": "c1", "type": kind, "data": data, "occurred_at": at}],
            )
    upgrade(database_url)
    signals = Base.metadata.tables["customer_signals"]
    with engine.connect() as conn:
        got = {
            r.event_id: (r.month, r.score, r.transactions, r.opportunity_id, r.on_time)
            for r in conn.execute(select(signals))
        }
        received = set(conn.scalars(select(signals.c.received_at)))
    assert received == {at}  # when each was received: its processed_events row's time
    assert got == {
        "ev-nps": ("2026-10", 9, None, None, None),  # the UTC month it occurred in
        "ev-act": ("2026-09", None, 3, None, None),  # the month it reports on
        "ev-pay": ("2026-11", None, None, "o1", True),  # the month it is due in; paid on the 30th as written
    }


def test_0012_marks_the_outbox_messages_sent_before_it_sent_and_the_others_pending(
    database_url: str, engine: Engine
) -> None:
    """Each message's delivery state: one sent before the sender existed is `sent` (one
    attempt); any other is `pending`, due at once (domain/mail.py)."""
    upgrade(database_url, "0011")
    at = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    outbox_0011 = table(
        "outbox",
        column("id"),
        column("to_address"),
        column("subject"),
        column("body"),
        column("created_at", UTCDateTime()),
        column("sent_at", UTCDateTime()),
    )
    with engine.begin() as conn:
        conn.execute(
            outbox_0011.insert(),
            [
                {
                    "id": "m-sent",
                    "to_address": "a@bank.test",
                    "subject": "s",
                    "body": "b",
                    "created_at": at,
                    "sent_at": at + timedelta(seconds=1),
                },
                {
                    "id": "m-kept",
                    "to_address": "b@bank.test",
                    "subject": "s",
                    "body": "b",
                    "created_at": at,
                    "sent_at": None,
                },
            ],
        )
    upgrade(database_url)
    outbox = Base.metadata.tables["outbox"]
    with engine.connect() as conn:
        got = {r.id: (r.status, r.attempts, r.next_attempt_at) for r in conn.execute(select(outbox))}
    assert got == {"m-sent": ("sent", 1, at), "m-kept": ("pending", 0, at)}


def test_every_write_to_employees_raises_the_team_version(database_url: str, engine: Engine) -> None:
    """Routing's team cache trusts `team_version` (migration 0013's triggers): whoever
    writes employees, by ORM or plain SQL, an insert, an update or a delete raises it."""
    upgrade(database_url)

    def version() -> int:
        with engine.connect() as conn:
            return conn.scalar(select(TeamVersion.version))

    seen = [version()]
    with Session(engine) as s, s.begin():
        s.add(
            Employee(id="e1", name="Sam", email="sam@bank.test", role="banker", line_of_business="retail", capacity=5)
        )
    seen.append(version())
    for sql in ("UPDATE employees SET capacity = 6 WHERE id = 'e1'", "DELETE FROM employees WHERE id = 'e1'"):
        with engine.begin() as conn:
            conn.execute(text(sql))
        seen.append(version())
    assert seen == sorted(set(seen)) and len(seen) == 4, seen  # each write raised it


def test_a_decided_opportunity_has_closed_at_and_old_rows_get_one(database_url: str, engine: Engine) -> None:
    """Migration 0014: "when it was won" is `closed_at` everywhere, so the database keeps
    one on every decided row and none on an open one; rows recorded before without one get
    their last checkpoint's time (else `opened_at`), what the audit read for them."""
    command.upgrade(alembic_config(database_url), "0013")
    opened = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def opportunity(opp_id: str, status: str, closed_at: datetime | None = None) -> Opportunity:
        return Opportunity(
            id=opp_id, customer_id="c1", product="mortgage", process_version=1, owner_id="e1", stage="x",
            probability=0, status=status, workflow_id=f"wf-{opp_id}", opened_at=opened, closed_at=closed_at,
        )  # fmt: skip

    with Session(engine) as s, s.begin():
        s.add(Household(id="h1", name="Doe"))
        s.flush()
        s.add(Customer(id="c1", household_id="h1", name="Jane Doe"))
        s.add(
            Employee(id="e1", name="Sam", email="sam@bank.test", role="banker", line_of_business="retail", capacity=5)
        )
        s.flush()
        s.add_all(
            [opportunity("won-with-checkpoint", "won"), opportunity("lost-bare", "lost"), opportunity("open", "open")]
        )
        s.add(opportunity("open-stamped", "open", opened + timedelta(days=1)))  # inconsistent: it is not closed
        s.flush()
        s.add(Checkpoint(opportunity_id="won-with-checkpoint", seq=1, stage="closed_won",
                         entered_at=opened + timedelta(days=3), trigger="event", actor="e1"))  # fmt: skip
    upgrade(database_url)
    with engine.connect() as conn:
        closed = dict(conn.execute(select(Opportunity.id, Opportunity.closed_at)).all())
    assert closed == {
        "won-with-checkpoint": opened + timedelta(days=3),
        "lost-bare": opened,
        "open": None,
        "open-stamped": None,
    }

    for opp_id, status, closed_at in (("won-bare", "won", None), ("open-closed", "open", opened)):
        with pytest.raises(IntegrityError), Session(engine) as s, s.begin():
            s.add(opportunity(opp_id, status, closed_at))
