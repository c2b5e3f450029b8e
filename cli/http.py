"""The client's HTTP calls to the needflow API: one request function with its retries,
and the error an API refusal becomes. Every command and the demo go through here, so a
lost connection or a 5xx is handled the same way everywhere."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from cli import CliError, Json

TIMEOUT = httpx.Timeout(60.0, connect=5.0)  # an event waits for its workflow to take it
RETRIES = 3  # attempts of a keyed request that failed in transit or with a 5xx
RETRY_STATUS = frozenset({500, 502, 503, 504})


class ApiFailure(CliError):
    """The API answered with an error: {"error": {"code", "message", "details"}}."""

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}", exit_code=1)
        self.status = status
        self.code = code
        self.api_message = message
        self.details = dict(details or {})

    @classmethod
    def from_response(cls, r: httpx.Response) -> ApiFailure:
        try:
            err = r.json()["error"]
            return cls(r.status_code, str(err["code"]), str(err["message"]), err.get("details") or {})
        except (ValueError, KeyError, TypeError):
            return cls(r.status_code, f"http_{r.status_code}", r.text.strip()[:300] or r.reason_phrase)


def request(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    body: Any = None,
    idempotency_key: str | None = None,
    expect: Sequence[int] = (200,),
) -> Json:
    """One API call; the JSON answer, or ApiFailure. A request that is safe to repeat (a GET,
    or a POST with an Idempotency-Key or an event id) is retried after a 5xx or a lost
    connection: the API answers a repeat from the first response."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    retryable = method == "GET" or idempotency_key is not None or url == "/v1/events"
    for attempt in range(1, RETRIES + 1):
        last = attempt == RETRIES or not retryable
        try:
            r = http.request(method, url, json=body, headers=headers)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot reach the needflow API at {http.base_url}: {exc}. Is the stack running "
                "(`make run`)? Otherwise point --api or NEEDFLOW_API_URL at it.",
                exit_code=1,
            ) from exc
        except httpx.TransportError:
            if last:
                raise
            time.sleep(0.5 * attempt)
            continue
        if r.status_code in expect:
            return r.json()
        if r.status_code in RETRY_STATUS and not last:
            time.sleep(0.5 * attempt)
            continue
        raise ApiFailure.from_response(r)
    raise AssertionError("unreachable")


def get(http: httpx.Client, url: str) -> Json:
    return request(http, "GET", url)


def post(http: httpx.Client, url: str, body: Any, *, key: str | None = None, expect: int = 201) -> Json:
    return request(http, "POST", url, body=body, idempotency_key=key, expect=(expect,))


def now() -> str:
    """The time the client stamps on an event it sends (its `occurred_at`)."""
    return datetime.now(UTC).isoformat()
