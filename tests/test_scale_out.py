"""Scale-out (issue 9, item 6): the worker and the API keep no state beside Temporal and
the database, so any number of each can run, and any one can die.

Two workers (`python worker.py`) and two API processes (uvicorn), all real processes on
one Temporal dev server and one PostgreSQL database, as docs/deployment.md describes a
deployment. A load of whole journeys (mortgages won by signature, lost by the lender's
decline or by the owner; checking accounts opened) goes to both APIs alternately, as a
load balancer would send it; every command carries an Idempotency-Key (events their
event id), so a client may retry a call that timed out or failed with a 5xx, and the
test does so, against the other API. When a share of the calls has been answered, one
worker is killed with SIGKILL: no graceful shutdown, its workflow tasks and activities
in flight are lost with it, and Temporal has to give them to the other worker.

Then every journey must have finished as it was driven (won or lost at the stage the
customer reached), and the database must hold, for each opportunity, exactly one
checkpoint per stage it passed (seq 1..n, no gap, no duplicate), each event applied
exactly once, one consent where the process records one, one signature request (and one
e-mail with its link) per signed mortgage; and every workflow must have completed.

PostgreSQL only. Four processes writing one SQLite file is not a deployment needflow
supports (docs/deployment.md: PostgreSQL); the suite's SQLite run skips this test and its
PostgreSQL run (`make test-pg`, and CI's second pass) runs it, so it runs once in CI.
The figures (journeys, retries, what the killed worker had in flight, which tasks were
lost with it) are printed: `pytest -s -k scale_out` shows them.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import EventType, TimeoutType
from temporalio.client import Client, WorkflowExecutionStatus

from devstack.children import Child
from store.db import make_sync_engine
from store.keys import ALL_SCOPES, register_api_key
from store.migrate import upgrade
from store.models import (
    Checkpoint,
    Consent,
    Customer,
    EventClaim,
    Notification,
    Opportunity,
    ProcessedEvent,
    SignatureRequest,
)
from tests.dbutil import fresh_database_url, test_database_base_url
from tests.helpers import SIGNING_LINK, until
from tests.processes import ProcessStack, free_port, http_ok, identity, metric_sum, scrape
from workflows import TASK_QUEUE
from workflows.client import DATA_CONVERTER

#: How many journeys of each kind, and the stages each passes.
LOAD = {"mortgage_won": 14, "mortgage_declined": 6, "mortgage_closed_by_owner": 4, "checking_opened": 8}
PATHS = {
    "mortgage_won": ("won", ["interested", "searching", "applied", "approved", "closed_won"]),
    "mortgage_declined": ("lost", ["interested", "searching", "applied", "closed_lost"]),
    "mortgage_closed_by_owner": ("lost", ["interested", "searching", "closed_lost"]),
    "checking_opened": ("won", ["interested", "authorised", "opened"]),
}
#: The calls each journey makes (for the share answered before the kill).
CALLS = {"mortgage_won": 9, "mortgage_declined": 7, "mortgage_closed_by_owner": 6, "checking_opened": 6}
#: The worker is killed once this share of all the load's calls has been answered, as
#: soon as one has an activity in hand (or after KILL_WAIT seconds anyway).
KILL_AT = 0.4
KILL_WAIT = 2.0
#: Journeys start this far apart, so the load is a stream rather than one burst.
STAGGER = 0.1
#: A client gives up on one attempt after this long and retries (the other API).
ATTEMPT_TIMEOUT = 20.0
#: A call's deadline over all its attempts. A task lost with the killed worker waits for
#: its timeout (a workflow task 10 s, an activity workflows.common.ACTIVITY_TIMEOUT, 30 s)
#: before the other worker gets it.
CALL_DEADLINE = 70.0


def _on_postgresql() -> str | None:
    base = test_database_base_url()
    if base and make_url(base).get_backend_name() in ("postgresql", "postgres"):
        return base
    return None


pytestmark = [
    pytest.mark.skipif(
        _on_postgresql() is None,
        reason="scale-out runs two workers and two API processes on one database: PostgreSQL only "
        "(DATABASE_URL unset: this run is on SQLite; `make test-pg` runs it)",
    ),
    # The stack's start (about 10 s) and a task lost with the killed worker (up to 30 s)
    # come on top of the load: more than the suite's 90 s default would leave spare.
    pytest.mark.timeout(120),
]


# ---------------------------------------------------------------------------- the stack


@dataclass
class Worker:
    name: str
    child: Child
    metrics_url: str

    @property
    def identity(self) -> str:
        return identity(self.child.proc.pid)


@dataclass
class Stack:
    processes: ProcessStack
    client: Client
    api_urls: list[str]
    workers: list[Worker]
    apis: list[Child]
    key: str
    database_url: str
    log_dir: Path


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    base = _on_postgresql()
    assert base is not None
    started = time.monotonic()
    with fresh_database_url(base) as database_url:
        processes = ProcessStack(tmp_path / "logs", database_url)
        try:
            processes.start_temporal()
            await asyncio.to_thread(upgrade, database_url)  # while the server comes up
            engine = make_sync_engine(database_url)
            key = register_api_key(engine, "scale-out", ALL_SCOPES)
            engine.dispose()
            await processes.temporal_ready()

            api_ports = [free_port(), free_port()]
            public = f"http://127.0.0.1:{api_ports[0]}"
            workers = []
            for n in (1, 2):
                port = free_port()
                child = processes.start_worker(
                    f"worker-{n}", NEEDFLOW_METRICS_PORT=str(port), NEEDFLOW_PUBLIC_BASE_URL=public
                )
                workers.append(Worker(f"worker-{n}", child, f"http://127.0.0.1:{port}/metrics"))
            apis = [
                processes.start_api(f"api-{n}", port, NEEDFLOW_PUBLIC_BASE_URL=public)
                for n, port in enumerate(api_ports, start=1)
            ]
            api_urls = [f"http://127.0.0.1:{port}" for port in api_ports]

            client = await Client.connect(processes.temporal_address, data_converter=DATA_CONVERTER)
            for url in api_urls:
                await processes.wait_until(f"{url}/healthz", lambda u=url: _healthy(u), seconds=60)
            for w in workers:  # by its own metrics: the server lists a poller only once it polled the root partition
                await processes.wait_until(f"{w.name} polling", lambda w=w: _polling(w), seconds=60)
            print(f"\n[scale-out] stack up in {time.monotonic() - started:.1f} s; logs in {processes.log_dir}")
            yield Stack(processes, client, api_urls, workers, apis, key, database_url, processes.log_dir)
        finally:
            processes.stop()


def _healthy(url: str) -> bool:
    return http_ok(f"{url}/healthz")


def _polling(worker: Worker) -> bool:
    """The worker polls needflow's task queue for workflow tasks and for activities."""
    samples = scrape(worker.metrics_url)
    return all(
        metric_sum(samples, "temporal_num_pollers", poller_type=kind, task_queue=TASK_QUEUE) > 0
        for kind in ("workflow_task", "activity_task")
    )


