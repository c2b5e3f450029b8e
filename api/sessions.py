"""Browser sign-in sessions (the dashboard's and the codec's): a browser signs in once
with an API key and then holds only an opaque, HttpOnly session cookie.

A session maps the SHA-256 of the cookie's random id to the SHA-256 of the key it was
opened with, and expires after `ttl` seconds. The key itself is looked up again on every
request (`api.deps.principal_for`), so revoking it, or its losing a scope, ends the
session at once. Sessions live in the memory of the API process that opened them:
a restart signs everyone out, and behind a load balancer those paths are sticky
(docs/deployment.md). Each app keeps one store per purpose in `app.state`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request


@dataclass
class Session:
    key_sha256: str
    expires_at: float


@dataclass
class BrowserSessions:
    """Signed-in sessions of this process, by SHA-256 of the cookie's id."""

    ttl: float
    _by_id: dict[str, Session] = field(default_factory=dict)

    @staticmethod
    def _digest(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    def open(self, key_sha256: str) -> str:
        """A new session for the key; returns the cookie's id (shown to nobody else)."""
        now = time.monotonic()
        for sid in [s for s, v in self._by_id.items() if v.expires_at <= now]:
            del self._by_id[sid]  # forget the expired ones
        session_id = secrets.token_urlsafe(32)
        self._by_id[self._digest(session_id)] = Session(key_sha256, now + self.ttl)
        return session_id

    def get(self, session_id: str | None) -> Session | None:
        found = self._by_id.get(self._digest(session_id)) if session_id else None
        if found is not None and found.expires_at <= time.monotonic():
            self.close(session_id)
            return None
        return found

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(self._digest(session_id), None)


def sessions_for(request: Request, purpose: str, ttl: float) -> BrowserSessions:
    """This app's session store for `purpose` (`dashboard`, `codec`), made on first use."""
    state = request.app.state
    if not hasattr(state, "browser_sessions"):
        state.browser_sessions = {}
    stores: dict[str, BrowserSessions] = state.browser_sessions
    return stores.setdefault(purpose, BrowserSessions(ttl))
