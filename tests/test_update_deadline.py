"""Every update the API waits on has a deadline (issue 9): while no worker can answer a
workflow, a command, a create or an event answers 503 `timeout` within the deadline,
with `Retry-After` and the id of what it was about, and changes nothing visible; the
same request repeated once a worker runs returns the real outcome, done once.

Each test has its own task queue, so "no worker" is real: the worker is started and
stopped by the test. Commands under test go through an impatient API (a 1 s deadline);
setting up goes through a patient one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import Engine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from config import Settings
from domain.ids import opportunity_workflow_id, referral_workflow_id
from store.models import Checkpoint, EventClaim, Opportunity, ProcessedEvent, Referral
from tests.helpers import (
    Api,
    IsolatedSettings,
    assert_error,
    count,
    serve_app,
    statuses,
    territory,
    unique,
    until,
    until_equal,
    within,
)
from worker import build_worker

#: The impatient API's deadline and Retry-After, in seconds.
DEADLINE_S = 1.0
RETRY_AFTER_S = 1


@dataclass
class Stalling:
    """A task queue of its own with two APIs on it and a worker only when asked."""

    client: Client
    settings: Settings
    task_queue: str
    api: Api  # the default deadline: for setting up
    impatient: Api  # a 1 s deadline: for the requests under test

    def worker(self) -> Worker:
        return build_worker(self.client, self.settings, self.task_queue)


@pytest_asyncio.fixture
async def stalling(client: Client, settings: Settings, keys: dict[str, str]) -> AsyncIterator[Stalling]:
    queue = f"needflow-deadline-{uuid.uuid4().hex[:8]}"
    impatient = settings.model_copy(update={"update_deadline": DEADLINE_S, "update_retry_after": RETRY_AFTER_S})
    async with serve_app(settings, client, queue) as patient_http, serve_app(impatient, client, queue) as http:
        yield Stalling(client, settings, queue, Api(patient_http, keys["all"]), Api(http, keys["all"]))


def assert_not_answered(r: httpx.Response, resource_id: str | None = None) -> dict:
    """A 503 `timeout` in the error shape, with Retry-After, naming `resource_id`."""
    err = assert_error(r, 503, "timeout")
    assert r.headers.get("Retry-After") == str(RETRY_AFTER_S), r.headers
    assert err["details"]["retry_after_seconds"] == RETRY_AFTER_S, err
    if resource_id is not None:
        assert err["details"]["id"] == resource_id, err
    return err


async def timed(send: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await send
    return r, loop.time() - started


async def until_answered(send: Callable[[], Awaitable[httpx.Response]], seconds: float = 30) -> httpx.Response:
    """Repeat the request as a client honouring Retry-After does, while it is 503 (a
    worker just started may take a few seconds to get the workflow: its predecessor's
    sticky queue times out first); the first other answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        r = await send()
        if r.status_code != 503:
            return r
        assert_not_answered(r)
        if loop.time() > deadline:
            raise AssertionError(f"still 503 after {seconds:g} s: {r.text}")
        await asyncio.sleep(int(r.headers["Retry-After"]))


def checkpoints(db: Engine, opportunity_id: str, stage: str | None = None) -> int:
    where = [Checkpoint.opportunity_id == opportunity_id]
    if stage is not None:
        where.append(Checkpoint.stage == stage)
    return count(db, Checkpoint, *where)


async def accepted_updates(client: Client, workflow_id: str) -> int:
    """How many updates the workflow took (each one is in its history for good)."""
    history = await within(client.get_workflow_handle(workflow_id).fetch_history(), f"the history of {workflow_id}")
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)


# ---------------------------------------------------------------- a command on a running workflow


