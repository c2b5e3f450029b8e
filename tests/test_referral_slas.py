"""SLAs as durable workflow timers: an unattended referral cannot be missed.

These run a second API app whose settings give SLAs of seconds; the SLAs travel in the
workflow's input, so the session's worker serves them as it would in production."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from temporalio.client import Client

from api.app import create_app
from config import Settings
from tests.conftest import Api, Inbox
from tests.test_referrals import refer, staff, territory


@pytest_asyncio.fixture
async def fast_api(
    client: Client, settings: Settings, task_queue: str, keys: dict[str, str], worker: None
) -> AsyncIterator[Api]:
    fast = settings.model_copy(update={"referral_accept_sla": 1.5, "referral_followup_sla": 1.5})
    app = create_app(fast, client=client, task_queue=task_queue)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as http:
            yield Api(http, keys["all"])


async def _until(check, limit: float = 15.0):  # noqa: ANN001, ANN202
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_acceptance_sla_lapse_reroutes_and_tells_the_manager_once(fast_api: Api, smtp_inbox: Inbox) -> None:
    api = fast_api
    state = territory()
    people = await staff(api, state)
    ann = await api.employee(name="Ann", email=f"ann.{state}@bank.example", products=["mortgage"], states=[state])
    ref = await refer(api, people["ryan"], state)
    assert ref["assignee_id"] == people["bob"]["id"] and ref["sla_deadline"] is not None

    async def rerouted():  # noqa: ANN202
        now = (await api.get(f"/v1/referrals/{ref['id']}")).json()
        return now if now["assignee_id"] == ann["id"] else None

    now = await _until(rerouted)
    assert now, "the referral was not re-routed when Bob let the acceptance SLA lapse"
    statuses = [h["status"] for h in now["history"]]
    assert statuses[:4] == ["created", "assigned", "lapsed", "assigned"]
    assert now["history"][2]["assignee_id"] == people["bob"]["id"]

    # Ann lets it lapse too: it goes to the queue, never back to Bob.
    async def queued():  # noqa: ANN202
        now = (await api.get(f"/v1/referrals/{ref['id']}")).json()
        return now if now["status"] == "unassigned" else None

    now = await _until(queued)
    assert now and now["assignee_id"] is None
    assert [h["status"] for h in now["history"]] == [
        "created",
        "assigned",
        "lapsed",
        "assigned",
        "lapsed",
        "unassigned",
    ]

    await asyncio.sleep(2)  # long enough for a second (wrong) lapse notice to have arrived
    kevin = people["kevin"]["email"]
    lapse_notices = [
        m for m in smtp_inbox.to(kevin) if "not accepted in time" in m["Subject"] and ref["id"] in m["Subject"]
    ]
    # Bob's manager (Kevin) about Bob; Ann has no manager, so every manager (Kevin) about Ann.
    assert len(lapse_notices) == 2
    outbox = (await api.get(f"/v1/outbox?to_employee_id={people['kevin']['id']}")).json()["items"]
    assert len([m for m in outbox if "not accepted in time" in m["subject"] and ref["id"] in m["subject"]]) == 2
    assert all(m["sent_at"] is not None for m in outbox)


async def test_follow_up_reminder_then_escalation(fast_api: Api, smtp_inbox: Inbox) -> None:
    api = fast_api
    state = territory()
    people = await staff(api, state)
    bob = people["bob"]
    ref = await refer(api, people["ryan"], state)
    await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)

    async def escalated():  # noqa: ANN202
        return [
            m
            for m in smtp_inbox.to(people["kevin"]["email"])
            if "not followed up" in m["Subject"] and ref["id"] in m["Subject"]
        ]

    assert await _until(escalated), "no escalation reached the manager"
    reminders = [m for m in smtp_inbox.to(bob["email"]) if m["Subject"].startswith("Follow up on your referral")]
    assert len(reminders) == 1
    await asyncio.sleep(2)
    assert len(await escalated()) == 1  # no more after the escalation
    assert (await api.get(f"/v1/referrals/{ref['id']}")).json()["status"] == "accepted"
