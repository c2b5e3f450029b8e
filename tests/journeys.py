"""Whole journeys through the HTTP API, each ending its workflow: the paths the replay
corpus (tests/histories/) keeps, and the tests that need a finished workflow.

Each returns the final resource (opportunity or referral) as the API shows it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client, ScheduleActionStartWorkflow

from config import Settings
from domain.daily import DailyReviewInput, DailyReviewResult
from tests.helpers import Api, Inbox, territory, unique, until, until_equal, within, workflow_ids
from workflows.schedules import daily_review_schedule

# ---------------------------------------------------------------- opportunities


async def mortgage_to_closed_won(api: Api, *, decline_first: bool = False) -> dict:
    """Rachel's mortgage (seed 000) to Closed Won; with `decline_first`, she declines the
    first envelope and signs the one the owner resends."""
    opp = await api.mortgage_to_approved()
    if decline_first:
        assert (await api.sign(await api.signing_link(opp), action="decline")).status_code == 200
        opp = (
            await api.post(f"/v1/opportunities/{opp['id']}/resend-signature", {"actor_id": opp["owner_id"]}, expect=200)
        ).json()
    assert (await api.sign(await api.signing_link(opp))).status_code == 200
    return (await api.get(f"/v1/opportunities/{opp['id']}")).json()


async def mortgage_closed_lost_by_owner(api: Api) -> dict:
    """A mortgage the owner closes as lost from Searching, with a reason."""
    opp = await api.opportunity()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    body = {"actor_id": opp["owner_id"], "reason": "bought with another bank"}
    return (await api.post(f"/v1/opportunities/{opp['id']}/close-lost", body, expect=200)).json()


async def mortgage_lost_by_event(api: Api) -> dict:
    """A mortgage the lender declines after the application: lost by a backend event."""
    opp = await api.opportunity()
    await api.advance(opp, "searching", {"realtor": "Jane Realty"})
    await api.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-7"})
    r = await api.event("mortgage.application_declined", opp["id"], {"reason": "income too low"})
    return r.json()["opportunity"]


async def proposal_to_closed_won(api: Api, product: str) -> dict:
    """An insurance policy or a wealth agreement: a proposal (which sends the product's
    documents to sign), then the customer's signature."""
    role, lob = {"insurance": ("insurance_agent", "insurance"), "wealth": ("advisor", "wealth")}[product]
    owner = await api.employee(role=role, lob=lob, name="Ines Agent", products=[product])
    opp = await api.opportunity(product=product, amount="10000.00", owner=owner)
    opp = await api.advance(opp, "proposal", {"proposal_id": f"PR-{product}"})
    assert (await api.sign(await api.signing_link(opp))).status_code == 200
    return (await api.get(f"/v1/opportunities/{opp['id']}")).json()


async def checking_to_opened(api: Api) -> dict:
    """Rachel's checking account (seed 000): SMS authorisation, then the account opened."""
    matt = await api.employee(role="banker", lob="retail", name="Matt", products=["checking"])
    opp = await api.opportunity(product="checking", amount=None, owner=matt)
    await api.event(
        "consent.sms_authorization",
        opp["id"],
        {"phone": "+12125550100", "message_id": "SM-1", "text": "YES", "received_at": "2026-11-25T09:00:00+00:00"},
    )
    return (await api.event("account.opened", opp["id"], {"account_number": "CHK-1"})).json()["opportunity"]


async def mortgage_imported_resumed_won(api: Api) -> dict:
    """An open mortgage imported from an old CRM (`POST /v1/imports`) at Applied: its
    workflow resumes at that stage (`OpportunityInput.imported`); the lender's approval (a
    backend event) sends the documents to sign, and the customer signs: Closed Won."""
    source = unique("crm")

    def at(day: int) -> str:
        return datetime(2025, 3, day, 9, tzinfo=UTC).isoformat()

    def cp(stage: str, day: int, **evidence: Any) -> dict:
        return {"stage": stage, "entered_at": at(day), "trigger": "manual", "actor": "E-DAN", "evidence": evidence}

    book = {
        "source": source,
        "employees": [
            {
                "external_id": "E-DAN",
                "name": "Dan Old",
                "email": f"dan.{source}@bank.example",
                "role": "mortgage_broker",
                "line_of_business": "mortgage",
                "products": ["mortgage"],
                "capacity": 10,
            }
        ],
        "customers": [{"external_id": "C-ANN", "name": "Ann Old", "email": "ann@example.com"}],
        "needs": [
            {
                "external_id": "N-ANN",
                "customer": "C-ANN",
                "kind": "buy_home",
                "description": "A first home",
                "recorded_by": "E-DAN",
                "recorded_at": at(1),
            }
        ],
        "opportunities": [
            {
                "external_id": "O-MORT",
                "customer": "C-ANN",
                "product": "mortgage",
                "owner": "E-DAN",
                "need": "N-ANN",
                "amount": "450000.00",
                "opened_at": at(2),
                "status": "open",
                "checkpoints": [
                    cp("interested", 2),
                    cp("searching", 3, realtor="Old Realty"),
                    cp("applied", 4, application_id="APP-OLD-1"),
                ],
            }
        ],
    }
    answer = (await api.post("/v1/imports", book, expect=200)).json()
    opp_id = answer["ids"]["opportunities"]["O-MORT"]
    opp = (await api.get(f"/v1/opportunities/{opp_id}")).json()
    assert (opp["stage"], opp["status"]) == ("applied", "open"), opp
    opp = (await api.event("mortgage.application_approved", opp_id, {"approval_id": "APR-NEW-1"})).json()["opportunity"]
    assert opp["stage"] == "approved", opp
    assert (await api.sign(await api.signing_link(opp), full_name="Ann Old")).status_code == 200

    async def won() -> dict | None:
        opp = (await api.get(f"/v1/opportunities/{opp_id}")).json()
        return opp if opp["status"] == "won" else None

    return await until(won, "the imported mortgage won by signature")


