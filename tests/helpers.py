"""What the tests share: the HTTP API wrapper, deadlines and polling, the error shape,
staff and territories, and a mortgage brought up to Approved.

Fixtures live in conftest.py; whole journeys (the ones the replay corpus records) in
journeys.py. No test module imports another test module: what two tests share is here.

Every wait has a deadline. A regression that leaves a workflow waiting must fail the
test in seconds with a message saying what never happened, not hang CI.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.message
import email.policy
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import uvicorn
from sqlalchemy import Engine, func, select
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    StartWorkflowUpdateWithStartInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from config import Settings
from worker import build_worker
from workflows.client import DATA_CONVERTER

T = TypeVar("T")

#: A signing link in an e-mail's body.
SIGNING_LINK = re.compile(r"https?://\S+/sign/[A-Za-z0-9_\-]+")

#: The longest a single HTTP call, update, query or result may take in a test.
DEADLINE = 15.0

#: The payload encryption key of every test's clients, workers and replayers
#: (tests/conftest.py gives it to workflows.client.CODEC). In the source, so no secret:
#: never a deployment's. Histories recorded by the tests are encrypted with it; keep it.
TEST_CODEC_KEYS = "test:" + base64.b64encode(b"needflow test key, not a secret!").decode()


async def within(aw: Awaitable[T], what: str, seconds: float = DEADLINE) -> T:
    """`await aw`, failing the test (not hanging it) when it takes longer than `seconds`."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise AssertionError(f"{what}: no answer within {seconds:g} s") from None


async def until(check: Callable[[], Awaitable[T]], what: str, seconds: float = DEADLINE, interval: float = 0.05) -> T:
    """Poll `check()` until it returns something truthy and return that; fail naming `what`
    when it has not happened within `seconds` (visibility, mail, a timer's effect)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s (last seen: {value!r})")
        await asyncio.sleep(interval)


class _Matches:
    """A polled value for `until`: truthy when it equals what is expected; shows both."""

    def __init__(self, value: object, expected: object) -> None:
        self.value, self.expected = value, expected

    def __bool__(self) -> bool:
        return self.value == self.expected

    def __repr__(self) -> str:
        return f"{self.value!r}, expected {self.expected!r}"


async def until_equal(get: Callable[[], Awaitable[T]], expected: T, what: str, seconds: float = DEADLINE) -> T:
    """Poll `get()` until it returns exactly `expected` (visibility, mail), and return it;
    the failure shows what was last seen beside what was expected."""

    async def check() -> _Matches:
        return _Matches(await get(), expected)

    return (await until(check, what, seconds)).value  # type: ignore[return-value]


async def workflow_ids(client: Client, query: str) -> list[str]:
    """The ids of the workflows visibility lists for `query`, sorted (a multiset: a
    duplicate shows). Visibility lags behind a start: wait with `until_equal`."""
    return sorted([wf.id async for wf in client.list_workflows(query)])


async def history_length(client: Client, workflow_id: str) -> int:
    """How many events a workflow's history holds: a refused command must not add one."""
    history = await within(client.get_workflow_handle(workflow_id).fetch_history(), f"the history of {workflow_id}")
    return len(history.events)


def statuses(referral: dict) -> list[str]:
    """A referral's history as its statuses, oldest first."""
    return [h["status"] for h in referral["history"]]


def without_priority(referral: dict) -> dict:
    """A referral minus its priority, which grows with the referral's age between reads."""
    return {k: v for k, v in referral.items() if k != "priority"}


def count(db: Engine, model: Any, *where: Any) -> int:
    """Rows of `model` matching `where`: what a test checks was, or was not, written."""
    with db.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(*where)) or 0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def territory() -> str:
    """A state of its own for each test, so other tests' employees are never candidates."""
    return f"S-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------- the error shape


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    """The one error shape: {"error": {"code", "message", "details"}}."""
    assert r.status_code == status, f"expected {status} {code}, got {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["details"], dict), body
    return body["error"]


def named_fields(err: dict) -> set[str]:
    """The dotted field paths a 422's details name: `details.field`, or the `field` of
    each of `details.errors`."""
    details = err["details"]
    fields = {details["field"]} if isinstance(details.get("field"), str) else set()
    fields |= {e["field"] for e in details.get("errors", []) if isinstance(e, dict) and "field" in e}
    return fields


