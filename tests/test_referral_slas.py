"""SLAs as durable workflow timers: an unattended referral cannot be missed.

The SLAs here are production length (an hour to accept, a day to follow up) and run on
Temporal's time-skipping test server: `stack.env.sleep(timedelta(hours=1))` fires an
hour of timers at once, while the activities, the database and the SMTP server stay
real. One short real-time smoke test runs on the dev server, as production does.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from temporalio.client import Client

from config import Settings
from tests.helpers import Api, Inbox, SkippingStack, assert_error, serve_app, statuses, territory, until, within
from worker import build_worker
from workflows.referral import ReferralWorkflow

LAPSE = "not accepted in time"
ESCALATION = "not followed up"
REMINDER = "Follow up on your referral"


def _at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


async def _assigned_to(
    stack: SkippingStack, api: Api, referral_id: str, employee_id: str | None, status: str = "assigned"
) -> dict:
    """Wait until the referral's workflow has it `status` with `employee_id`, then read it
    through the API. The workflow, not the store, decides what the next command meets: the
    store is written by the routing activity a moment before the workflow takes its result
    (and leaves "routing"), so a command sent on the store's word alone could be refused."""

    async def settled() -> bool:
        handle = stack.client.get_workflow_handle(f"referral-{referral_id}")
        state = await within(handle.query(ReferralWorkflow.current_state), "the referral's state")
        return (state.status, state.assignee_id) == (status, employee_id)

    await until(settled, f"referral {referral_id} {status} to {employee_id}")
    return await api.referral(referral_id)


async def _workflow_statuses(stack: SkippingStack, referral: dict) -> list[str]:
    """The referral's history as its workflow holds it. A query is answered after the
    workflow has taken what is pending (a fired timer changes the state at once, before
    any activity runs), so "nothing happened" is checked without waiting on a guess."""
    handle = stack.client.get_workflow_handle(referral["workflow_id"])
    state = await within(handle.query(ReferralWorkflow.current_state), "the referral's state")
    return [h.status for h in state.history]


async def test_lapse_reroutes_away_and_tells_the_manager_once(skipping_stack: SkippingStack, smtp_inbox: Inbox) -> None:
    stack, api = skipping_stack, skipping_stack.api
    async with stack.worker():
        state = territory()
        people = await api.staff(state)
        bob, kevin = people["bob"], people["kevin"]
        ann = await api.broker(state)
        ref = await api.refer(people["ryan"], state)
        assert ref["assignee_id"] == bob["id"]
        assert _at(ref["sla_deadline"]) - _at(ref["history"][-1]["at"]) == timedelta(hours=1)

        await stack.env.sleep(timedelta(minutes=59))
        assert await _workflow_statuses(stack, ref) == ["created", "assigned"], "lapsed before its hour"

        await stack.env.sleep(timedelta(minutes=2))
        now = await _assigned_to(stack, api, ref["id"], ann["id"])
        assert statuses(now) == ["created", "assigned", "lapsed", "assigned"]
        assert now["history"][2]["assignee_id"] == bob["id"]

        # Ann lets it lapse too: it goes to the queue, never back to Bob.
        await stack.env.sleep(timedelta(hours=1, minutes=1))
        now = await _assigned_to(stack, api, ref["id"], None, status="unassigned")
        assert statuses(now) == ["created", "assigned", "lapsed", "assigned", "lapsed", "unassigned"]
        assert now["queue"] == "unassigned-referrals" and now["sla_deadline"] is None

        # A day later nothing more has happened: no timer runs for an unassigned referral.
        await stack.env.sleep(timedelta(days=1))
        assert await _workflow_statuses(stack, ref) == statuses(now)
        await smtp_inbox.settled(api, kevin["email"])  # delivered while the worker runs

    # Bob's manager (Kevin) about Bob; Ann has no manager, so the managers of the
    # referral's state (Kevin again) about Ann: two notices, one per lapse.
    assert len(smtp_inbox.about(kevin["email"], LAPSE, ref["id"])) == 2
    outbox = (await api.get(f"/v1/outbox?to_employee_id={kevin['id']}")).json()["items"]
    mine = [m for m in outbox if LAPSE in m["subject"] and ref["id"] in m["subject"]]
    assert len(mine) == 2 and all(m["sent_at"] is not None for m in mine)


