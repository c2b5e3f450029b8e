"""Scheduled work (workflows/schedules.py, workflows/daily.py, activities/daily.py): the daily
review's Temporal Schedule is created once however often the worker starts, and the
review itself — run directly on the session worker, as the schedule would start it —
e-mails each manager the new exceptions of their team once, and repairs the lead model.

The session database is shared by every test: the review is narrowed to this test's
managers (`manager_ids`), and the lead model is compared with what the decided referrals
in the store, whoever made them, say it must be."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session
from temporalio.client import Client, ScheduleActionStartWorkflow

from activities.daily import new_findings
from config import PROJECT_ROOT, Settings
from domain.daily import DailyReviewInput, DailyReviewResult
from domain.process import load_catalog
from domain.scoring import FEATURES, LeadModel
from domain.types import Product
from store.audit import CheckpointFact, ConsentFact, OpportunityFacts
from store.keys import hash_key
from store.models import (
    ApiKey,
    AuditFinding,
    Checkpoint,
    Consent,
    Customer,
    EventClaim,
    Household,
    IdempotencyRecord,
    LeadFeatureCount,
    Need,
    Notification,
    Opportunity,
    Referral,
)
from store.upkeep import CLAIM_RETENTION, IDEMPOTENCY_RETENTION
from tests.helpers import Api, Inbox, count, unique, until, within, workflow_ids
from workflows.daily import SCHEDULED_START_TIME, DailyReviewWorkflow
from workflows.schedules import DAILY_REVIEW_SCHEDULE_ID, daily_review_schedule, ensure_schedules

MORTGAGE: dict[str, dict[str, Any]] = {
    "interested": {},
    "searching": {"realtor": "Jane Realty"},
    "applied": {"application_id": "APP-1"},
    "approved": {"approval_id": "APR-1"},
    "closed_won": {"envelope_id": "env-1", "document_sha256": "ab" * 32},
}
WON = list(MORTGAGE)


# ---------------------------------------------------------------- the schedule


async def test_ensure_schedules_creates_one_daily_schedule_and_leaves_it_as_is(
    client: Client, settings: Settings, task_queue: str
) -> None:
    schedule_id = unique("daily-review-test")
    assert await within(ensure_schedules(client, task_queue, settings, daily_review_id=schedule_id), "create") == [
        schedule_id
    ]
    handle = client.get_schedule_handle(schedule_id)
    try:
        await handle.pause(note="paused by hand")  # a change made in the Web UI
        assert await within(ensure_schedules(client, task_queue, settings, daily_review_id=schedule_id), "again") == []

        desc = await within(handle.describe(), "describe")
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == ("DailyReviewWorkflow", task_queue)
        assert desc.schedule.state.paused and desc.schedule.state.note == "paused by hand"  # left as it was
        assert desc.schedule.policy.overlap.name == "SKIP"
        (calendar,) = desc.schedule.spec.calendars
        assert [(r.start, r.end) for r in calendar.hour] == [(6, 6)]
        assert [(r.start, r.end) for r in calendar.minute] == [(0, 0)]
        assert [(r.start, r.end) for r in calendar.day_of_month] == [(1, 31)]
        assert "new exceptions" in (await desc.memo_value("description"))

        async def listed() -> list[str]:
            return [s.id async for s in await client.list_schedules() if s.id == schedule_id]

        assert await until(listed, "the schedule in the schedule list") == [schedule_id]

        await handle.unpause()
        desc = await within(handle.describe(), "describe")
        first, second = desc.info.next_action_times[:2]
        assert (first.astimezone(UTC).hour, first.minute, first.second) == (6, 0, 0)
        assert second - first == timedelta(days=1)
    finally:
        await within(handle.delete(), "delete the test's schedule")


# ---------------------------------------------------------------- what "new" means, pure


def test_an_exception_is_new_in_the_window_its_rule_was_broken() -> None:
    since, until_ = datetime(2026, 3, 2, 6, tzinfo=UTC), datetime(2026, 3, 3, 6, tzinfo=UTC)
    opened = since - timedelta(days=3)
    cps = (
        CheckpointFact(1, "interested", opened, {}),
        CheckpointFact(2, "approved", since + timedelta(hours=1), {"approval_id": "A"}),
    )
    opp = OpportunityFacts(
        id="o",
        customer_id="c",
        product="mortgage",
        owner_id="e",
        status="open",
        opened_at=opened,
        need_recorded_at=opened - timedelta(days=1),
        need_kind="buy_home",
        checkpoints=cps,
        process=load_catalog(PROJECT_ROOT / "processes").get(Product.mortgage, 1),
    )
    assert [f.rule for f in new_findings(opp, since, until_)] == ["stage_out_of_order"]
    # The next day, the same exception is no longer new; the day before, it had not happened yet.
    assert new_findings(opp, until_, until_ + timedelta(days=1)) == []
    assert new_findings(opp, since - timedelta(days=1), since) == []
    # Won before the window without consent: old. Won within it: new.
    won = replace(opp, checkpoints=cps[:1], status="won", closed_at=since - timedelta(hours=1))
    assert new_findings(won, since, until_) == []
    won_today = replace(won, closed_at=since + timedelta(hours=2))
    assert [f.rule for f in new_findings(won_today, since, until_)] == ["consent_missing"]
    # A consent granted before the win keeps the sale clean; one granted after it does not.
    assert new_findings(replace(won_today, consents=(ConsentFact(since + timedelta(hours=1)),)), since, until_) == []
    late = replace(won_today, consents=(ConsentFact(since + timedelta(hours=3)),))
    assert [f.rule for f in new_findings(late, since, until_)] == ["consent_missing"]


# ---------------------------------------------------------------- the review


def plant(
    db: Engine,
    owner_id: str,
    checkpoints: list[tuple[str, datetime]],
    *,
    need_at: datetime | None = None,
    consent_at: datetime | None = None,
) -> str:
    """A mortgage written straight to the store, opened at its first checkpoint."""
    opp_id = unique("opp_daily")
    opened = checkpoints[0][1]
    last, last_at = checkpoints[-1]
    status = "won" if last == "closed_won" else "open"
    with Session(db) as session, session.begin():
        household = Household(id=unique("hh_daily"), name="Daily household")
        session.add(household)
        session.flush()
        customer = Customer(id=unique("cus_daily"), household_id=household.id, name="Daily Customer")
        session.add(customer)
        session.flush()
        need = Need(
            id=unique("need_daily"),
            customer_id=customer.id,
            kind="buy_home",
            description="A home",
            recorded_by=owner_id,
            recorded_at=need_at or opened - timedelta(days=1),
        )
        session.add(need)
        session.flush()
        session.add(
            Opportunity(
                id=opp_id,
                customer_id=customer.id,
                product="mortgage",
                process_version=1,
                owner_id=owner_id,
                need_id=need.id,
                stage=last,
                probability=100 if status == "won" else 50,
                status=status,
                last_seq=len(checkpoints),
                workflow_id=f"opportunity-{opp_id}",
                opened_at=opened,
                closed_at=last_at if status == "won" else None,
            )
        )
        session.flush()
        for seq, (stage, at) in enumerate(checkpoints, 1):
            session.add(
                Checkpoint(
                    opportunity_id=opp_id,
                    seq=seq,
                    stage=stage,
                    entered_at=at,
                    trigger="manual",
                    actor=owner_id,
                    evidence=MORTGAGE[stage],
                )
            )
        if consent_at is not None:
            session.add(
                Consent(
                    id=unique("con_daily"),
                    customer_id=customer.id,
                    product="mortgage",
                    channel="branch",
                    evidence={"document_id": "DOC-1"},
                    granted_at=consent_at,
                )
            )
    return opp_id


def journey(stages: list[str], start: datetime, step: timedelta = timedelta(minutes=10)) -> list[tuple[str, datetime]]:
    return [(s, start + i * step) for i, s in enumerate(stages)]


async def review(client: Client, task_queue: str, inp: DailyReviewInput) -> DailyReviewResult:
    return await within(
        client.execute_workflow(
            DailyReviewWorkflow.run, inp, id=f"daily-review-test-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        ),
        "the daily review",
        seconds=30,
    )


async def test_the_review_mails_each_manager_the_new_exceptions_of_their_team_once(
    api: Api, db: Engine, client: Client, task_queue: str, smtp_inbox: Inbox
) -> None:
    tag = uuid.uuid4().hex[:6]
    kevin = await api.employee(role="manager", name="Kevin", email=f"kevin.{tag}@bank.example", products=[])
    mia = await api.employee(role="manager", name="Mia", email=f"mia.{tag}@bank.example", products=[])
    dan = await api.employee(name="Dan", email=f"dan.{tag}@bank.example", manager_id=kevin["id"])
    eve = await api.employee(name="Eve", email=f"eve.{tag}@bank.example", manager_id=kevin["id"])
    finn = await api.employee(name="Finn", email=f"finn.{tag}@bank.example", manager_id=mia["id"])
    # The review's day is its `until`'s date, and the second run below comes 30 minutes on:
    # in the last half hour of a UTC day the scenario moves back, so both runs share a day
    # (run at 23:42 UTC, the second run's mail was the next day's, rightly sent).
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), time.min, UTC)
    now = min(now, midnight - timedelta(minutes=31))
    today, days_ago = now - timedelta(hours=2), now - timedelta(days=3)

    # Kevin's team: three exceptions arose today, one is three days old.
    no_consent = plant(db, dan["id"], journey(WON, today))
    late_need = plant(db, eve["id"], journey(["interested", "searching"], today), need_at=today + timedelta(minutes=5))
    skipped_today = plant(db, dan["id"], [("interested", days_ago), ("approved", today)])
    old_no_consent = plant(db, eve["id"], journey(WON, days_ago))
    # Mia's team: clean today; its only exception is old.
    clean = plant(db, finn["id"], journey(WON, today), consent_at=today + timedelta(minutes=25))
    old = plant(db, finn["id"], journey(WON, days_ago))

    inp = DailyReviewInput(until=now, manager_ids=[kevin["id"], mia["id"]])
    result = await review(client, task_queue, inp)
    assert (result.audit.managers, result.audit.exceptions) == (1, 3)
    assert result.until == now and result.since == now - timedelta(hours=24)
    # Planted by SQL, so left stale: the review's last step judged them (store/audit_findings.py).
    planted = [no_consent, late_need, skipped_today, old_no_consent, clean, old]
    assert result.audit_findings is not None and result.audit_findings.judged >= len(planted)
    assert count(db, Opportunity, Opportunity.id.in_(planted), Opportunity.audit_stale) == 0
    with db.connect() as conn:
        kept = set(
            conn.execute(
                select(AuditFinding.opportunity_id, AuditFinding.rule).where(AuditFinding.opportunity_id.in_(planted))
            ).all()
        )
    assert kept == {
        (no_consent, "consent_missing"),
        (late_need, "need_after_opportunity"),
        (skipped_today, "stage_out_of_order"),
        (old_no_consent, "consent_missing"),
        (old, "consent_missing"),
    }

    (mail,) = await smtp_inbox.settled(api, kevin["email"])
    assert await smtp_inbox.settled(api, mia["email"]) == []
    assert mail["Subject"] == f"Practice audit {now.date()}: 3 new exceptions in your team"
    body = mail.get_content().replace("\r\n", "\n")
    for opp_id, rule in (
        (no_consent, "consent_missing"),
        (late_need, "need_after_opportunity"),
        (skipped_today, "stage_out_of_order"),
    ):
        assert f"{opp_id} (mortgage, " in body and f": {rule}\n" in body, (opp_id, rule, body)
    assert "skipping Searching and Applied" in body
    for opp_id in (old_no_consent, clean, old):
        assert opp_id not in body

    # Again the same day (a later run, one more exception since): nothing more is sent.
    plant(db, eve["id"], journey(WON, now + timedelta(minutes=1), step=timedelta(minutes=1)))
    again = await review(client, task_queue, inp.model_copy(update={"until": now + timedelta(minutes=30)}))
    assert again.audit.exceptions == 4
    assert len(await smtp_inbox.settled(api, kevin["email"])) == 1 and await smtp_inbox.settled(api, mia["email"]) == []
    assert count(db, Notification, Notification.to_employee_id == kevin["id"]) == 1


def expected_tallies(db: Engine) -> dict[tuple[str, str], tuple[int, int]]:
    """The lead model as the decided referrals in the store say it must be."""
    tallies: Counter[tuple[str, str, bool]] = Counter()
    with db.connect() as conn:
        for status, features in conn.execute(
            select(Referral.status, Referral.features).where(Referral.decided_at.is_not(None))
        ):
            if not all(isinstance((features or {}).get(f), str) for f in FEATURES):
                continue  # not a referral the model can learn from
            won = status == "converted"
            for key in [("*", "*"), *((f, features[f]) for f in FEATURES)]:
                tallies[(*key, won)] += 1
    keys = {(f, v) for f, v, _ in tallies}
    return {k: (tallies[(*k, True)], tallies[(*k, False)]) for k in keys}


def tallies(db: Engine) -> dict[tuple[str, str], tuple[int, int]]:
    with db.connect() as conn:
        return {
            (f, v): (w, lo)
            for f, v, w, lo in conn.execute(
                select(LeadFeatureCount.feature, LeadFeatureCount.value, LeadFeatureCount.won, LeadFeatureCount.lost)
            )
        }


async def test_the_review_rebuilds_a_tampered_lead_model(
    worker: None, db: Engine, client: Client, task_queue: str
) -> None:
    city = f"atlantis-{uuid.uuid4().hex[:6]}"
    with Session(db) as session, session.begin():
        # A decided referral the tallies never counted, a tally of nothing, a tally off by 3.
        session.add(
            Referral(
                id=unique("ref_daily"),
                status="converted",
                referrer_type="employee",
                referrer_id="emp-x",
                expressed_interest="mortgage",
                source="employee",
                lead_score=50,
                features={f: "mortgage" if f == "expressed_interest" else city for f in FEATURES},
                workflow_id="referral-x",
                created_at=datetime.now(UTC) - timedelta(days=2),
                decided_at=datetime.now(UTC) - timedelta(days=1),
            )
        )
        # A decided referral without features (as an import may write one): not learnt from.
        session.add(
            Referral(
                id=unique("ref_daily"),
                status="closed",
                referrer_type="employee",
                referrer_id="emp-x",
                expressed_interest="mortgage",
                source="import",
                lead_score=50,
                features={},
                workflow_id="referral-y",
                created_at=datetime.now(UTC) - timedelta(days=2),
                decided_at=datetime.now(UTC) - timedelta(days=1),
            )
        )
        session.add(LeadFeatureCount(feature="city", value=f"{city}-ghost", won=7, lost=1))
        session.merge(LeadFeatureCount(feature="source", value=f"{city}-source", won=0, lost=0))
        session.execute(
            update(LeadFeatureCount).where(LeadFeatureCount.feature == "*").values(won=LeadFeatureCount.won + 3)
        )
    expected = expected_tallies(db)
    assert tallies(db) != expected

    result = await review(client, task_queue, DailyReviewInput(manager_ids=[]))
    assert tallies(db) == expected
    rebuilt = tallies(db)
    won, lost = rebuilt[("*", "*")]
    per: dict[str, dict[str, list[int]]] = {f: {} for f in FEATURES}
    for (f, v), (w, lo) in rebuilt.items():
        if f in per:
            per[f][v] = [w, lo]
    LeadModel.from_dict({"won": won, "lost": lost, "counts": per})  # routing can read it: it adds up
    assert (
        result.lead_model.repaired >= 3
        and result.lead_model.decided == expected[("*", "*")][0] + expected[("*", "*")][1]
    )
    # Nothing drifted since: a second rebuild repairs nothing.
    again = await review(client, task_queue, DailyReviewInput(manager_ids=[]))
    assert again.lead_model.repaired == 0 and tallies(db) == expected


async def test_a_scheduled_run_reviews_the_day_before_its_scheduled_time(
    worker: None, client: Client, settings: Settings, task_queue: str
) -> None:
    schedule = daily_review_schedule(task_queue, settings)
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    schedule.action.args = [DailyReviewInput(manager_ids=[])]  # no team: this test mails no one
    schedule_id = unique("daily-review-trigger")
    handle = await within(client.create_schedule(schedule_id, schedule), "create")
    try:
        await within(handle.trigger(), "trigger")

        async def started() -> list[str]:
            return await workflow_ids(client, f'TemporalScheduledById = "{schedule_id}"')

        (run_id,) = await until(started, "the triggered run")
        result: DailyReviewResult = await within(
            client.get_workflow_handle(run_id, result_type=DailyReviewResult).result(), "the run", seconds=30
        )
        desc = await within(client.get_workflow_handle(run_id).describe(), "describe the run")
        scheduled = desc.typed_search_attributes.get(SCHEDULED_START_TIME)
        assert scheduled is not None and result.until == scheduled
        assert result.until - result.since == timedelta(hours=24)
        assert run_id.startswith(f"{DAILY_REVIEW_SCHEDULE_ID}-")
    finally:
        await within(handle.delete(), "delete the test's schedule")


async def test_the_review_purges_idempotency_records_and_event_claims_past_their_retention(
    api: Api, db: Engine, client: Client, task_queue: str
) -> None:
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    with db.begin() as conn:
        key_id = conn.scalar(select(ApiKey.id).where(ApiKey.key_sha256 == hash_key(api.key)))
        for name, age in (("old", IDEMPOTENCY_RETENTION + timedelta(hours=1)), ("new", timedelta(hours=1))):
            conn.execute(
                insert(IdempotencyRecord).values(
                    api_key_id=key_id,
                    key=f"{name}-{tag}",
                    method="POST",
                    path="/v1/customers",
                    request_sha256="x",
                    status_code=201,
                    response="{}",
                    created_at=now - age,
                )
            )
        for name, age in (("old", CLAIM_RETENTION + timedelta(hours=1)), ("new", timedelta(minutes=5))):
            conn.execute(
                insert(EventClaim).values(
                    id=f"{name}-{tag}", type="t", subject_id="s", body_sha256="x", claimed_at=now - age
                )
            )
    result = await review(client, task_queue, DailyReviewInput(until=now, manager_ids=[]))
    assert result.purged is not None
    assert result.purged.idempotency_records >= 1 and result.purged.event_claims >= 1
    assert count(db, IdempotencyRecord, IdempotencyRecord.key.in_([f"old-{tag}", f"new-{tag}"])) == 1
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == f"new-{tag}") == 1
    assert count(db, EventClaim, EventClaim.id.in_([f"old-{tag}", f"new-{tag}"])) == 1
    assert count(db, EventClaim, EventClaim.id == f"new-{tag}") == 1
