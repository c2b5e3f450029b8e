"""A retried activity must not write twice: each activity run twice with the same input
leaves the store as one run would (the second answers what the first recorded)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import Engine, make_url, select
from temporalio.client import Client

from activities import referral as referral_activities
from activities.errors import Overtaken
from activities.mail import Mailer
from activities.opportunity import OpportunityActivities
from activities.referral import ReferralActivities
from domain import records
from domain.ids import (
    consent_id,
    opportunity_workflow_id,
    referral_customer_id,
    referral_need_id,
    referral_opportunity_id,
)
from domain.invariants import InvariantBroken
from domain.opportunity import CheckpointView, OpportunityInput
from domain.process import load_catalog
from domain.referral import HistoryEntry, Prospect, ReferralInput, ReferralSla, Referrer, Routed
from domain.routing import load_routing_rules
from domain.types import ConsentChannel, Product, Trigger
from esign.local import LocalSigningProvider
from store.db import insert_if_missing, make_async_engine, make_session_factory
from store.models import (
    Checkpoint,
    Consent,
    Customer,
    EmployeeWorkload,
    Household,
    LeadFeatureCount,
    Need,
    Notification,
    Opportunity,
    ProcessedEvent,
    Referral,
    ReferralHistory,
    SignatureRequest,
)
from tests.helpers import Api, count, within
from workflows.opportunity import OpportunityWorkflow
from workflows.starts import Starts


@pytest_asyncio.fixture
async def acts(database_url: str, client: Client, task_queue: str, worker: None) -> AsyncIterator[ReferralActivities]:
    """The referral activities, called directly (as a retrying worker would), on the test
    database; conversions open their opportunity on the session's worker."""
    engine = make_async_engine(database_url)
    yield ReferralActivities(
        make_session_factory(engine),
        Mailer(),
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


def _rejected(rec: records.OpenReferral, by: str) -> records.RouteReferral:
    """The re-routing of `rec`'s referral after `by` rejected it (its entry 3, the new
    routing entry 4), never back to `by`."""
    now = datetime.now(UTC)
    return records.RouteReferral(
        referral_id=rec.input.referral_id,
        preceding=HistoryEntry(seq=3, status="rejected", at=now, actor=by, note="busy"),
        rules=rec.route.rules,
        facts=rec.route.facts,
        exclude=[by],
        seq=4,
        at=now,
        actor=by,
        accept_deadline=now + timedelta(minutes=1),
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
    reroute = _rejected(rec, bob["id"])
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

    # Each routing recorded its e-mail with it, once however often retried (Bob's, then Ann's);
    # the workflow's notify after it finds the e-mail there and adds none.
    notice = records.ReferralNotice(referral_id=rid, kind="assigned", occasion="4", employee_id=ann["id"])
    assert await acts.notify(notice) == 1
    await acts.notify(notice)
    assert count(db, Notification, Notification.id.like(f"referral:{rid}:assigned:4:%")) == 1
    assert count(db, Notification, Notification.id.like(f"referral:{rid}:assigned:%")) == 2


async def test_two_referrals_rerouted_crosswise_at_once_never_deadlock(
    acts: ReferralActivities, api: Api, db: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob rejects his referral while Ann rejects hers, at the same moment: each is re-routed
    to the other. Each re-routing locks two workload rows, the new assignee's (its claim)
    and the rejecter's (its count going down); taken in opposite orders, PostgreSQL found a
    deadlock and failed one of them (the activity's retry then absorbed it, a second
    late). Both are held here just after their claims, so that they meet."""
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite has one writer at a time: two transactions never hold row locks at once")
    state = f"S-{uuid.uuid4().hex[:6]}"
    bob = await api.employee(name="Bob", email=f"bob.{state}@bank.example", states=[state])
    bobs = _open(bob["id"], state)
    assert (await acts.open_referral(bobs)).routed.decision.assignee_id == bob["id"]
    ann = await api.employee(name="Ann", email=f"ann.{state}@bank.example", states=[state])
    anns = _open(ann["id"], state)
    assert (await acts.open_referral(anns)).routed.decision.assignee_id == ann["id"]  # the less loaded

    claim = referral_activities._claim
    claimed_so_far = 0
    both_claimed = asyncio.Event()

    async def claim_then_wait(*args: Any) -> bool:
        nonlocal claimed_so_far
        claimed = await claim(*args)
        claimed_so_far += 1
        if claimed_so_far == 2:
            both_claimed.set()
        with contextlib.suppress(TimeoutError):  # a routing that waits on a lock never comes
            async with asyncio.timeout(3):
                await both_claimed.wait()
        both_claimed.set()  # the one that gave up waiting lets the other through at once
        return claimed

    monkeypatch.setattr(referral_activities, "_claim", claim_then_wait)
    to_ann, to_bob = await within(
        asyncio.gather(
            acts.route_referral(_rejected(bobs, bob["id"])), acts.route_referral(_rejected(anns, ann["id"]))
        ),
        "both re-routings",
    )
    assert (to_ann.decision.assignee_id, to_bob.decision.assignee_id) == (ann["id"], bob["id"])
    assert [_load(db, bob["id"]), _load(db, ann["id"])] == [1, 1]


async def test_a_reassignment_beside_a_rerouting_between_the_same_two_never_deadlocks(
    acts: ReferralActivities, api: Api, db: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manager hands one referral from Zoe to Amy while Amy's rejected referral is
    re-routed to Zoe. The re-routing locks the two workload rows in id order (Amy's
    first); the reassignment wrote Zoe's count down, then Amy's up: crosswise. It is held
    a moment after its first write, so that the re-routing meets it."""
    if make_url(database_url).get_backend_name() != "postgresql":
        pytest.skip("SQLite has one writer at a time: two transactions never hold row locks at once")
    state = f"S-{uuid.uuid4().hex[:6]}"
    one = await api.employee(name="One", email=f"one.{state}@bank.example", states=[state])
    two = await api.employee(name="Two", email=f"two.{state}@bank.example", states=[state])
    amy, zoe = sorted([one["id"], two["id"]])  # Amy's id sorts first
    zoes, amys = _open(zoe, state), _open(amy, state)
    zoes.route.exclude, amys.route.exclude = [amy], [zoe]
    assert (await acts.open_referral(zoes)).routed.decision.assignee_id == zoe
    assert (await acts.open_referral(amys)).routed.decision.assignee_id == amy

    now = datetime.now(UTC)
    handed = records.ReferralChange(
        referral_id=zoes.input.referral_id,
        entry=HistoryEntry(seq=3, status="assigned", at=now, actor="manager", assignee_id=amy),
        status="assigned",
        assignee_id=amy,
    )
    rerouted = _rejected(amys, amy)
    bump = referral_activities._bump
    first_write = asyncio.Event()

    async def bump_then_hold(session: Any, *args: Any) -> None:
        await bump(session, *args)
        if not first_write.is_set():  # the reassignment's first write: let the re-routing start
            first_write.set()
            await asyncio.sleep(1)

    monkeypatch.setattr(referral_activities, "_bump", bump_then_hold)

    async def reroute_once_it_wrote() -> Routed:
        await first_write.wait()
        return await acts.route_referral(rerouted)

    _, to_zoe = await within(asyncio.gather(acts.record_change(handed), reroute_once_it_wrote()), "both")
    assert to_zoe.decision.assignee_id == zoe
    assert [_load(db, amy), _load(db, zoe)] == [1, 1]  # Zoe's handed on, Amy's re-routed to Zoe


async def test_an_opening_that_failed_half_way_is_done_once_by_its_retry(
    acts: ReferralActivities, api: Api, db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The e-mail's write fails after the claim, the referral and its history were written
    in the same transaction: nothing of it stays, and the retry writes it all once."""
    state = f"S-{uuid.uuid4().hex[:6]}"
    bob = await api.employee(name="Bob", email=f"bob.{state}@bank.example", states=[state])
    rec = _open(bob["id"], state)
    rid = rec.input.referral_id
    record_for = acts.mailer.record_for

    async def fails_once(*args: Any, **kwargs: Any) -> list[str]:
        monkeypatch.setattr(acts.mailer, "record_for", record_for)
        raise ConnectionError("the database went away mid-transaction")

    monkeypatch.setattr(acts.mailer, "record_for", fails_once)
    with pytest.raises(ConnectionError):
        await acts.open_referral(rec)
    assert (count(db, Referral, Referral.id == rid), _load(db, bob["id"])) == (0, 0)

    opened = await acts.open_referral(rec)
    assert opened.routed.decision.assignee_id == bob["id"]
    assert count(db, Referral, Referral.id == rid) == 1
    assert count(db, ReferralHistory, ReferralHistory.referral_id == rid) == 2
    assert count(db, Notification, Notification.id.like(f"referral:{rid}:%")) == 1
    assert _load(db, bob["id"]) == 1


async def test_two_attempts_of_an_opening_at_once_record_it_once(
    acts: ReferralActivities, api: Api, db: Engine
) -> None:
    """An attempt that timed out and runs on, racing its retry: whichever writes second
    finds the referral recorded and either answers it (it read it) or asks to be retried
    (`Overtaken`: it read it missing, then met it); never a second row, load or e-mail,
    and never an error that would stop the workflow for good."""
    state = f"S-{uuid.uuid4().hex[:6]}"
    bob = await api.employee(name="Bob", email=f"bob.{state}@bank.example", states=[state])
    rec = _open(bob["id"], state)
    rid = rec.input.referral_id

    both = await asyncio.gather(acts.open_referral(rec), acts.open_referral(rec), return_exceptions=True)
    answers = [r for r in both if isinstance(r, records.ReferralOpened)]
    assert answers and all(isinstance(r, records.ReferralOpened | Overtaken) for r in both), both
    assert await acts.open_referral(rec) == answers[0]  # the retry of an overtaken one
    assert count(db, Referral, Referral.id == rid) == 1
    assert count(db, ReferralHistory, ReferralHistory.referral_id == rid) == 2
    assert count(db, Notification, Notification.id.like(f"referral:{rid}:%")) == 1
    assert _load(db, bob["id"]) == 1


async def test_a_referral_missing_from_the_store_stops_its_activities_for_a_repair(
    acts: ReferralActivities, api: Api
) -> None:
    """A referral the store has lost (deleted by hand, a restore) is a broken invariant: the
    activity stops with it (non-retryable, the workflow waits for ops: activities/errors.py)
    instead of failing an assert on every retry for ever."""
    state = f"S-{uuid.uuid4().hex[:6]}"
    bob = await api.employee(name="Bob", email=f"bob.{state}@bank.example", states=[state])
    rec = _open(bob["id"], state)  # never recorded
    with pytest.raises(InvariantBroken, match="is not recorded"):
        await acts.route_referral(rec.route)
    change = records.ReferralChange(
        referral_id=rec.input.referral_id,
        entry=HistoryEntry(seq=3, status="accepted", at=datetime.now(UTC), actor=bob["id"], assignee_id=bob["id"]),
        status="accepted",
        assignee_id=bob["id"],
    )
    with pytest.raises(InvariantBroken, match="is not recorded"):
        await acts.record_change(change)


def _totals(db: Engine) -> tuple[int, int]:
    with db.connect() as c:
        row = c.execute(LeadFeatureCount.__table__.select().where(LeadFeatureCount.feature == "*")).first()
    return (row.won, row.lost) if row else (0, 0)


def _load(db: Engine, employee_id: str) -> int:
    with db.connect() as c:
        row = c.execute(EmployeeWorkload.__table__.select().where(EmployeeWorkload.employee_id == employee_id)).first()
    return row.open_referrals if row else 0


# ---------------------------------------------------------------- conversion


async def test_conversion_twice_makes_one_customer_household_need_and_opportunity(
    acts: ReferralActivities, api: Api, db: Engine, client: Client
) -> None:
    state = f"S-{uuid.uuid4().hex[:6]}"
    bob = await api.employee(name="Bob", email=f"bob.{state}@bank.example", states=[state])
    rec = _open(bob["id"], state)
    rid = rec.input.referral_id
    await acts.open_referral(rec)
    households, customers = count(db, Household), count(db, Customer)

    prepare = records.PrepareConversion(
        referral_id=rid, need_kind="buy_home", need_description="A first home", recorded_by=bob["id"], at=_NOW
    )
    # Twice at once (an attempt that timed out and runs on, beside its retry), then again.
    first, racing = await asyncio.gather(acts.prepare_conversion(prepare), acts.prepare_conversion(prepare))
    assert racing == first and await acts.prepare_conversion(prepare) == first
    assert (first.customer_id, first.need_id) == (referral_customer_id(rid), referral_need_id(rid))
    assert (count(db, Customer), count(db, Household)) == (customers + 1, households + 1)
    assert count(db, Need, Need.id == first.need_id) == 1

    opening = OpportunityInput(
        opportunity_id=referral_opportunity_id(rid),
        customer_id=first.customer_id,
        owner_id=bob["id"],
        need_id=first.need_id,
        product=Product.mortgage,
        amount=Decimal("500000.00"),
        referral_id=rid,
        opened_by=bob["id"],
        process=load_catalog(PROCESSES).latest(Product.mortgage),
    )
    await acts.start_opportunity(opening)
    await acts.start_opportunity(opening)
    assert count(db, Opportunity, Opportunity.referral_id == rid) == 1
    assert count(db, Checkpoint, Checkpoint.opportunity_id == opening.opportunity_id) == 1
    # One workflow, still open: the repeat found the first instead of starting another.
    handle = client.get_workflow_handle(opportunity_workflow_id(opening.opportunity_id))
    state = await within(handle.query(OpportunityWorkflow.current_state), "the opportunity's state")
    assert (state.stage, len(state.checkpoints)) == ("interested", 1)


# ---------------------------------------------------------------- opportunity activities


@pytest_asyncio.fixture
async def opp_acts(database_url: str) -> AsyncIterator[OpportunityActivities]:
    engine = make_async_engine(database_url)
    yield OpportunityActivities(
        make_session_factory(engine),
        LocalSigningProvider("http://testserver"),
        Mailer(),
        load_catalog(PROCESSES),
    )
    await engine.dispose()


async def _opening(api: Api) -> tuple[dict, dict, records.OpenOpportunity]:
    """An owner, a customer, and the opening of a mortgage of hers (not recorded yet)."""
    owner = await api.employee(name="Olga", email=f"olga-{uuid.uuid4().hex[:6]}@bank.example")
    customer, need = await api.customer_with_need(owner["id"])
    oid = f"opp_retry_{uuid.uuid4().hex}"
    return (
        owner,
        customer,
        records.OpenOpportunity(
            opportunity_id=oid,
            workflow_id=f"opportunity-{oid}",
            customer_id=customer["id"],
            owner_id=owner["id"],
            need_id=need["id"],
            product=Product.mortgage,
            process_version=1,
            amount=Decimal("300000.00"),
            referral_id=None,
            campaign_id=None,
            probability=10,
            first_checkpoint=_checkpoint(1, "interested"),
        ),
    )


async def test_every_opportunity_activity_twice_writes_once(
    opp_acts: OpportunityActivities, api: Api, db: Engine
) -> None:
    owner, customer, opening = await _opening(api)
    oid = opening.opportunity_id
    # Twice at once (an attempt that timed out and runs on, beside its retry), then again.
    await asyncio.gather(opp_acts.open_opportunity(opening), opp_acts.open_opportunity(opening))
    await opp_acts.open_opportunity(opening)
    assert count(db, Opportunity, Opportunity.id == oid) == 1
    assert _checkpoints(db, oid) == ["interested"]

    # An event's stage change, with the event and a consent: one of each however often.
    change = records.StageChange(
        opportunity_id=oid,
        checkpoint=_checkpoint(2, "searching"),
        probability=20,
        status="open",
        consent=records.ConsentRecord(
            consent_id=consent_id(oid, 2),
            customer_id=customer["id"],
            product=Product.mortgage,
            channel=ConsentChannel.sms,
            evidence={"message_id": "SM-1"},
            granted_at=_NOW,
        ),
        processed_event=records.ProcessedEventRecord(event_id=f"evt-{oid}", type="x", body_sha256="0" * 64),
    )
    await asyncio.gather(opp_acts.record_stage_change(change), opp_acts.record_stage_change(change))
    await opp_acts.record_stage_change(change)
    assert _checkpoints(db, oid) == ["interested", "searching"]
    assert count(db, Consent, Consent.opportunity_id == oid) == 1
    assert count(db, ProcessedEvent, ProcessedEvent.subject_id == oid) == 1

    ask = records.SignatureRequestInput(opportunity_id=oid, request_no=1, template="mortgage_closing", subject="Sign")
    # Twice at once: the second waits on the opportunity's lock (SQLite: the write gate's
    # turn) and returns the first's request.
    sent, racing = await asyncio.gather(opp_acts.request_signature(ask), opp_acts.request_signature(ask))
    assert racing == sent
    assert await opp_acts.request_signature(ask) == sent
    assert count(db, SignatureRequest, SignatureRequest.opportunity_id == oid) == 1

    failure = records.SignatureFailureRecord(
        opportunity_id=oid, envelope_id=sent.envelope_id, status="declined", reason="no", owner_id=owner["id"]
    )
    await opp_acts.record_signature_failure(failure)
    await opp_acts.record_signature_failure(failure)
    assert count(db, Notification, Notification.id.like(f"signature-declined-{sent.envelope_id}:%")) == 1

    # A stage that sends documents (the lean way): the stage change and the signature
    # request in one activity, retried: one checkpoint, one envelope, one link e-mailed.
    resend = records.SignatureRequestInput(
        opportunity_id=oid, request_no=2, template="mortgage_closing", subject="Sign"
    )
    sending = records.StageChange(
        opportunity_id=oid,
        checkpoint=_checkpoint(3, "applied"),
        probability=60,
        status="open",
        signature_request=resend,
    )
    again = await opp_acts.record_stage_change(sending)
    assert again is not None and again.status == "sent" and again.envelope_id != sent.envelope_id
    assert await opp_acts.record_stage_change(sending) == again
    assert _checkpoints(db, oid) == ["interested", "searching", "applied"]
    assert count(db, SignatureRequest, SignatureRequest.opportunity_id == oid) == 2
    assert count(db, Notification, Notification.id.like(f"signature-link-{again.envelope_id}%")) == 1


async def test_a_close_keeps_the_instant_it_was_entered_as_closed_at(
    opp_acts: OpportunityActivities, api: Api, db: Engine
) -> None:
    """closed_at is the closing checkpoint's instant, however its offset is written: the
    reports bucket wins and losses by it (store/scorecards.py, by month)."""
    _, _, opening = await _opening(api)
    await opp_acts.open_opportunity(opening)
    at_noon_in_kyiv = _NOW.astimezone(timezone(timedelta(hours=2)))  # 12:00+02:00, the same instant
    closing = CheckpointView(
        seq=2, stage="closed_lost", entered_at=at_noon_in_kyiv, trigger=Trigger.manual, actor="someone"
    )
    await opp_acts.record_stage_change(
        records.StageChange(
            opportunity_id=opening.opportunity_id,
            checkpoint=closing,
            probability=0,
            status="lost",
            lost_reason="chose another bank",
        )
    )
    # Found by its instant, as the reports find it (SQLite compares the stored text).
    in_that_hour = select(Opportunity.status, Opportunity.closed_at).where(
        Opportunity.id == opening.opportunity_id,
        Opportunity.closed_at >= _NOW,
        Opportunity.closed_at < _NOW + timedelta(hours=1),
    )
    with db.connect() as c:
        assert c.execute(in_that_hour).all() == [("lost", _NOW)]


_NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
PROCESSES = Path(__file__).resolve().parent.parent / "processes"


def _checkpoint(seq: int, stage: str) -> CheckpointView:
    return CheckpointView(seq=seq, stage=stage, entered_at=_NOW, trigger=Trigger.manual, actor="someone")


def _checkpoints(db: Engine, opportunity_id: str) -> list[str]:
    with db.connect() as c:
        rows = c.execute(
            Checkpoint.__table__.select().where(Checkpoint.opportunity_id == opportunity_id).order_by(Checkpoint.seq)
        )
        return [r.stage for r in rows]


async def test_insert_if_missing_says_whether_this_call_inserted(database_url: str, api: Api) -> None:
    """On either database (PostgreSQL's driver reports an INSERT's count only when
    SQLAlchemy is asked to keep it): the first call inserts, the repeat writes nothing."""
    bob = await api.employee(name="Bob", email=f"bob.{uuid.uuid4().hex[:6]}@bank.example")
    engine = make_async_engine(database_url)
    try:
        async with make_session_factory(engine).begin() as session:
            row = {"employee_id": bob["id"], "open_referrals": 0}
            assert [await insert_if_missing(session, EmployeeWorkload, **row) for _ in range(2)] == [True, False]
    finally:
        await engine.dispose()
