"""A retried activity must not write twice: each activity run twice with the same input
leaves the store as one run would (the second answers what the first recorded)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest_asyncio
from sqlalchemy import Engine
from temporalio.client import Client

from activities.mail import Mailer
from activities.referral import ReferralActivities
from domain import records
from domain.referral import HistoryEntry, Prospect, ReferralInput, ReferralSla, Referrer
from domain.routing import load_routing_rules
from domain.types import Product
from store.db import make_async_engine, make_session_factory
from store.models import EmployeeWorkload, LeadFeatureCount, Notification, Referral, ReferralHistory
from tests.helpers import Api, count
from workflows.starts import Starts


@pytest_asyncio.fixture
async def acts(database_url: str, client: Client, task_queue: str, worker: None) -> AsyncIterator[ReferralActivities]:
    """The referral activities, called directly (as a retrying worker would), on the test
    database; conversions open their opportunity on the session's worker."""
    engine = make_async_engine(database_url)
    yield ReferralActivities(
        make_session_factory(engine),
        Mailer(None, "test@localhost"),
        Starts(client, task_queue),
        referrer_window_days=90,
    )
    await engine.dispose()


def _open(referrer_id: str, state: str) -> records.OpenReferral:
    rid = f"ref_retry_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    rules = load_routing_rules()
    ref = ReferralInput(
        referral_id=rid,
        referrer=Referrer(type="employee", id=referrer_id),
        expressed_interest=Product.mortgage,
        prospect=Prospect(name="Retry Rita", state=state),
        state=state,
        source="employee",
        rules=rules,
        sla=ReferralSla(accept_seconds=60, followup_seconds=60),
    )
    return records.OpenReferral(
        input=ref,
        workflow_id=f"referral-{rid}",
        created=HistoryEntry(seq=1, status="created", at=now, actor=referrer_id),
        route=records.RouteReferral(
            referral_id=rid,
            rules=rules,
            facts=ref.facts(),
            exclude=[],
            seq=2,
            at=now,
            actor="needflow",
            accept_deadline=now + timedelta(minutes=1),
        ),
    )


async def test_open_route_decide_and_notify_twice_write_once(acts: ReferralActivities, api: Api, db: Engine) -> None:
    state = f"S-{uuid.uuid4().hex[:6]}"
    bob = await api.employee(name="Bob", email=f"bob.{state}@bank.example", states=[state])
    rec = _open(bob["id"], state)
    rid = rec.input.referral_id

    first = await acts.open_referral(rec)
    again = await acts.open_referral(rec)
    assert first == again and first.routed.decision.assignee_id == bob["id"]
    assert count(db, Referral, Referral.id == rid) == 1
    assert count(db, ReferralHistory, ReferralHistory.referral_id == rid) == 2
    assert _load(db, bob["id"]) == 1

    # A rejection and its re-routing, retried: Ann gets it once, Bob's load drops once.
    ann = await api.employee(name="Ann", email=f"ann.{state}@bank.example", states=[state])
    now = datetime.now(UTC)
    reroute = records.RouteReferral(
        referral_id=rid,
        preceding=HistoryEntry(seq=3, status="rejected", at=now, actor=bob["id"], note="busy"),
        rules=rec.route.rules,
        facts=rec.route.facts,
        exclude=[bob["id"]],
        seq=4,
        at=now,
        actor=bob["id"],
        accept_deadline=now + timedelta(minutes=1),
    )
    first_route = await acts.route_referral(reroute)
    assert await acts.route_referral(reroute) == first_route
    assert first_route.decision.assignee_id == ann["id"]
    assert count(db, ReferralHistory, ReferralHistory.referral_id == rid) == 4
    assert [_load(db, bob["id"]), _load(db, ann["id"])] == [0, 1]

    totals_before = _totals(db)
    closed = records.ReferralChange(
        referral_id=rid,
        entry=HistoryEntry(seq=5, status="closed", at=datetime.now(UTC), actor=ann["id"]),
        status="closed",
        assignee_id=ann["id"],
        close_reason="not moving",
        won=False,
    )
    await acts.record_change(closed)
    await acts.record_change(closed)
    assert count(db, ReferralHistory, ReferralHistory.referral_id == rid) == 5
    assert _totals(db) == (totals_before[0], totals_before[1] + 1)  # the lead model learned once
    assert _load(db, ann["id"]) == 0

    notice = records.ReferralNotice(referral_id=rid, kind="assigned", occasion="4", employee_id=ann["id"])
    await acts.notify(notice)
    await acts.notify(notice)
    assert count(db, Notification, Notification.id.like(f"referral:{rid}:assigned:%")) == 1


def _totals(db: Engine) -> tuple[int, int]:
    with db.connect() as c:
        row = c.execute(LeadFeatureCount.__table__.select().where(LeadFeatureCount.feature == "*")).first()
    return (row.won, row.lost) if row else (0, 0)


def _load(db: Engine, employee_id: str) -> int:
    with db.connect() as c:
        row = c.execute(EmployeeWorkload.__table__.select().where(EmployeeWorkload.employee_id == employee_id)).first()
    return row.open_referrals if row else 0
