"""API keys: only a SHA-256 of each key is stored (keys are long random strings, so a
plain hash is enough; nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from store.models import ApiKey

ALL_SCOPES = ("events:write", "crm:write", "reports:read")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "nf_" + secrets.token_urlsafe(32)


def register_api_key(engine: Engine, name: str, scopes: list[str] | tuple[str, ...], key: str | None = None) -> str:
    """Store a key (a new random one unless given) with these scopes; returns the key.

    Registering a key that is already stored changes nothing, so the dev stack can
    register NEEDFLOW_DEV_API_KEY at every start.
    """
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
    key = key or new_key()
    digest = hash_key(key)
    with Session(engine) as session, session.begin():
        if session.scalar(select(ApiKey).where(ApiKey.key_sha256 == digest)) is None:
            session.add(ApiKey(id=uuid.uuid4().hex, name=name, key_sha256=digest, scopes=list(scopes)))
    return key