def assert_validation_error(r: httpx.Response, field: str | None = None) -> dict:
    """A 422 `validation_error`; with `field`, one that names exactly that field (or a
    field inside it) in its details — never a match on the message's wording."""
    err = assert_error(r, 422, "validation_error")
    if field is not None:
        fields = named_fields(err)
        assert any(f == field or f.startswith(field + ".") for f in fields), f"the 422 does not name {field!r}: {err}"
    return err


# ---------------------------------------------------------------- mail


class Inbox:
    """A real SMTP server's mailbox: what needflow's e-mails look like on arrival."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.url = ""

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's name)
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    def about(self, address: str, subject_part: str, subject_part_2: str = "") -> list[email.message.EmailMessage]:
        """Messages to `address` whose subject holds both parts (e.g. a kind and an id)."""
        return [m for m in self.to(address) if subject_part in m["Subject"] and subject_part_2 in m["Subject"]]

    # Mail is recorded with the change that causes it and delivered moments later by the
    # e-mail sender (workflows/mail.py): a test waits for it, never reads it at once.

    async def arrived(
        self, address: str, subject_part: str = "", subject_part_2: str = "", count: int = 1
    ) -> list[email.message.EmailMessage]:
        """Wait until at least `count` messages to `address` (whose subject holds both
        parts) have arrived, and return them all."""

        async def enough() -> list[email.message.EmailMessage]:
            found = self.about(address, subject_part, subject_part_2)
            return found if len(found) >= count else []

        return await until(enough, f"{count} e-mail(s) to {address} about {subject_part!r} {subject_part_2!r}")

    async def settled(self, api: Api, address: str) -> list[email.message.EmailMessage]:
        """The messages to `address` once the outbox holds none still on its way to it
        (pending or sending): what arrived, with every recorded message delivered. For a
        test that checks what did NOT come, or exactly what did."""

        async def on_their_way() -> bool:
            return not [m for m in await api.outbox(address) if m["status"] in ("pending", "sending")]

        await until(on_their_way, f"the e-mails to {address} delivered")
        return self.to(address)

    async def settled_about(
        self, api: Api, address: str, subject_part: str, subject_part_2: str = ""
    ) -> list[email.message.EmailMessage]:
        """`about`, once every message recorded for `address` is delivered (`settled`)."""
        await self.settled(api, address)
        return self.about(address, subject_part, subject_part_2)


# ---------------------------------------------------------------- the HTTP API


class Api:
    """A thin, readable wrapper over the HTTP API for tests; every call has a deadline."""

    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        self.http = http
        self.key = key

    def headers(self, key: str | None = None, idempotency_key: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {key or self.key}"}
        if idempotency_key:
            h["Idempotency-Key"] = idempotency_key
        return h

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Any request, with the test deadline (the in-process transport ignores httpx's)."""
        return await within(self.http.request(method, path, **kw), f"{method} {path}")

    async def post(
        self, path: str, body: Any = None, *, key: str | None = None, idem: str | None = None, expect: int | None = None
    ) -> httpx.Response:
        r = await self.request("POST", path, json=body, headers=self.headers(key, idem))
        if expect is not None:
            assert r.status_code == expect, f"POST {path} -> {r.status_code} {r.text}"
        return r

    async def get(self, path: str, *, key: str | None = None, expect: int | None = 200) -> httpx.Response:
        r = await self.request("GET", path, headers=self.headers(key))
        if expect is not None:
            assert r.status_code == expect, f"GET {path} -> {r.status_code} {r.text}"
        return r

    async def employee(self, role: str = "mortgage_broker", lob: str = "mortgage", **kw: Any) -> dict:
        body = {
            "name": kw.pop("name", "Dan Banker"),
            "email": kw.pop("email", "dan@bank.example"),
            "role": role,
            "line_of_business": lob,
            "products": kw.pop("products", ["mortgage"]),
            "cities": [],
            "states": [],
            "capacity": 20,
            **kw,
        }
        return (await self.post("/v1/employees", body, expect=201)).json()

    async def customer_with_need(self, recorded_by: str, name: str = "Rachel Adams") -> tuple[dict, dict]:
        customer = (
            await self.post(
                "/v1/customers",
                {
                    "name": name,
                    "email": "rachel@example.com",
                    "phone": "+12125550100",
                    "city": "New York",
                    "state": "NY",
                },
                expect=201,
            )
        ).json()
        need = (
            await self.post(
                f"/v1/customers/{customer['id']}/needs",
                {"kind": "buy_home", "description": "Buy a home in New York", "recorded_by": recorded_by},
                expect=201,
            )
        ).json()
        return customer, need

    async def opportunity(
        self, product: str = "mortgage", amount: str | None = "500000.00", owner: dict | None = None
    ) -> dict:
        owner = owner or await self.employee()
        customer, need = await self.customer_with_need(owner["id"])
        body = {"customer_id": customer["id"], "product": product, "owner_id": owner["id"], "need_id": need["id"]}
        if amount:
            body["amount"] = amount
        return (await self.post("/v1/opportunities", body, expect=201)).json()

    async def advance(self, opp: dict, to_stage: str, evidence: dict, actor_id: str | None = None) -> dict:
        body = {"actor_id": actor_id or opp["owner_id"], "to_stage": to_stage, "evidence": evidence}
        return (await self.post(f"/v1/opportunities/{opp['id']}/advance", body, expect=200)).json()

    async def event(
        self, type_: str, opportunity_id: str, data: dict, *, event_id: str | None = None, expect: int | None = 202
    ) -> httpx.Response:
        body = {
            "id": event_id or f"evt-{uuid.uuid4().hex}",
            "type": type_,
            "occurred_at": "2026-11-25T10:00:00+00:00",
            "opportunity_id": opportunity_id,
            "data": data,
        }
        return await self.post("/v1/events", body, expect=expect)

    async def outbox(self, address: str) -> list[dict]:
        """The e-mails recorded to `address`, newest first (`GET /v1/outbox`, as an admin)."""
        return (await self.get(f"/v1/outbox?to={quote(address)}&limit=1000")).json()["items"]

    async def signing_link(self, opp: dict) -> str:
        """The link the customer's e-mail brought her for this opportunity's newest
        signature request (read from the outbox, as an admin: no API answer carries it)."""
        customer = (await self.get(f"/v1/customers/{opp['customer_id']}")).json()
        for mail in await self.outbox(customer["email"]):  # newest first
            if opp["id"] in mail["body"] and (found := SIGNING_LINK.search(mail["body"])):
                return found.group(0)
        raise AssertionError(f"no signing link for {opp['id']} reached {customer['email']}")

    async def sign(self, signing_url: str, full_name: str = "Rachel Adams", **form: str) -> httpx.Response:
        path = httpx.URL(signing_url).path
        return await self.request("POST", path, data={"full_name": full_name, "agree": "yes", **form})

    async def mortgage_to_approved(self, owner: dict | None = None) -> dict:
        """A mortgage brought to Approved (the signature requested): searching with a
        realtor, the application submitted, then approved. Returns the opportunity."""
        opp = await self.opportunity(owner=owner)
        await self.advance(opp, "searching", {"realtor": "Jane Realty"})
        await self.event("mortgage.application_submitted", opp["id"], {"application_id": "APP-9"})
        r = await self.event("mortgage.application_approved", opp["id"], {"approval_id": "APR-9"})
        return r.json()["opportunity"]

    # ------------------------------------------------------------ referrals

    async def staff(self, state: str, city: str = "San Francisco") -> dict[str, dict]:
        """Kiara's bank in one state (seed 003): Kevin the manager, Ryan the wealth advisor
        who refers, Bob the mortgage broker in Ryan's city who reports to Kevin."""
        kevin = await self.employee(
            role="manager",
            lob="mortgage",
            name="Kevin",
            email=f"kevin.{state}@bank.example",
            products=[],
            states=[state],
        )
        ryan = await self.employee(
            role="advisor",
            lob="wealth",
            name="Ryan",
            email=f"ryan.{state}@bank.example",
            products=["wealth"],
            states=[state],
            cities=[city],
        )
        bob = await self.employee(
            name="Bob",
            email=f"bob.{state}@bank.example",
            products=["mortgage"],
            states=[state],
            cities=[city],
            manager_id=kevin["id"],
        )
        return {"kevin": kevin, "ryan": ryan, "bob": bob}

    async def refer(
        self,
        referrer: dict,
        state: str,
        *,
        city: str = "San Francisco",
        value: str | None = "500000.00",
        name: str = "Kiara Jones",
        interest: str = "mortgage",
        idem: str | None = None,
        customer_id: str | None = None,
    ) -> dict:
        """A referral of a prospect (Kiara, by default) or, with `customer_id`, of an
        existing customer; answers once it is routed."""
        body: dict[str, Any] = {
            "referrer": {"type": "employee", "id": referrer["id"]},
            "expressed_interest": interest,
            "notes": "Wants to buy her first home",
        }
        if customer_id:
            body["customer_id"] = customer_id
        else:
            body["prospect"] = {
                "name": name,
                "phone": "+14155550123",
                "email": "kiara@example.com",
                "employer": "Acme",
                "city": city,
                "state": state,
            }
        if value:
            body["value"] = value
        return (await self.post("/v1/referrals", body, idem=idem, expect=201)).json()

    async def broker(self, state: str, name: str = "Ann") -> dict:
        """Another mortgage broker in the state, listing no city: the staff's Bob (who lists
        the referral's city) gets new referrals; she is next in line when he cannot."""
        return await self.employee(
            name=name, email=f"{name.lower()}.{state}@bank.example", products=["mortgage"], states=[state]
        )

    async def referral(self, referral_id: str) -> dict:
        return (await self.get(f"/v1/referrals/{referral_id}")).json()


