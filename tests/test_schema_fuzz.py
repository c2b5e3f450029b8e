"""Schemathesis against the API's own /openapi.json (issue 9, item 9).

Every operation the document lists is called with requests schemathesis generates from
it, valid ones (positive) and invalid ones (negative), and every answer is checked:

- `not_a_server_error`: no 5xx, whatever is sent;
- `status_code_conformance`: the status is one the operation declares;
- `content_type_conformance`, `response_headers_conformance`,
  `response_schema_conformance`: the answer's content type, headers and body are the
  ones declared for that status (the error shape of api/errors.py for a refusal).

Left out, after a run with them: `positive_data_acceptance` (a schema-valid request
must succeed) fails on every route, by design: the document cannot say which ids exist,
which employee a key may act as, or that a name holds no control character
(domain/validation.py), so most schema-valid requests are rightly 404 or 422.
`negative_data_rejection` (a schema-violating request must be refused) found only a
case that is valid once sent (`manager_id=null`, a string on the wire).

The app is served over real HTTP (uvicorn, on the tests' event loop, beside a worker on
a task queue of its own) on a fresh, migrated database of the suite's kind: what the
fuzzing creates (random employees in routing pools, keys, customers) never reaches
another test. The database is seeded first with an employee, a customer with a need, an
opportunity, a referral and a spare API key, and about half the cases of an operation
whose path parameters are all among them name those records, so the routes' own logic
runs too (a real advance, a real deactivation), not only their 404s. Requests carry an API key with every scope
(admin among them), registered in that database as the `keys` fixture registers its
own, so no scope check stops a case before the route's logic.

Bounded: `SCHEMATHESIS_MAX_EXAMPLES` examples per operation and generation mode (8 by
default: about 45 s on SQLite or PostgreSQL), derandomized (the same cases every run), no shrinking.
The counts (operations, examples, failures, answers by status) are printed (`pytest -s`
or `-rP` shows them) and recorded as the test's `schemathesis` property (`--junitxml`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.client import Client

from api.app import create_app
from config import Settings
from store.db import make_sync_engine
from store.keys import ALL_SCOPES, register_api_key
from store.migrate import upgrade
from tests.dbutil import fresh_database_url, test_database_base_url
from tests.helpers import Api, territory, within
from worker import build_worker

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "8"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass
class Report:
    operations: int = 0
    examples: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: Operation and mode with no case to make (a negative case of a route whose only
    #: parameter is the fixed key): nothing to check there.
    unsatisfiable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        statuses = ", ".join(f"{code}: {n}" for code, n in sorted(self.by_status.items()))
        return (
            f"schemathesis: {self.operations} operations, {self.examples} examples "
            f"({MAX_EXAMPLES} per operation and mode; {len(self.unsatisfiable)} operation-modes with no "
            f"case to make), {len(self.failures)} failures; statuses {statuses}"
        )


# ---------------------------------------------------------------- the stack under test


@asynccontextmanager
async def served(settings: Settings, client: Client, task_queue: str) -> AsyncIterator[str]:
    """The app over real HTTP on this event loop (its lifespan run by uvicorn): the URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, client=client, task_queue=task_queue), log_level="error", lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not server.started:
            assert not task.done(), "the API did not start"
            assert asyncio.get_running_loop().time() < deadline, "the API did not start within 30 s"
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await within(task, "the API to stop")
        sock.close()


@pytest.fixture(scope="module")
def fuzz_database() -> Iterator[str]:
    with fresh_database_url(test_database_base_url()) as url:
        upgrade(url)
        yield url


@dataclass
class Stack:
    url: str
    key: str
    #: Path parameter values that name real records, by parameter name.
    known: dict[str, str]


