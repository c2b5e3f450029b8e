"""Idempotency-Key: the first response to a key is stored and replayed on repeats.

The same key with a different body is 409 `conflict`. Where a request starts or updates
a workflow, the key also becomes the workflow id or update id (see the routers), so
Temporal de-duplicates even a repeat that races the first request.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from api.deps import Principal, Services
from api.errors import ApiError
from store.models import IdempotencyRecord

_NAMESPACE = uuid.UUID("6f1c1d3e-5d0b-4b8e-9a57-0d7c8f7d2a11")


def derived_id(principal: Principal, key: str, prefix: str) -> str:
    """A stable resource id for a keyed create: the same key always names the same thing."""
    return f"{prefix}{uuid.uuid5(_NAMESPACE, f'{principal.id}:{key}').hex}"


def update_id(principal: Principal, key: str | None) -> str | None:
    return f"{principal.id}:{key}" if key else None


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
    body = await request.body()
    digest = hashlib.sha256(body).hexdigest()
    async with svc.sessions() as session:
        stored = await session.get(IdempotencyRecord, (principal.id, key))
    if stored is not None:
        if stored.request_sha256 != digest or stored.method != request.method or stored.path != request.url.path:
            raise ApiError(
                409, "conflict", "this Idempotency-Key was used with a different request", {"idempotency_key": key}
            )
        return JSONResponse(stored.response, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"})
    try:
        content, code = jsonable_encoder(await handler()), status_code
    except ApiError as exc:
        if exc.status >= 500:
            raise
        content, code = exc.body(), exc.status
    try:
        async with svc.sessions.begin() as session:
            session.add(
                IdempotencyRecord(
                    api_key_id=principal.id,
                    key=key,
                    method=request.method,
                    path=request.url.path,
                    request_sha256=digest,
                    status_code=code,
                    response=json.loads(json.dumps(content)),
                )
            )
    except IntegrityError:
        pass  # a concurrent repeat stored it first; both did the same thing once
    return JSONResponse(content, status_code=code)