# ---------------------------------------------------------------------------- the load


@dataclass
class Load:
    """What every journey shares: the HTTP client, the APIs, and the tally."""

    http: httpx.AsyncClient
    urls: list[str]
    key: str
    total_calls: int
    answered: int = 0
    kill_due: asyncio.Event = field(default_factory=asyncio.Event)
    #: (journey, call, attempt, why) of every retried attempt, and how the retry ended.
    retries: list[tuple[str, str, int, str]] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")


@dataclass
class Answer:
    response: httpx.Response
    attempts: int

    def json(self) -> Any:
        return self.response.json()


class Journey:
    """One customer's journey through the HTTP API; its calls alternate between the APIs
    and a retry goes to the other one."""

    def __init__(self, load: Load, kind: str, n: int, owner: dict) -> None:
        self.load, self.kind, self.n, self.owner = load, kind, n, owner
        self.name = f"{kind}#{n}"
        self.tag = f"{RUN}-{n}"
        self.email = f"customer{n}.{RUN}@example.com"
        self._next = itertools.count(n)
        self.events: list[str] = []
        self.retried_event = False
        self.opportunity: dict = {}
        self.seconds = 0.0

    async def call(self, what: str, method: str, path: str, *, ok: tuple[int, ...], **kw: Any) -> Answer:
        headers = {"Authorization": f"Bearer {self.load.key}", **kw.pop("headers", {})}
        ok_on_retry = kw.pop("ok_on_retry", ())
        loop = asyncio.get_running_loop()
        began = loop.time()
        for attempt in itertools.count(1):
            base = self.load.urls[next(self._next) % len(self.load.urls)]
            why = ""
            try:
                r = await self.load.http.request(method, base + path, headers=headers, timeout=ATTEMPT_TIMEOUT, **kw)
            except httpx.TimeoutException as exc:
                why = f"timeout ({type(exc).__name__}) at {base}"
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__} at {base}"
            else:
                if r.status_code in ok or (attempt > 1 and r.status_code in ok_on_retry):
                    took = loop.time() - began
                    if took > self.load.slowest[0]:
                        self.load.slowest = (took, f"{self.name} {what}")
                    self.load.answered += 1
                    if self.load.answered >= KILL_AT * self.load.total_calls:
                        self.load.kill_due.set()
                    if attempt > 1:
                        how = " (Idempotent-Replayed)" if r.headers.get("Idempotent-Replayed") else ""
                        if path == "/v1/events":
                            how += f" {r.json()['result']}"
                        answered = f"answered {r.status_code}{how} by {base} after {took:.1f} s"
                        self.load.retries.append((self.name, what, attempt, answered))
                    return Answer(r, attempt)
                # 5xx (a 503 `timeout`: the workflow has not answered yet) and 429 are no
                # answer: the contract is to repeat the same request.
                retryable = r.status_code >= 500 or r.status_code == 429 or (attempt > 1 and _in_progress(r))
                assert retryable, f"{self.name}: {what} ({method} {path}) -> {r.status_code} {r.text}"
                why = f"{r.status_code} at {base}: {r.text[:160]}"
                if r.status_code == 429:
                    await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 5.0))
            self.load.retries.append((self.name, what, attempt, why))
            assert loop.time() - began < CALL_DEADLINE, (
                f"{self.name}: {what} ({method} {path}) not answered within {CALL_DEADLINE:g} s; last: {why}"
            )
            await asyncio.sleep(0.25)
        raise AssertionError("unreachable")

    async def post(self, what: str, path: str, body: dict, *, idem: str | None = None, ok: int = 200) -> Answer:
        headers = {"Idempotency-Key": f"{self.tag}-{idem}"} if idem else {}
        return await self.call(what, "POST", path, json=body, headers=headers, ok=(ok,))

    async def get(self, what: str, path: str) -> dict:
        return (await self.call(what, "GET", path, ok=(200,))).json()

    async def event(self, type_: str, data: dict) -> dict:
        """A backend event, once (its id is the retry's key): `applied` on the first
        attempt; a retry may find the first attempt applied it (`duplicate`)."""
        event_id = f"evt-{self.tag}-{len(self.events) + 1}"
        self.events.append(event_id)
        body = {
            "id": event_id,
            "type": type_,
            "occurred_at": datetime.now(UTC).isoformat(),
            "opportunity_id": self.opportunity["id"],
            "data": data,
        }
        answer = await self.post(type_, "/v1/events", body, ok=202)
        result = answer.json()["result"]
        self.retried_event = answer.attempts > 1
        assert result == "applied" or (answer.attempts > 1 and result == "duplicate"), (self.name, answer.json())
        return answer.json()["opportunity"]

    # ------------------------------------------------------------------ the journeys

    async def run(self) -> None:
        began = time.monotonic()
        await asyncio.sleep(self.n * STAGGER)
        await self.open()
        await getattr(self, self.kind)()
        self.opportunity = await self.get("read back", f"/v1/opportunities/{self.opportunity['id']}")
        self.seconds = time.monotonic() - began - self.n * STAGGER

    async def open(self) -> None:
        product = "checking" if self.kind.startswith("checking") else "mortgage"
        customer = (
            await self.post(
                "customer",
                "/v1/customers",
                {"name": f"Customer {self.n}", "email": self.email, "city": "New York", "state": "NY"},
                idem="customer",
                ok=201,
            )
        ).json()
        need = (
            await self.post(
                "need",
                f"/v1/customers/{customer['id']}/needs",
                {"kind": "buy_home", "description": "A first home", "recorded_by": self.owner["id"]},
                idem="need",
                ok=201,
            )
        ).json()
        body = {"customer_id": customer["id"], "product": product, "owner_id": self.owner["id"], "need_id": need["id"]}
        if product == "mortgage":
            body["amount"] = "350000.00"
        self.opportunity = (await self.post("open", "/v1/opportunities", body, idem="open", ok=201)).json()

    async def _searching(self) -> None:
        body = {"actor_id": self.owner["id"], "to_stage": "searching", "evidence": {"realtor": "Jane Realty"}}
        await self.post("advance", f"/v1/opportunities/{self.opportunity['id']}/advance", body, idem="searching")

    async def mortgage_won(self) -> None:
        await self._searching()
        await self.event("mortgage.application_submitted", {"application_id": f"APP-{self.tag}"})
        approved = await self.event("mortgage.application_approved", {"approval_id": f"APR-{self.tag}"})
        if self.retried_event:
            # A retry answered `duplicate` from the store may come before the workflow has
            # sent the documents (their activity may be the one lost with the worker).
            async def sent() -> dict | None:
                opp = await self.get("signature sent?", f"/v1/opportunities/{self.opportunity['id']}")
                return opp if (opp.get("signature") or {}).get("status") == "sent" else None

            approved = await until(sent, f"{self.name}: the documents sent", seconds=CALL_DEADLINE, interval=0.5)
        assert (approved["stage"], approved["signature"]["status"]) == ("approved", "sent"), (self.name, approved)
        mails = await self.get("outbox", f"/v1/outbox?to={quote(self.email)}&limit=100")
        links = [m for mail in mails["items"] if (m := SIGNING_LINK.search(mail["body"]))]
        assert len(links) == 1, (self.name, mails)
        path = httpx.URL(links[0].group(0)).path
        # A retry of a signature the first attempt took finds the link used up (410).
        form = {"full_name": f"Customer {self.n}", "agree": "yes"}
        await self.call("sign", "POST", path, data=form, ok=(200,), ok_on_retry=(410,))

    async def mortgage_declined(self) -> None:
        await self._searching()
        await self.event("mortgage.application_submitted", {"application_id": f"APP-{self.tag}"})
        await self.event("mortgage.application_declined", {"reason": "income too low"})

    async def mortgage_closed_by_owner(self) -> None:
        await self._searching()
        body = {"actor_id": self.owner["id"], "reason": "bought with another bank"}
        await self.post("close-lost", f"/v1/opportunities/{self.opportunity['id']}/close-lost", body, idem="lost")

    async def checking_opened(self) -> None:
        sms = {"phone": "+12125550100", "message_id": f"SM-{self.tag}", "text": "YES"}
        await self.event("consent.sms_authorization", {**sms, "received_at": datetime.now(UTC).isoformat()})
        await self.event("account.opened", {"account_number": f"CHK-{self.tag}"})


