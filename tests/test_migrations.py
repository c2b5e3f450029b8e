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
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session

from store.db import make_sync_engine
from store.migrate import alembic_config, upgrade
from store.models import Base, Checkpoint, Customer, Employee, Household, Need, Opportunity
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