@pytest.fixture
async def stack(fuzz_database: str, settings: Settings, client: Client) -> AsyncIterator[Stack]:
    engine = make_sync_engine(fuzz_database)
    key = register_api_key(engine, "fuzz-admin", ALL_SCOPES)
    engine.dispose()
    fuzz_settings = settings.model_copy(
        update={"database_url": fuzz_database, "rate_limit": None, "rate_limit_anonymous": None}
    )
    task_queue = f"needflow-fuzz-{uuid.uuid4().hex[:8]}"
    async with (
        build_worker(client, fuzz_settings, task_queue),
        served(fuzz_settings, client, task_queue) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield Stack(url, key, await seed(Api(http, key)))


async def seed(api: Api) -> dict[str, str]:
    """One of each record a path names, for cases to act on."""
    state = territory()
    staff = await api.staff(state)
    opportunity = await api.opportunity(owner=staff["bob"])
    referral = await api.refer(staff["ryan"], state)
    spare = (await api.post("/v1/api-keys", {"name": "spare", "scopes": ["reports:read"]}, expect=201)).json()
    return {
        "employee_id": staff["bob"]["id"],
        "customer_id": opportunity["customer_id"],
        "opportunity_id": opportunity["id"],
        "referral_id": referral["id"],
        "key_id": spare["id"],
    }


# ---------------------------------------------------------------- the run


def fuzz(url: str, key: str, known: dict[str, str]) -> Report:
    """Every operation of the document, each mode, MAX_EXAMPLES cases (blocking: run in a
    thread, while the event loop serves the app)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    auth = {"authorization": f"Bearer {key}"}
    report = Report()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            report.operations += 1
            path_names = {p.name for p in operation.path_parameters}
            for mode in MODES if _negatable(operation) else MODES[:1]:
                strategy = operation.as_strategy(generation_mode=mode, headers=auth)
                if path_names and path_names <= set(known):
                    real = {name: known[name] for name in path_names}
                    strategy = st.one_of(
                        strategy, operation.as_strategy(generation_mode=mode, headers=auth, path_parameters=real)
                    )
                _run(operation.label, mode, strategy, url, session, report)
    return report


def _negatable(operation: Any) -> bool:
    """Whether a case can break the operation's schema: a body, a query parameter or a
    header other than the key (a path parameter is any string). Without one, hypothesis
    would spend hundreds of tries to find no negative case."""
    headers = {h.name.lower() for h in operation.headers} - {"authorization"}
    return bool(len(operation.body) or len(operation.query) or headers)


def _run(label: str, mode: Any, strategy: Any, url: str, session: requests.Session, report: Report) -> None:
    last: list[Any] = []

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        last[:] = [case]
        response = case.call(base_url=url, session=session, timeout=30)
        report.examples += 1
        report.by_status[response.status_code] = report.by_status.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)

    try:
        check()
    except Unsatisfiable:  # nothing to make invalid: only the fixed key, or free-form strings
        report.unsatisfiable.append(f"{label} ({mode.value})")
    except (Exception, FailureGroup) as exc:  # noqa: BLE001  # every failure is collected, then reported together
        first_line = str(exc).strip().splitlines()
        curl = last[0].as_curl_command(headers={"authorization": "Bearer <key>"}) if last else ""
        report.failures.append(f"{label} ({mode.value}): {' / '.join(first_line[:6])}\n    {curl}")


@pytest.mark.timeout(max(120, MAX_EXAMPLES * 12))
async def test_every_operation_answers_as_its_schema_says_and_never_5xx(
    stack: Stack, record_property: pytest.RecordProperty
) -> None:
    report = await asyncio.to_thread(fuzz, stack.url, stack.key, stack.known)
    print(f"\n{report.summary()}")
    record_property(
        "schemathesis",
        json.dumps({"operations": report.operations, "examples": report.examples, "failures": len(report.failures)}),
    )
    # The document lists every route (tests/test_access.py checks it names exactly them).
    assert report.operations >= 40, report.summary()
    assert report.examples >= report.operations, report.summary()
    assert not report.failures, report.summary() + "\n" + "\n".join(report.failures)