def _in_progress(r: httpx.Response) -> bool:
    """409 for a retry whose first attempt is still being answered (api/idempotency.py):
    the contract says retry later."""
    if r.status_code != 409:
        return False
    error = r.json().get("error", {})
    return error.get("code") == "conflict" and "idempotency_key" in error.get("details", {})


RUN = uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------- the test


async def test_a_worker_killed_mid_load_loses_no_journey(stack: Stack) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as http:
        load = Load(
            http, stack.api_urls, stack.key, total_calls=sum(CALLS[kind] * count for kind, count in LOAD.items())
        )
        owners = await _owners(load)
        kinds = [kind for kind, count in LOAD.items() for _ in range(count)]
        kinds = [kinds[i] for i in _interleaved(len(kinds))]
        journeys = [
            Journey(load, kind, n, owners["checking" if kind.startswith("checking") else "mortgage"][n % 2])
            for n, kind in enumerate(kinds)
        ]
        began = time.monotonic()
        killer = asyncio.create_task(_kill_one_worker(stack, load, began))
        try:
            async with asyncio.TaskGroup() as journeys_running:  # the first failure cancels the rest
                for j in journeys:
                    journeys_running.create_task(j.run())
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            if not killer.done():
                killer.cancel()
        load_seconds = time.monotonic() - began
        kill = await killer

    # Every journey ended as it was driven; the API says so.
    for j in journeys:
        status, stages = PATHS[j.kind]
        opp = j.opportunity
        assert (opp["status"], [c["stage"] for c in opp["checkpoints"]]) == (status, stages), (j.name, opp)

    # Every workflow completed (none stuck behind the killed worker).
    async def all_completed() -> list[str]:
        unfinished = []
        for j in journeys:
            described = await stack.client.get_workflow_handle(j.opportunity["workflow_id"]).describe()
            if described.status != WorkflowExecutionStatus.COMPLETED:
                unfinished.append(f"{j.name}: {described.status}")
        return unfinished or ["ok"]

    assert await until(all_completed, "every opportunity's workflow completed", seconds=30) == ["ok"]

    _assert_recorded_once(stack.database_url, journeys)

    # The killed worker had taken part (so the others took over its work), and is gone.
    tasks = await _who_did_what(stack.client, [j.opportunity["workflow_id"] for j in journeys])
    killed, survivor = kill.killed, kill.survivor
    assert killed.child.poll() == -signal.SIGKILL
    assert tasks.workflow_tasks[killed.identity] > 0, tasks
    assert tasks.workflow_tasks[survivor.identity] > 0, tasks
    for child in [survivor.child, *stack.apis]:
        assert child.poll() is None, f"{child.name} died; see {child.log_path}"

    _summary(journeys, load, load_seconds, kill, tasks, stack.log_dir)