# ---------------------------------------------------------------- referrals


async def referral_converted(api: Api) -> dict:
    """Kiara's referral (seed 003): routed to Bob, accepted, converted."""
    state = territory()
    people = await api.staff(state)
    ref = await api.refer(people["ryan"], state)
    bob = people["bob"]
    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)
    return (
        await api.post(
            f"/v1/referrals/{ref['id']}/convert",
            {"actor_id": bob["id"], "need": {"kind": "buy_home", "description": "A home"}},
            expect=200,
        )
    ).json()


async def referral_rejected_reassigned_closed(api: Api) -> dict:
    state = territory()
    people = await api.staff(state)
    ref = await api.refer(people["ryan"], state)
    ref = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reject", {"actor_id": people["bob"]["id"], "reason": "too busy"}, expect=200
        )
    ).json()
    ref = (
        await api.post(
            f"/v1/referrals/{ref['id']}/reassign",
            {"actor_id": people["kevin"]["id"], "to_employee_id": people["bob"]["id"]},
            expect=200,
        )
    ).json()
    return (
        await api.post(
            f"/v1/referrals/{ref['id']}/close",
            {"actor_id": people["kevin"]["id"], "reason": "customer withdrew"},
            expect=200,
        )
    ).json()


async def referral_lapsed_closed(fast_api: Api) -> dict:
    """The acceptance SLA lapses (a timer fires): Bob, the only broker, is passed over,
    the referral waits in the queue and the manager closes it. `fast_api` has an
    acceptance SLA of well under a second."""
    state = territory()
    people = await fast_api.staff(state)
    ref = await fast_api.refer(people["ryan"], state)

    async def queued() -> bool:
        return (await fast_api.referral(ref["id"]))["status"] == "unassigned"

    await until(queued, "the referral re-routed to the queue after the lapse")
    body = {"actor_id": people["kevin"]["id"], "reason": "nobody free to take it"}

    # The store says "unassigned" a moment before the workflow has taken the routing's
    # result; until it has, a command is refused ("routing right now; try again").
    async def closed() -> dict | None:
        r = await fast_api.post(f"/v1/referrals/{ref['id']}/close", body)
        assert r.status_code in (200, 409), r.text
        return r.json() if r.status_code == 200 else None

    return await until(closed, "the manager's close")


async def referral_escalated_closed(fast_api: Api) -> dict:
    """The follow-up SLA runs out twice (timers fire): a reminder to Bob, an escalation to
    Kevin, then Bob closes it. `fast_api` has a follow-up SLA of well under a second.

    The escalation is awaited in the outbox, where the workflow's notice records it, not
    in an SMTP inbox: the session's one mail sender delivers every test's mail in turn,
    and beside a dozen journeys on a 2-CPU machine the backlog ahead of Kevin's message
    outlasted the 15 s wait (seen at dca0b53 as at later commits). Delivery itself is
    tests/test_mail_sender.py's."""
    state = territory()
    people = await fast_api.staff(state)
    ref = await fast_api.refer(people["ryan"], state)
    bob = people["bob"]
    await fast_api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)

    async def escalated() -> list:
        outbox = await fast_api.outbox(people["kevin"]["email"])
        return [m for m in outbox if "not followed up" in m["subject"] and ref["id"] in m["subject"]]

    await until(escalated, "the escalation to the manager")
    body = {"actor_id": bob["id"], "reason": "the customer chose to wait a year"}
    return (await fast_api.post(f"/v1/referrals/{ref['id']}/close", body, expect=200)).json()