async def test_a_command_no_worker_answers_is_503_and_its_repeat_gets_the_outcome_once(
    stalling: Stalling, db: Engine
) -> None:
    async with stalling.worker():
        dan = await stalling.api.employee()
        opp = await stalling.api.opportunity(owner=dan)
    path = f"/v1/opportunities/{opp['id']}/advance"
    searching = {"actor_id": dan["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
    by_hand = {"actor_id": dan["id"], "to_stage": "applied", "evidence": {}}  # an event's stage: refused
    key, refused_key = unique("idem-stalled"), unique("idem-stalled-refused")

    # No worker: answered at the deadline, not hung; the opportunity has not moved.
    r, took = await timed(stalling.impatient.post(path, searching, idem=key))
    err = assert_not_answered(r, opp["id"])
    assert err["details"]["workflow_id"] == opp["workflow_id"]
    assert DEADLINE_S <= took < DEADLINE_S + 5, took
    assert_not_answered(await stalling.impatient.post(path, by_hand, idem=refused_key), opp["id"])
    assert (await stalling.api.get(f"/v1/opportunities/{opp['id']}")).json()["stage"] == "interested"
    assert checkpoints(db, opp["id"]) == 1

    async with stalling.worker():
        done = await until_answered(lambda: stalling.impatient.post(path, searching, idem=key))
        assert done.status_code == 200, done.text
        assert done.json()["stage"] == "searching"
        assert "Idempotent-Replayed" not in done.headers  # asked again, not a stored 503
        again = await stalling.impatient.post(path, searching, idem=key)
        assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (200, "true")
        assert again.json() == done.json()

        refused = await until_answered(lambda: stalling.impatient.post(path, by_hand, idem=refused_key))
        assert_error(refused, 409, "invalid_transition")

    assert checkpoints(db, opp["id"], "searching") == 1
    assert checkpoints(db, opp["id"]) == 2
    now = (await stalling.api.get(f"/v1/opportunities/{opp['id']}")).json()
    assert [c["stage"] for c in now["checkpoints"]] == ["interested", "searching"]


# ---------------------------------------------------------------- creates (update-with-start)


async def test_an_opening_no_worker_answers_is_503_with_its_id_and_its_repeat_opens_it_once(
    stalling: Stalling, db: Engine, client: Client
) -> None:
    dan = await stalling.api.employee()  # employees, customers and needs need no workflow
    customer, need = await stalling.api.customer_with_need(dan["id"], name=unique("Stella Stalled"))
    body = {
        "customer_id": customer["id"],
        "product": "mortgage",
        "owner_id": dan["id"],
        "need_id": need["id"],
        "amount": "450000.00",
    }
    key = unique("idem-open-stalled")

    r, took = await timed(stalling.impatient.post("/v1/opportunities", body, idem=key))
    opportunity_id = assert_not_answered(r)["details"]["id"]
    assert DEADLINE_S <= took < DEADLINE_S + 5, took
    await stalling.api.get(f"/v1/opportunities/{opportunity_id}", expect=404)
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == 0
    handle = client.get_workflow_handle(opportunity_workflow_id(opportunity_id))
    first_run = (await within(handle.describe(), "describe")).run_id  # started, waiting for a worker

    async with stalling.worker():
        opened = await until_answered(lambda: stalling.impatient.post("/v1/opportunities", body, idem=key))
        assert opened.status_code == 201, opened.text
        assert (opened.json()["id"], opened.json()["stage"]) == (opportunity_id, "interested")
        again = await stalling.impatient.post("/v1/opportunities", body, idem=key)
        assert (again.status_code, again.json()) == (201, opened.json())

    assert (await within(handle.describe(), "describe")).run_id == first_run  # no second workflow
    assert await accepted_updates(client, handle.id) == 1  # the repeats joined the first `opened`
    assert count(db, Opportunity, Opportunity.customer_id == customer["id"]) == 1
    assert checkpoints(db, opportunity_id) == 1


async def test_a_referral_no_worker_answers_is_503_with_its_id_and_its_repeat_routes_it_once(
    stalling: Stalling, db: Engine, client: Client
) -> None:
    state = territory()
    people = await stalling.api.staff(state)
    body = {
        "referrer": {"type": "employee", "id": people["ryan"]["id"]},
        "expressed_interest": "mortgage",
        "prospect": {"name": unique("Kiara Stalled"), "city": "San Francisco", "state": state},
    }
    key = unique("idem-refer-stalled")

    r = await stalling.impatient.post("/v1/referrals", body, idem=key)
    referral_id = assert_not_answered(r)["details"]["id"]
    await stalling.api.get(f"/v1/referrals/{referral_id}", expect=404)

    async with stalling.worker():
        made = await until_answered(lambda: stalling.impatient.post("/v1/referrals", body, idem=key))
        assert made.status_code == 201, made.text
        assert made.json()["id"] == referral_id
        assert (made.json()["status"], made.json()["assignee_id"]) == ("assigned", people["bob"]["id"])

    assert count(db, Referral, Referral.id == referral_id) == 1
    assert await accepted_updates(client, referral_workflow_id(referral_id)) == 1
    history = statuses(await stalling.api.referral(referral_id))
    assert len(history) == 2 and history[-1] == "assigned", history  # created, then routed: once


# ---------------------------------------------------------------- events


async def test_an_event_no_worker_answers_is_503_naming_it_and_sent_again_is_taken_once(
    stalling: Stalling, db: Engine
) -> None:
    async with stalling.worker():
        opp = await stalling.api.opportunity()
        await stalling.api.advance(opp, "searching", {"realtor": "Jane Realty"})
    submitted, wrong = unique("evt-stalled"), unique("evt-stalled-wrong")

    def submit() -> Awaitable[httpx.Response]:
        return stalling.impatient.event(
            "mortgage.application_submitted", opp["id"], {"application_id": "APP-9"}, event_id=submitted, expect=None
        )

    def wrong_kind() -> Awaitable[httpx.Response]:  # no mortgage opens an account: refused in any stage
        return stalling.impatient.event(
            "account.opened", opp["id"], {"account_number": "A-1"}, event_id=wrong, expect=None
        )

    err = assert_not_answered(await submit(), submitted)
    assert err["details"]["opportunity_id"] == opp["id"]
    assert_not_answered(await wrong_kind(), wrong)
    assert (await stalling.api.get(f"/v1/opportunities/{opp['id']}")).json()["stage"] == "searching"
    assert count(db, ProcessedEvent, ProcessedEvent.id == submitted) == 0

    async with stalling.worker():
        taken = await until_answered(submit)
        assert taken.status_code == 202, taken.text
        # The id was delivered before (the 503): a second delivery of it is `duplicate`.
        assert (taken.json()["id"], taken.json()["result"]) == (submitted, "duplicate")
        assert taken.json()["opportunity"]["stage"] == "applied"

        assert_error(await until_answered(wrong_kind), 409, "invalid_transition")
        # Refused, so its id was not used: a right event under it is applied.
        assert count(db, EventClaim, EventClaim.id == wrong) == 0
        r = await until_answered(  # the 1 s deadline may pass on a busy machine: sent again, as a client would
            lambda: stalling.impatient.event(
                "mortgage.application_approved", opp["id"], {"approval_id": "A"}, event_id=wrong, expect=None
            )
        )
        assert r.status_code == 202, r.text
        assert r.json()["opportunity"]["stage"] == "approved"

    assert checkpoints(db, opp["id"], "applied") == 1
    assert count(db, ProcessedEvent, ProcessedEvent.id == submitted) == 1


# ---------------------------------------------------------------- the customer's signing page


async def test_a_signature_no_worker_confirms_is_a_come_back_page_and_the_link_then_says_signed(
    stalling: Stalling,
) -> None:
    async with stalling.worker():
        approved = await stalling.api.mortgage_to_approved()
        link = await stalling.api.signing_link(approved)

    r = await stalling.impatient.sign(link)
    assert r.status_code == 503 and r.headers["content-type"].startswith("text/html"), r.text
    assert r.headers.get("Retry-After") == str(RETRY_AFTER_S)
    assert "Open this link again in a minute" in r.text

    async with stalling.worker():
        # Coming back, she is told it is signed (her answer was kept, not lost), and it is.
        async def opened_again() -> httpx.Response | None:
            page = await stalling.impatient.request("GET", httpx.URL(link).path)
            return page if page.status_code == 410 else None

        again = await until(opened_again, "the link saying the documents are signed", seconds=30)
        assert "signed already" in again.text
        await until_equal(lambda: opportunity_status(stalling.api, approved["id"]), "won", "the opportunity won")


async def opportunity_status(api: Api, opportunity_id: str) -> str:
    return (await api.get(f"/v1/opportunities/{opportunity_id}")).json()["status"]


# ---------------------------------------------------------------- contract and configuration


async def test_the_503_is_declared_with_retry_after_in_the_openapi_document(api: Api) -> None:
    doc = (await api.request("GET", "/openapi.json")).json()
    for path in ("/v1/opportunities", "/v1/opportunities/{opportunity_id}/advance", "/v1/events", "/v1/referrals"):
        declared = doc["paths"][path]["post"]["responses"]["503"]
        assert declared["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut"), path
        assert "Retry-After" in declared["headers"], path


def test_the_deadline_is_configured_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEEDFLOW_UPDATE_DEADLINE", "7.5")
    monkeypatch.setenv("NEEDFLOW_UPDATE_RETRY_AFTER", "3")
    configured = Settings()
    assert (configured.update_deadline, configured.update_retry_after) == (7.5, 3)
    default = IsolatedSettings()
    assert (default.update_deadline, default.update_retry_after) == (15, 5)
    monkeypatch.setenv("NEEDFLOW_UPDATE_DEADLINE", "0")
    with pytest.raises(ValueError, match="update_deadline"):
        Settings()