# ---------------------------------------------------------------------------- the pieces


async def _owners(load: Load) -> dict[str, list[dict]]:
    staff = Journey(load, "staff", 0, {})
    owners: dict[str, list[dict]] = {"mortgage": [], "checking": []}
    for n in range(2):
        for product, role, lob in (("mortgage", "mortgage_broker", "mortgage"), ("checking", "banker", "retail")):
            body = {
                "name": f"{role.title()} {n}",
                "email": f"{role}{n}.{RUN}@bank.example",
                "role": role,
                "line_of_business": lob,
                "products": [product],
                "capacity": 100,
            }
            answer = await staff.post("employee", "/v1/employees", body, idem=f"{product}-{n}", ok=201)
            owners[product].append(answer.json())
    load.answered = 0  # the staff is not the load
    return owners


def _interleaved(n: int) -> list[int]:
    """0..n-1 in an order that spreads each kind over the whole load (always the same)."""
    order = list(range(n))
    random.Random(9).shuffle(order)
    return order


def _in_hand(worker: Worker) -> dict[str, float]:
    samples = scrape(worker.metrics_url)
    return {
        "workflow_slots": metric_sum(samples, "temporal_worker_task_slots_used", worker_type="WorkflowWorker"),
        "activity_slots": metric_sum(samples, "temporal_worker_task_slots_used", worker_type="ActivityWorker"),
        "workflow_tasks_done": metric_sum(samples, "temporal_workflow_task_execution_latency_count"),
        "activities_done": metric_sum(samples, "temporal_activity_execution_latency_count"),
    }