async def test_an_accept_after_the_hour_is_refused_the_lapse_came_first(skipping_stack: SkippingStack) -> None:
    stack, api = skipping_stack, skipping_stack.api
    async with stack.worker():
        state = territory()
        people = await api.staff(state)
        bob = people["bob"]
        ann = await api.broker(state)
        ref = await api.refer(people["ryan"], state)
        await stack.env.sleep(timedelta(hours=1, seconds=1))
        await _assigned_to(stack, api, ref["id"], ann["id"])

        r = await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]})
        err = assert_error(r, 409, "invalid_transition")
        assert err["details"] == {"actor_id": bob["id"], "assignee_id": ann["id"]}
        assert await _workflow_statuses(stack, ref) == ["created", "assigned", "lapsed", "assigned"]


async def test_accepted_just_in_time_never_lapses(skipping_stack: SkippingStack, smtp_inbox: Inbox) -> None:
    stack, api = skipping_stack, skipping_stack.api
    async with stack.worker():
        state = territory()
        people = await api.staff(state)
        bob, kevin = people["bob"], people["kevin"]
        ref = await api.refer(people["ryan"], state)
        await stack.env.sleep(timedelta(minutes=59, seconds=30))
        accepted = (await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}, expect=200)).json()
        assert _at(accepted["sla_deadline"]) - _at(accepted["history"][-1]["at"]) == timedelta(days=1)
        await stack.env.sleep(timedelta(hours=2))
        assert await _workflow_statuses(stack, ref) == ["created", "assigned", "accepted"]
        assert await smtp_inbox.settled_about(api, kevin["email"], LAPSE, ref["id"]) == []


async def test_lapse_and_escalation_reach_every_manager_when_none_lists_the_state(
    skipping_stack: SkippingStack, smtp_inbox: Inbox
) -> None:
    stack, api = skipping_stack, skipping_stack.api
    async with stack.worker():
        state, elsewhere = territory(), territory()
        # Nobody manages this state's brokers, and no manager lists the state.
        mia = await api.employee(
            role="manager", name="Mia", email=f"mia.{elsewhere}@bank.example", products=[], states=[elsewhere]
        )
        ryan = await api.employee(
            role="advisor", lob="wealth", name="Ryan", email=f"ryan.{state}@bank.example", products=["wealth"]
        )
        bob = await api.employee(name="Bob", email=f"bob.{state}@bank.example", states=[state])
        ann = await api.employee(name="Ann", email=f"ann.{state}@bank.example", states=[state])
        ref = await api.refer(ryan, state)
        first = ref["assignee_id"]
        second = ann["id"] if first == bob["id"] else bob["id"]

        await stack.env.sleep(timedelta(hours=1, minutes=1))
        await _assigned_to(stack, api, ref["id"], second)
        await api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": second}, expect=200)
        second_email = ann["email"] if second == ann["id"] else bob["email"]

        await stack.env.sleep(timedelta(days=1, minutes=1))
        await until(lambda: _mail(smtp_inbox, second_email, REMINDER, ""), "the reminder to the assignee")
        await stack.env.sleep(timedelta(days=1))
        await until(lambda: _mail(smtp_inbox, mia["email"], ESCALATION, ref["id"]), "the escalation to Mia")
        await stack.env.sleep(timedelta(days=3))
        assert await _workflow_statuses(stack, ref) == ["created", "assigned", "lapsed", "assigned", "accepted"]
        await smtp_inbox.settled(api, mia["email"])  # delivered while the worker runs
        await smtp_inbox.settled(api, second_email)

    assert len(smtp_inbox.about(mia["email"], LAPSE, ref["id"])) == 1
    assert len(smtp_inbox.about(mia["email"], ESCALATION, ref["id"])) == 1
    assert len(smtp_inbox.about(second_email, REMINDER)) == 1


async def _mail(inbox: Inbox, address: str, part: str, part_2: str) -> list:
    return inbox.about(address, part, part_2)


