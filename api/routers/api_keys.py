"""API keys (admin): issue one (shown once), list them (never the keys), revoke one.

Only a key's SHA-256 is stored. A revoked key answers 401 on its very next request: the
key is looked up in the store on every request, with no cache to outlive a revocation.
A key may be bound to an employee; it then acts as that employee and no one else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response
from sqlalchemy import select

from api.deps import Admin, ServicesDep
from api.errors import invalid, not_found
from api.schemas import ApiKeyCreate, ApiKeyIssued, ApiKeyList, ApiKeyOut
from domain.ids import new_id
from store.keys import hash_key, new_key
from store.models import ApiKey, Employee

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])


def _out(row: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        scopes=row.scopes,
        employee_id=row.employee_id,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


@router.post("", status_code=201, response_model=ApiKeyIssued)
async def create_api_key(body: ApiKeyCreate, svc: ServicesDep, who: Admin):
    key = new_key()
    async with svc.sessions.begin() as session:
        if body.employee_id is not None and await session.get(Employee, body.employee_id) is None:
            raise invalid(f"no employee {body.employee_id!r}", field="employee_id")
        row = ApiKey(
            id=new_id("key"),
            name=body.name,
            key_sha256=hash_key(key),
            scopes=sorted(set(body.scopes)),
            employee_id=body.employee_id,
            created_at=datetime.now(UTC),
        )
        session.add(row)
    return ApiKeyIssued(**_out(row).model_dump(), key=key)


@router.get("", response_model=ApiKeyList)
async def list_api_keys(svc: ServicesDep, who: Admin):
    async with svc.sessions() as session:
        rows = list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))
    return ApiKeyList(items=[_out(r) for r in rows])


@router.delete("/{key_id}", status_code=204, response_class=Response)
async def revoke_api_key(key_id: str, svc: ServicesDep, who: Admin) -> Response:
    async with svc.sessions.begin() as session:
        row = await session.get(ApiKey, key_id)
        if row is None:
            raise not_found("API key", key_id)
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
    return Response(status_code=204)
