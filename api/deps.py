"""FastAPI dependencies: the app's services, the caller's API key and its scopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.errors import ApiError
from config import Settings
from domain.process import ProcessCatalog
from domain.routing import RoutingRules
from store.keys import hash_key
from store.models import ApiKey
from workflows.starts import Starts


@dataclass
class Services:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    client: Client
    catalog: ProcessCatalog
    routing_rules: RoutingRules
    starts: Starts


@dataclass(frozen=True)
class Principal:
    """The API key a request came with."""

    id: str
    name: str
    scopes: frozenset[str]
    #: The employee a bound key acts as (and only as); None for a system's key.
    employee_id: str | None = None


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


#: The key lookup of every request, built once and read as a plain row (store/audit.py
#: `_BY_IDS` says why statements are built once). Never cached across requests: a revoked
#: key answers 401 from the moment it is revoked (spec/API.md), on every API process.
_LIVE_KEY = select(ApiKey.id, ApiKey.name, ApiKey.scopes, ApiKey.employee_id).where(
    ApiKey.key_sha256 == bindparam("key_sha256"), ApiKey.revoked_at.is_(None)
)


async def principal_for(svc: Services, key_sha256: str) -> Principal | None:
    """The live (unrevoked) key with this SHA-256, or None: the one key lookup, used for
    every request — by `require` (Authorization header) and by the dashboard's session."""
    async with svc.sessions() as session:
        row = (await session.execute(_LIVE_KEY, {"key_sha256": key_sha256})).one_or_none()
    if row is None:
        return None
    return Principal(id=row.id, name=row.name, scopes=frozenset(row.scopes), employee_id=row.employee_id)


async def authenticate(svc: Services, authorization: str | None) -> Principal:
    """The live key an `Authorization: Bearer` header carries, else a 401: the one check,
    made by the access guard (api/access.py) before a body is read, and by `require`."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "unauthenticated", "send an API key as 'Authorization: Bearer <key>'")
    who = await principal_for(svc, hash_key(authorization[7:].strip()))
    if who is None:
        raise ApiError(401, "unauthenticated", "unknown or revoked API key")
    return who


#: Where the access guard leaves the key it authenticated: (the Authorization header, the Principal).
AUTHENTICATED = "needflow.authenticated"


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(
        svc: ServicesDep,
        authorization: Annotated[str | None, Header()] = None,
        *,
        request: Request = None,  # type: ignore[assignment]  # FastAPI passes it; a direct call may not
    ) -> Principal:
        # The access guard looked this header's key up a moment ago: no second query.
        found = request.scope.get(AUTHENTICATED) if request is not None else None
        if found is not None and found[0] == authorization:
            who = found[1]
        else:
            who = await authenticate(svc, authorization)
        if scope not in who.scopes:
            raise ApiError(403, "forbidden", f"this API key lacks the scope {scope!r}", {"required_scope": scope})
        return who

    return dependency


CrmWriter = Annotated[Principal, Depends(require("crm:write"))]
EventWriter = Annotated[Principal, Depends(require("events:write"))]
ReportReader = Annotated[Principal, Depends(require("reports:read"))]
Admin = Annotated[Principal, Depends(require("admin"))]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