@dataclass
class Kill:
    killed: Worker
    survivor: Worker
    at_seconds: float
    answered: int
    in_flight: dict[str, float]


async def _kill_one_worker(stack: Stack, load: Load, began: float) -> Kill:
    """When KILL_AT of the calls are answered: SIGKILL a worker while it has work in hand
    (by its metrics: task slots in use), an activity if one has any within KILL_WAIT
    (its database write may be done or not: either way a retry must not write it twice),
    else the one with the most in hand."""
    await load.kill_due.wait()
    loop = asyncio.get_running_loop()
    give_up = loop.time() + KILL_WAIT
    while True:
        scraped = await asyncio.gather(*(asyncio.to_thread(_in_hand, w) for w in stack.workers))
        seen = {w.name: in_hand for w, in_hand in zip(stack.workers, scraped, strict=True)}
        ranked = sorted(
            stack.workers,
            key=lambda w: (seen[w.name]["activity_slots"], seen[w.name]["workflow_slots"]),
            reverse=True,
        )
        if seen[ranked[0].name]["activity_slots"] > 0 or loop.time() > give_up:
            break
        await asyncio.sleep(0.02)
    killed, survivor = ranked
    os.kill(killed.child.proc.pid, signal.SIGKILL)
    killed.child.proc.wait(timeout=10)
    return Kill(killed, survivor, time.monotonic() - began, load.answered, seen[killed.name])