# ---------------------------------------------------------------- scheduled work


async def daily_review_mails_a_manager(
    api: Api, client: Client, settings: Settings, task_queue: str, inbox: Inbox
) -> dict:
    """One run of the daily review as its Temporal Schedule starts it (`workflows/
    schedules.py`, triggered by hand), narrowed to one manager's team (the session's
    database is shared). A book imported with today's times (imported records keep their
    own) gives Kevin's team three new exceptions — a won insurance without consent, a lost
    mortgage whose need was recorded after it opened and which skipped Searching — so the
    review e-mails Kevin once. Returns the run's `workflow_id` and result."""
    source = unique("crm-daily")
    now = datetime.now(UTC)

    def ago(hours: int) -> str:
        return (now - timedelta(hours=hours)).isoformat()

    def cp(stage: str, hours_ago: int, **evidence: Any) -> dict:
        return {
            "stage": stage,
            "entered_at": ago(hours_ago),
            "trigger": "manual",
            "actor": "E-DAN",
            "evidence": evidence,
        }

    book = {
        "source": source,
        "employees": [
            {
                "external_id": "E-KEV",
                "name": "Kevin",
                "email": f"kevin.{source}@bank.example",
                "role": "manager",
                "line_of_business": "mortgage",
            },
            {
                "external_id": "E-DAN",
                "name": "Dan",
                "email": f"dan.{source}@bank.example",
                "role": "mortgage_broker",
                "line_of_business": "mortgage",
                "products": ["mortgage", "insurance"],
                "capacity": 10,
                "manager": "E-KEV",
            },
        ],
        "customers": [
            {"external_id": "C-ANN", "name": "Ann Today"},
            {"external_id": "C-BO", "name": "Bo Today"},
        ],
        "needs": [
            {
                "external_id": "N-ANN",
                "customer": "C-ANN",
                "kind": "protect_family",
                "description": "Life cover",
                "recorded_by": "E-DAN",
                "recorded_at": ago(5),
            },
            {
                "external_id": "N-BO",
                "customer": "C-BO",
                "kind": "buy_home",
                "description": "A first home",
                "recorded_by": "E-DAN",
                "recorded_at": ago(1),  # after the opportunity opened
            },
        ],
        "opportunities": [
            {
                "external_id": "O-INS",
                "customer": "C-ANN",
                "product": "insurance",
                "owner": "E-DAN",
                "need": "N-ANN",
                "opened_at": ago(4),
                "status": "won",  # and no consent
                "checkpoints": [
                    cp("interested", 4),
                    cp("proposal", 3, proposal_id="P-TODAY-1"),
                    cp("closed_won", 2, envelope_id="ENV-TODAY-1", document_sha256="ab" * 32),
                ],
            },
            {
                "external_id": "O-MORT",
                "customer": "C-BO",
                "product": "mortgage",
                "owner": "E-DAN",
                "need": "N-BO",
                "opened_at": ago(4),
                "status": "lost",
                "lost_reason": "bought with another bank",
                "checkpoints": [
                    cp("interested", 4),
                    cp("applied", 3, application_id="APP-TODAY-1"),  # Searching skipped
                    cp("closed_lost", 2, reason="bought with another bank"),
                ],
            },
        ],
    }
    ids = (await api.post("/v1/imports", book, expect=200)).json()["ids"]
    kevin = ids["employees"]["E-KEV"]

    schedule = daily_review_schedule(task_queue, settings)
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    schedule.action.args = [DailyReviewInput(manager_ids=[kevin])]  # this journey's team only
    schedule_id = unique("daily-review-journey")
    handle = await within(client.create_schedule(schedule_id, schedule), "create the schedule")
    try:
        await within(handle.trigger(), "trigger the schedule")

        async def started() -> list[str]:
            return await workflow_ids(client, f'TemporalScheduledById = "{schedule_id}"')

        (run_id,) = await until(started, "the triggered daily review")
        result: DailyReviewResult = await within(
            client.get_workflow_handle(run_id, result_type=DailyReviewResult).result(), "the daily review", seconds=30
        )
    finally:
        await within(handle.delete(), "delete the journey's schedule")
    assert (result.audit.managers, result.audit.exceptions) == (1, 3), result
    day = result.until.date()
    subject = f"Practice audit {day}: 3 new exceptions in your team"

    async def mailed() -> list[str]:
        return [m["Subject"] for m in inbox.to(f"kevin.{source}@bank.example")]

    await until_equal(mailed, [subject], "Kevin's e-mail")
    return {"workflow_id": run_id, "result": result.model_dump(mode="json")}