# ---------------------------------------------------------------- stacks the fixtures build


class IsolatedSettings(Settings):
    """Settings from the test's own arguments and defaults only: a NEEDFLOW_* variable in
    the developer's environment must not change what a test sees."""

    #: Every in-process test runs its workflows in temporalio's sandbox, which fails a
    #: workflow task that reads the clock, draws a random number or does I/O: the checks
    #: the worker leaves out for speed (worker.py). The tests that start workers as
    #: processes (scale-out, faults, the dev stack) run them as deployed, without it.
    workflow_sandbox: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type,
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple:
        return (init_settings,)


@asynccontextmanager
async def serve_app(settings: Settings, client: Client, task_queue: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API app, started (lifespan) and served in-process; requests come from a
    documentation address (203.0.113.7), which the signing page records."""
    app = create_app(settings, client=client, task_queue=task_queue)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


class StartedWorkflows(Interceptor):
    """Remembers the id of every workflow started through a client, so a test can end
    them: on the time-skipping server, a timer that fires into a task queue no worker
    polls any more leaves a workflow task pending, and the server stops skipping time
    for every later test while one is pending."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _RecordStarts(next, self.ids)


class _RecordStarts(OutboundInterceptor):
    def __init__(self, next: OutboundInterceptor, ids: set[str]) -> None:
        super().__init__(next)
        self._ids = ids

    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        self._ids.add(input.id)
        return await super().start_workflow(input)

    async def start_update_with_start_workflow(
        self, input: StartWorkflowUpdateWithStartInput
    ) -> WorkflowUpdateHandle[Any]:
        self._ids.add(input.start_workflow_input.id)
        return await super().start_update_with_start_workflow(input)


@dataclass
class SkippingStack:
    """A worker and the API on the time-skipping server, sharing the test database and
    SMTP server, with production-length SLAs unless a test asks otherwise."""

    env: WorkflowEnvironment
    client: Client
    settings: Settings
    task_queue: str
    api: Api

    def worker(self, **settings: Any) -> Worker:
        """A new worker for this stack's task queue (`async with stack.worker(): ...`),
        with some settings changed if asked (a redeploy with new rules, say)."""
        return build_worker(self.client, self.settings.model_copy(update=settings), self.task_queue)

    @asynccontextmanager
    async def app(self, **settings: Any) -> AsyncIterator[Api]:
        """Another API app on this stack, with some settings changed (e.g. new SLAs)."""
        async with serve_app(self.settings.model_copy(update=settings), self.client, self.task_queue) as http:
            yield Api(http, self.api.key)


# ---------------------------------------------------------------- the API over real HTTP


class LiveApi:
    """The API alone (no worker), served by uvicorn on a free port from a thread with its
    own loop and Temporal client: for a real browser (the dashboard) or a real CLI (the
    codec server) to call over HTTP."""

    def __init__(self, settings: Settings, temporal_address: str, namespace: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.settings, self.temporal_address, self.namespace = settings, temporal_address, namespace
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="live-api", daemon=True)

    async def _serve(self) -> None:
        client = await Client.connect(self.temporal_address, namespace=self.namespace, data_converter=DATA_CONVERTER)
        app = create_app(self.settings, client=client)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        await self.server.serve(sockets=[self.sock])

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not (self.server is not None and self.server.started):
            assert self.thread.is_alive(), "the API did not start"
            assert time.monotonic() < deadline, "the API did not start in time"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