def _assert_recorded_once(database_url: str, journeys: list[Journey]) -> None:
    """The system of record: one checkpoint per stage (seq 1..n), each event applied once,
    one consent per consent stage, one signature request and link e-mail per signature."""
    engine = make_sync_engine(database_url)
    ids = [j.opportunity["id"] for j in journeys]
    try:
        with engine.connect() as db:
            checkpoints = collections.defaultdict(list)
            for row in db.execute(
                select(Checkpoint.opportunity_id, Checkpoint.seq, Checkpoint.stage, Checkpoint.evidence)
                .where(Checkpoint.opportunity_id.in_(ids))
                .order_by(Checkpoint.opportunity_id, Checkpoint.seq)
            ):
                checkpoints[row.opportunity_id].append(row)
            rows = {r.id: r for r in db.execute(select(Opportunity).where(Opportunity.id.in_(ids)))}
            processed = collections.Counter(
                r.subject_id for r in db.execute(select(ProcessedEvent).where(ProcessedEvent.subject_id.in_(ids)))
            )
            processed_ids = set(db.scalars(select(ProcessedEvent.id).where(ProcessedEvent.subject_id.in_(ids))))
            claims = set(db.scalars(select(EventClaim.id).where(EventClaim.subject_id.in_(ids))))
            consents = collections.Counter(
                db.scalars(select(Consent.opportunity_id).where(Consent.opportunity_id.in_(ids)))
            )
            signatures = collections.defaultdict(list)
            for r in db.execute(
                select(SignatureRequest.opportunity_id, SignatureRequest.status).where(
                    SignatureRequest.opportunity_id.in_(ids)
                )
            ):
                signatures[r.opportunity_id].append(r.status)
            emails = [j.email for j in journeys]
            customers = collections.Counter(db.scalars(select(Customer.email).where(Customer.email.in_(emails))))
            opportunities = collections.Counter(
                db.scalars(
                    select(Customer.email)
                    .join(Opportunity, Opportunity.customer_id == Customer.id)
                    .where(Customer.email.in_(emails))
                )
            )
            link_mails = collections.Counter(
                db.scalars(select(Notification.to_address).where(Notification.id.like("signature-link-%")))
            )
    finally:
        engine.dispose()

    sent_events = {e for j in journeys for e in j.events}
    assert processed_ids == sent_events, (
        f"events recorded but never sent: {processed_ids - sent_events}; sent but lost: {sent_events - processed_ids}"
    )
    assert claims == sent_events
    for j in journeys:
        # A retried create made nothing twice.
        assert (customers[j.email], opportunities[j.email]) == (1, 1), j.name
        opp_id = j.opportunity["id"]
        status, stages = PATHS[j.kind]
        cps = checkpoints[opp_id]
        assert [(c.seq, c.stage) for c in cps] == list(enumerate(stages, start=1)), (j.name, cps)
        row = rows[opp_id]
        assert (row.status, row.stage, row.last_seq) == (status, stages[-1], len(stages)), j.name
        # Each event in exactly one checkpoint's evidence, the journey's own, in order.
        assert [c.evidence["event_id"] for c in cps if "event_id" in c.evidence] == j.events, j.name
        assert processed[opp_id] == len(j.events), j.name
        assert consents[opp_id] == (1 if status == "won" else 0), j.name
        signed = j.kind == "mortgage_won"
        assert signatures[opp_id] == (["completed"] if signed else []), j.name
        assert link_mails[j.email] == (1 if signed else 0), j.name