async def test_a_running_referral_keeps_its_rules_and_slas_after_they_change(
    skipping_stack: SkippingStack, tmp_path: Path
) -> None:
    stack, api = skipping_stack, skipping_stack.api
    state = territory()
    # The bank's new rules send every referral to a desk queue, with four hours to accept.
    new_rules = tmp_path / "routing.yaml"
    new_rules.write_text(
        yaml.safe_dump(
            {"version": 2, "fallback_queue": "nobody", "rules": [{"name": "desk", "queue": "mortgage-desk"}]}
        )
    )
    # The bank deploys new rules and SLAs: the worker already runs with them (it must not
    # use them for a referral that started before), and the new API app takes them.
    changed = {"routing_rules": new_rules, "referral_accept_sla": 4 * 3600}
    async with stack.worker(**changed):
        people = await api.staff(state)
        ann = await api.broker(state)
        old = await api.refer(people["ryan"], state)  # through the API with the old rules
        assert old["assignee_id"] == people["bob"]["id"]

        async with stack.app(**changed) as new_api:
            new = await new_api.refer(people["ryan"], state)
            assert (new["status"], new["queue"]) == ("unassigned", "mortgage-desk")

            await stack.env.sleep(timedelta(hours=1, minutes=1))
            # The old referral lapsed after its own hour and was re-routed by its own rules.
            now = await _assigned_to(stack, new_api, old["id"], ann["id"])
            assert statuses(now) == ["created", "assigned", "lapsed", "assigned"]
        assert _at(now["sla_deadline"]) - _at(now["history"][-1]["at"]) == timedelta(hours=1)


async def test_real_time_a_timer_that_fires_while_no_worker_runs_acts_when_one_returns(
    client: Client, settings: Settings, keys: dict[str, str]
) -> None:
    """The real-time smoke test, on the dev server as in production: the SLA lapses while
    the worker is down; the worker that comes back re-routes the referral, once. On its
    own task queue, so stopping its worker stops no other test's."""
    queue = f"needflow-down-{uuid.uuid4().hex[:8]}"
    fast = settings.model_copy(update={"referral_accept_sla": 0.5})
    async with serve_app(fast, client, queue) as http:
        api = Api(http, keys["all"])
        state = territory()
        async with build_worker(client, fast, queue):
            people = await api.staff(state)
            ann = await api.broker(state)
            ref = await api.refer(people["ryan"], state)
            assert ref["assignee_id"] == people["bob"]["id"]

        # Past the deadline, with no worker: the timer fires on the server, nobody acts.
        await asyncio.sleep(max(0.0, (_at(ref["sla_deadline"]) - datetime.now(UTC)).total_seconds()) + 0.5)
        assert statuses(await api.referral(ref["id"])) == ["created", "assigned"]

        async with build_worker(client, fast, queue):
            # The history only grows: wait for its first four entries (Ann may lapse too).
            async def rerouted() -> list[dict] | None:
                history = (await api.referral(ref["id"]))["history"]
                return history if len(history) >= 4 else None

            history = await until(rerouted, "the re-routing after the lapse")
            assert [h["status"] for h in history[:4]] == ["created", "assigned", "lapsed", "assigned"]
            assert [h["assignee_id"] for h in history[2:4]] == [people["bob"]["id"], ann["id"]]


async def test_real_time_an_accept_and_the_lapse_together_the_accept_wins(
    client: Client, settings: Settings, keys: dict[str, str]
) -> None:
    """Bob accepts while the worker is down, and his SLA runs out before it is back: the
    returning worker takes the accept and the fired timer in one workflow task. Updates are
    handled before timers in a task, and an accept re-arms the SLA: he keeps the referral."""
    queue = f"needflow-race-{uuid.uuid4().hex[:8]}"
    fast = settings.model_copy(update={"referral_accept_sla": 0.5})
    async with serve_app(fast, client, queue) as http:
        api = Api(http, keys["all"])
        state = territory()
        async with build_worker(client, fast, queue):
            people = await api.staff(state)
            await api.broker(state)
            ref = await api.refer(people["ryan"], state)
        bob = people["bob"]

        accept = asyncio.create_task(api.post(f"/v1/referrals/{ref['id']}/accept", {"actor_id": bob["id"]}))
        await asyncio.sleep(max(0.0, (_at(ref["sla_deadline"]) - datetime.now(UTC)).total_seconds()) + 0.5)
        assert not accept.done()
        async with build_worker(client, fast, queue):
            answer = await accept
            assert answer.status_code == 200, answer.text
            now = await api.referral(ref["id"])
            assert (statuses(now), now["assignee_id"]) == (["created", "assigned", "accepted"], bob["id"])
