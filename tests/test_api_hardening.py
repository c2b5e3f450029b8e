"""API hardening (issue 9, item 9): rate limits, the key before the body, absurd input.

- **Rate limits** (api/ratelimit.py, NEEDFLOW_RATE_LIMIT, NEEDFLOW_RATE_LIMIT_ANONYMOUS):
  a key over its limit answers 429 `rate_limited` in the error shape with `Retry-After`;
  another key is not slowed by it; callers without a live key (none, unknown) are
  counted by address; `/healthz` is never limited; a refused keyed write stores no
  Idempotency-Key answer, so the same request to another process (whose counters are
  its own) does the work once.
- **The key before the body** (api/access.py): with no key, an unknown one or another
  scheme, any body (malformed, not UTF-8, nested too deep, NaN, over the size limit,
  never-ending) is 401 and never read; with a live key the same bodies answer as before
  (422, 413).
- **Absurd numbers**: NaN, Infinity, 1e400 and a 400-digit integer in an integer field,
  in a query parameter, and the month 9999-12 (whose end is no date: it was a 500) are
  422 in the error shape, naming the field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from temporalio.client import Client

from config import Settings
from store.models import Customer, Employee, IdempotencyRecord
from tests.helpers import IsolatedSettings, assert_error, assert_validation_error, count, serve_app, unique, within

#: So low that a test reaches them; per day, so that no window boundary falls inside a test.
PER_KEY = "3/day"
ANONYMOUS = "2/day"


@asynccontextmanager
async def limited_app(settings: Settings, client: Client, task_queue: str) -> AsyncIterator[httpx.AsyncClient]:
    """An API process of its own (its own counters) with low limits."""
    limited = settings.model_copy(update={"rate_limit": PER_KEY, "rate_limit_anonymous": ANONYMOUS})
    async with serve_app(limited, client, task_queue) as http:
        yield http


async def get(http: httpx.AsyncClient, path: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await within(http.get(path, headers=headers), f"GET {path}")


def assert_rate_limited(r: httpx.Response) -> dict:
    err = assert_error(r, 429, "rate_limited")
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 86400, r.headers
    assert err["details"]["retry_after_seconds"] == retry_after, err
    return err


# ---------------------------------------------------------------- rate limits


async def test_a_key_over_its_limit_is_429_with_retry_after_and_other_keys_go_on(
    settings: Settings, client: Client, task_queue: str, keys: dict[str, str]
) -> None:
    async with limited_app(settings, client, task_queue) as http:
        answers = [(await get(http, "/v1/outbox?limit=1", keys["admin"])).status_code for _ in range(3)]
        assert answers == [200, 200, 200]
        err = assert_rate_limited(await get(http, "/v1/outbox?limit=1", keys["admin"]))
        assert err["details"]["limit"] == "3 per 1 day", err
        # Any route: the key is limited, not the path.
        assert_rate_limited(await get(http, "/v1/api-keys", keys["admin"]))
        # Another key, from the same address, is not slowed by it.
        assert (await get(http, "/v1/outbox?limit=1", keys["all"])).status_code == 200
        # Nor is a health check.
        for _ in range(5):
            assert (await get(http, "/healthz")).status_code == 200


async def test_callers_without_a_live_key_are_limited_by_address_not_by_the_key_they_send(
    settings: Settings, client: Client, task_queue: str, keys: dict[str, str]
) -> None:
    async with limited_app(settings, client, task_queue) as http:
        assert_error(await get(http, "/v1/outbox"), 401, "unauthenticated")
        assert_error(await get(http, "/v1/outbox", "nf_guess-1"), 401, "unauthenticated")
        # A third guess, with yet another key: the address has had its two.
        assert_rate_limited(await get(http, "/v1/outbox", "nf_guess-2"))
        assert_rate_limited(await get(http, "/sign/no-such-token"))
        # A live key from that address is its own caller.
        assert (await get(http, "/v1/outbox?limit=1", keys["admin"])).status_code == 200


async def test_a_refused_write_stores_no_answer_and_another_process_does_it_once(
    settings: Settings, client: Client, task_queue: str, worker: None, keys: dict[str, str], db: Engine
) -> None:
    key, tag = keys["crm:write"], unique("limited")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": tag}
    async with limited_app(settings, client, task_queue) as http:
        for _ in range(3):
            assert (await get(http, "/v1/customers/no-such-customer", key)).status_code == 404
        r = await within(http.post("/v1/customers", json={"name": tag}, headers=headers), "POST")
        assert_rate_limited(r)
    assert count(db, IdempotencyRecord, IdempotencyRecord.key == tag) == 0
    assert count(db, Customer, Customer.name == tag) == 0
    # Counters are per process: another one lets the key in, and the keyed write is done.
    async with limited_app(settings, client, task_queue) as http:
        r = await within(http.post("/v1/customers", json={"name": tag}, headers=headers), "POST")
        assert r.status_code == 201, r.text
        again = await within(http.post("/v1/customers", json={"name": tag}, headers=headers), "POST")
        assert again.json() == r.json() and again.headers.get("Idempotent-Replayed") == "true"
    assert count(db, Customer, Customer.name == tag) == 1


def test_rate_limits_are_read_and_checked_from_settings() -> None:
    defaults = IsolatedSettings()
    assert (defaults.rate_limit, defaults.rate_limit_anonymous) == ("6000/minute", "600/minute")
    assert IsolatedSettings(rate_limit="off", rate_limit_anonymous="").rate_limit is None
    assert IsolatedSettings(rate_limit="100/second;6000/minute").rate_limit == "100/second;6000/minute"
    with pytest.raises(ValidationError, match="NEEDFLOW_RATE_LIMIT_ANONYMOUS must be a rate"):
        IsolatedSettings(rate_limit_anonymous="lots")


# ---------------------------------------------------------------- the key before the body


class Unread:
    """A request body that records whether the app asked for any of it."""

    def __init__(self, content: bytes, chunks: int = 1) -> None:
        self.content, self.chunks, self.read = content, chunks, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.read = True
            yield self.content


BODIES = {
    "malformed JSON": b'{"name": "Half A Body"',
    "not UTF-8": b'{"name": "\xc3\x28"}',
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "NaN": b'{"name": NaN}',
}


@pytest.mark.parametrize("authorization", [None, "Bearer nf_never-issued", "Basic dXNlcjpwYXNz"])
@pytest.mark.parametrize("body", sorted(BODIES))
async def test_without_a_live_key_no_body_is_read(
    authorization: str | None, body: str, app_client: httpx.AsyncClient, keys: dict[str, str], db: Engine
) -> None:
    before = count(db, Customer)
    headers = {"Content-Type": "application/json", **({"Authorization": authorization} if authorization else {})}
    stream = Unread(BODIES[body])
    r = await within(app_client.post("/v1/customers", content=stream, headers=headers), "POST")
    assert_error(r, 401, "unauthenticated")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert not stream.read, "the body of an unauthenticated request was read"
    # With a live key, the same body is read and refused as before.
    headers["Authorization"] = f"Bearer {keys['crm:write']}"
    assert_validation_error(
        await within(app_client.post("/v1/customers", content=BODIES[body], headers=headers), "POST")
    )
    assert count(db, Customer) == before


async def test_an_oversized_body_without_a_key_is_401_and_with_one_413(
    app_client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    # Chunked, 4 MiB in all: neither answer reads past the limit, the first reads nothing.
    stream = Unread(b"x" * (1024 * 1024), chunks=4)
    r = await within(app_client.post("/v1/employees", content=stream), "POST")
    assert_error(r, 401, "unauthenticated")
    assert not stream.read
    big = {"Authorization": f"Bearer {keys['admin']}", "Content-Length": str(2 * 1024 * 1024)}
    r = await within(app_client.post("/v1/employees", content=b"x" * (2 * 1024 * 1024), headers=big), "POST")
    assert_error(r, 413, "payload_too_large")


async def test_the_codec_wants_a_key_or_a_session_before_its_body(app_client: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer nf_never-issued"}):
        stream = Unread(b'{"payloads": [')
        r = await within(app_client.post("/codec/decode", content=stream, headers=headers), "POST")
        assert_error(r, 401, "unauthenticated")
        assert not stream.read


# ---------------------------------------------------------------- absurd numbers


def employee(capacity: str) -> bytes:
    email = f"{unique('absurd')}@bank.example"
    return (
        f'{{"name": "Absurd", "email": "{email}", "role": "banker", "line_of_business": "retail", '
        f'"products": [], "cities": [], "states": [], "capacity": {capacity}}}'
    ).encode()


@pytest.mark.parametrize(
    ("capacity", "problem"),
    [
        ("NaN", "finite_number"),
        ("Infinity", "finite_number"),
        ("-Infinity", "finite_number"),
        ("1e400", "finite_number"),  # infinite once parsed
        ("9" * 400, "less_than_equal"),  # 10**400 - 1: beyond any column
    ],
)
async def test_absurd_numbers_in_an_integer_field_are_422_naming_it(
    capacity: str, problem: str, app_client: httpx.AsyncClient, keys: dict[str, str], db: Engine
) -> None:
    before = count(db, Employee)
    headers = {"Authorization": f"Bearer {keys['admin']}", "Content-Type": "application/json"}
    r = await within(app_client.post("/v1/employees", content=employee(capacity), headers=headers), "POST")
    err = assert_validation_error(r, "capacity")
    assert [e["type"] for e in err["details"]["errors"]] == [problem], err
    assert count(db, Employee) == before


@pytest.mark.parametrize(
    "query",
    [
        "/v1/reports/practice-audit?limit=" + "9" * 400,
        "/v1/reports/practice-audit?limit=1e400",
        "/v1/reports/practice-audit?limit=NaN",
        "/v1/reports/referrers?window_days=-" + "9" * 400,
        "/v1/reports/scorecards?period=9999-12",  # no month after it: its end was a 500
        "/v1/reports/scorecards?period=0000-01",
    ],
)
async def test_absurd_query_numbers_are_422_naming_the_parameter(
    query: str, app_client: httpx.AsyncClient, keys: dict[str, str]
) -> None:
    r = await get(app_client, query, keys["reports:read"])
    name = query.split("?")[1].split("=")[0]
    err = assert_error(r, 422, "validation_error")
    assert f"query.{name}" in str(err), err
