"""Idempotency-Key: the first response to a key is stored and replayed on repeats.

The key is reserved before the request runs (a row with status 0), so a repeat that
races the first waits for the first one's answer instead of doing the work twice. The
same key with a different body is 409 `conflict`. Where a request starts or updates a
workflow, the key also becomes the workflow id or update id (see the routers), so
Temporal de-duplicates too. A request that fails with a 5xx, or is refused as busy
(429), releases its key: that is no answer to store, and retrying it is safe and does
the work. So does a 503 `timeout` (api/workflows.py): its update is still with the
workflow, and the retry, under the same update id, attaches to it and answers its outcome.

A reservation is a lease: a key reserved more than `LEASE_SECONDS` ago and still without
an answer belongs to a process that died mid-request, and the next repeat takes it over
(one conditional update decides who) and does the work. Records are kept for
`RETENTION` and then purged by the daily review (`store.upkeep`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import Principal, Services
from api.errors import ApiError
from store.models import IdempotencyRecord

T = TypeVar("T")
_IN_PROGRESS = 0
#: How long a repeat waits for the first request's answer before it gives up (409).
WAIT_FOR_FIRST_SECONDS = 60.0
#: A reservation older than this without an answer is a dead process's: taken over. A
#: live request holds its key no longer than its longest wait, the update deadline
#: (NEEDFLOW_UPDATE_DEADLINE, 15 s by default) and a few reads and writes; four times that
#: is ample. The fault tests (tests/faults/) killed APIs mid-request with a 300 s lease: the
#: repeats of the requests they held waited all of it.
LEASE_SECONDS = 60.0


async def keyed_done(session: AsyncSession, model: type[T], row_id: str, key: str | None) -> T | None:
    """A keyed create's row, if an earlier attempt with this key committed it but failed
    before its answer was stored (a 5xx releases the key): the retry answers from it
    instead of inserting the same key-derived id again. `idempotent` has already checked
    that the key came with the same request. None for an unkeyed request."""
    return await session.get(model, row_id) if key else None


def _conflict(key: str) -> ApiError:
    return ApiError(409, "conflict", "this Idempotency-Key was used with a different request", {"idempotency_key": key})


async def _reserve(svc: Services, principal: Principal, key: str, request: Request, digest: str) -> bool:
    try:
        async with svc.sessions.begin() as session:
            session.add(
                IdempotencyRecord(
                    api_key_id=principal.id,
                    key=key,
                    method=request.method,
                    path=request.url.path,
                    request_sha256=digest,
                    status_code=_IN_PROGRESS,
                    response="",
                )
            )
        return True
    except IntegrityError:
        return False


async def _take_over(svc: Services, principal: Principal, key: str, digest: str) -> bool:
    """Take over a reservation whose lease ran out (its process died): True when this
    request won it (one conditional update decides) and must do the work."""
    expired = datetime.now(UTC) - timedelta(seconds=LEASE_SECONDS)
    async with svc.sessions.begin() as session:
        done = await session.execute(
            update(IdempotencyRecord)
            .where(
                IdempotencyRecord.api_key_id == principal.id,
                IdempotencyRecord.key == key,
                IdempotencyRecord.status_code == _IN_PROGRESS,
                IdempotencyRecord.request_sha256 == digest,
                IdempotencyRecord.created_at < expired,
            )
            .values(created_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
    return done.rowcount == 1


async def _first_answer(svc: Services, principal: Principal, key: str) -> IdempotencyRecord | None:
    deadline = asyncio.get_running_loop().time() + WAIT_FOR_FIRST_SECONDS
    while True:
        async with svc.sessions() as session:
            stored = await session.get(IdempotencyRecord, (principal.id, key))
        if (
            stored is None
            or stored.status_code != _IN_PROGRESS
            or stored.created_at < datetime.now(UTC) - timedelta(seconds=LEASE_SECONDS)  # its process died
            or asyncio.get_running_loop().time() > deadline
        ):
            return stored
        await asyncio.sleep(0.05)


async def idempotent(
    request: Request,
    svc: Services,
    principal: Principal,
    key: str | None,
    status_code: int,
    handler: Callable[[], Awaitable[Any]],
) -> JSONResponse:
    if not key:
        return JSONResponse(jsonable_encoder(await handler()), status_code=status_code)
    digest = hashlib.sha256(await request.body()).hexdigest()
    while not await _reserve(svc, principal, key, request, digest):
        stored = await _first_answer(svc, principal, key)
        if stored is None:
            continue  # the first request failed and released the key: this one does the work
        if (stored.request_sha256, stored.method, stored.path) != (digest, request.method, request.url.path):
            raise _conflict(key)
        if stored.status_code == _IN_PROGRESS and await _take_over(svc, principal, key, digest):
            break  # the first request's process died: this one does the work
        if stored.status_code == _IN_PROGRESS:
            raise ApiError(
                409,
                "conflict",
                "a request with this Idempotency-Key is still in progress; retry later",
                {"idempotency_key": key},
            )
        return Response(
            stored.response,
            status_code=stored.status_code,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        content, code = jsonable_encoder(await handler()), status_code
    except ApiError as exc:
        if exc.status >= 500 or exc.status == 429:  # no answer to keep: a retry does the work
            await _release(svc, principal, key)
            raise
        content, code = exc.body(), exc.status
    except BaseException:
        await _release(svc, principal, key)
        raise
    response = JSONResponse(content, status_code=code)
    async with svc.sessions.begin() as session:
        stored = await session.get(IdempotencyRecord, (principal.id, key))
        assert stored is not None
        stored.status_code = code
        stored.response = bytes(response.body).decode()
    return response


async def _release(svc: Services, principal: Principal, key: str) -> None:
    async with svc.sessions.begin() as session:
        await session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.api_key_id == principal.id, IdempotencyRecord.key == key)
        )