@dataclass
class Tasks:
    """Who did what, read from the workflows' histories (the identity is pid@host)."""

    workflow_tasks: collections.Counter = field(default_factory=collections.Counter)
    activities: collections.Counter = field(default_factory=collections.Counter)
    #: Workflow tasks that timed out: lost with a worker (start-to-close) or waiting on a
    #: dead worker's sticky queue (schedule-to-start).
    workflow_task_timeouts: collections.Counter = field(default_factory=collections.Counter)
    #: Activities retried after a timeout: an attempt lost with a worker.
    activities_retried_after_timeout: collections.Counter = field(default_factory=collections.Counter)
    workflows_touched: set = field(default_factory=set)


async def _who_did_what(client: Client, workflow_ids: list[str]) -> Tasks:
    tasks = Tasks()
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        taken_by = ""
        activity_types = {}
        for e in history.events:
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                activity_types[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                taken_by = e.workflow_task_started_event_attributes.identity
                tasks.workflow_tasks[taken_by] += 1
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = e.activity_task_started_event_attributes
                tasks.activities[started.identity] += 1
                if started.attempt > 1 and started.last_failure.HasField("timeout_failure_info"):
                    tasks.activities_retried_after_timeout[activity_types.get(started.scheduled_event_id, "?")] += 1
                    tasks.workflows_touched.add(workflow_id)
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                kind = e.workflow_task_timed_out_event_attributes.timeout_type
                if kind == TimeoutType.TIMEOUT_TYPE_START_TO_CLOSE:  # taken, never answered
                    tasks.workflow_task_timeouts[f"taken by {taken_by or 'an unrecorded worker'} (never answered)"] += 1
                else:  # waited on a sticky queue no worker polled any more
                    tasks.workflow_task_timeouts["unpolled sticky queue"] += 1
                tasks.workflows_touched.add(workflow_id)
    return tasks


def _summary(journeys: list[Journey], load: Load, load_seconds: float, kill: Kill, tasks: Tasks, log_dir: Path) -> None:
    """Print the run's figures (`pytest -s` shows them) and keep them beside the logs."""
    kinds = collections.Counter(j.kind for j in journeys)
    names = {w.identity: w.name for w in (kill.killed, kill.survivor)}
    timeouts = ", ".join(
        f"{n} {' '.join(names.get(word, word) for word in why.split())}"
        for why, n in tasks.workflow_task_timeouts.items()
    )
    slowest = max(journeys, key=lambda j: j.seconds)
    lines = [
        f"journeys: {len(journeys)} ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
        f"{load.total_calls} calls over 2 APIs, all finished as driven, in {load_seconds:.1f} s",
        f"killed {kill.killed.name} ({kill.killed.identity}) with SIGKILL {kill.at_seconds:.1f} s in, "
        f"after {kill.answered}/{load.total_calls} calls; in its hands then (metrics): "
        f"{kill.in_flight['workflow_slots']:g} workflow task(s), {kill.in_flight['activity_slots']:g} activity(ies); "
        f"it had done {kill.in_flight['workflow_tasks_done']:g} workflow tasks, "
        f"{kill.in_flight['activities_done']:g} activities",
        "workflow tasks by worker: "
        + ", ".join(f"{w.name} {tasks.workflow_tasks[w.identity]}" for w in (kill.killed, kill.survivor))
        + "; activities by worker: "
        + ", ".join(f"{w.name} {tasks.activities[w.identity]}" for w in (kill.killed, kill.survivor)),
        f"workflow task timeouts: {timeouts or 'none'}; "
        f"activities retried after a timeout: {dict(tasks.activities_retried_after_timeout) or 'none'}, "
        f"in {len(tasks.workflows_touched)} workflow(s)",
        f"client retries: {sum(1 for r in load.retries if not r[3].startswith('answered'))}"
        + "".join(f"\n    {name} {what} attempt {n}: {why}" for name, what, n, why in load.retries),
        f"slowest call {load.slowest[0]:.1f} s ({load.slowest[1]}); slowest journey {slowest.seconds:.1f} s "
        f"({slowest.name}); median journey {sorted(j.seconds for j in journeys)[len(journeys) // 2]:.1f} s",
    ]
    text = "[scale-out] " + "\n[scale-out] ".join(lines)
    (log_dir / "summary.txt").write_text(text + "\n")
    print("\n" + text)
