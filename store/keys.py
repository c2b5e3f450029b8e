"""API keys: only a SHA-256 of each key is stored (keys are long random strings, so a
plain hash is enough; nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from domain.ids import new_id
from store.models import ApiKey, Employee

#: What a key may do. `admin`: API keys, employees, the outbox; `crm:act-as`: name any
#: employee as the actor of a command (a front end that authenticates its own users).
ALL_SCOPES = ("events:write", "crm:write", "reports:read", "admin", "crm:act-as")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "nf_" + secrets.token_urlsafe(32)


def unknown_scopes(scopes: Iterable[str]) -> list[str]:
    return sorted(set(scopes) - set(ALL_SCOPES))


def register_api_key(
    engine: Engine,
    name: str,
    scopes: list[str] | tuple[str, ...],
    key: str | None = None,
    employee_id: str | None = None,
) -> str:
    """Store a key (a new random one unless given) with these scopes, bound to
    `employee_id` if given; returns the key.

    Registering a key that is already stored changes nothing, so the dev stack can
    register NEEDFLOW_DEV_API_KEY at every start.
    """
    if unknown := unknown_scopes(scopes):
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
    key = key or new_key()
    digest = hash_key(key)
    with Session(engine) as session, session.begin():
        if employee_id is not None and session.get(Employee, employee_id) is None:
            raise ValueError(f"no employee {employee_id!r}")
        if session.scalar(select(ApiKey).where(ApiKey.key_sha256 == digest)) is None:
            session.add(
                ApiKey(
                    id=new_id("key"),
                    name=name,
                    key_sha256=digest,
                    scopes=sorted(set(scopes)),
                    employee_id=employee_id,
                )
            )
    return key


def list_api_keys(engine: Engine) -> list[ApiKey]:
    """Every key, oldest first (their digests, never the keys)."""
    with Session(engine) as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_api_key(engine: Engine, key_id: str, at: datetime | None = None) -> bool:
    """Revoke a key from now on; False if there is no such key. Revoking twice keeps the
    first time."""
    with Session(engine) as session, session.begin():
        row = session.get(ApiKey, key_id)
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = at or datetime.now(UTC)
        return True
