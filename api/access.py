"""The access guard: who is calling, checked before a byte of the body is read.

FastAPI reads and parses a route's JSON body before the route's dependencies run, so a
caller without a key who sent malformed JSON (or invalid UTF-8, or nesting too deep) was
told 422 about the body instead of 401: the API parsed what a stranger sent and told
them how. `AccessGuard`, a pure ASGI middleware in front of the request guard
(api/limits.py) and the routes, settles who the caller is first:

- **`/v1/*`** (but `/v1/webhooks/*`, which authenticate their message by its signature):
  no `Authorization: Bearer` key, or one unknown or revoked, is 401 `unauthenticated`
  here (`api.deps.authenticate`, the one check), the body unread. The key found is left
  in the request's scope, and the route's `require` takes it from there (one lookup per
  request); the scope check stays the route's (403), after FastAPI has read the body.
- **`/codec/encode`, `/codec/decode`**: a Bearer key is checked the same way; a request
  with neither a key nor a codec session cookie is 401; a session is the route's to check.
- **Rate limits** (api/ratelimit.py): every request but `/healthz` counts against its
  caller, the key found or else its client address. So a stream of unknown keys from
  one address is limited like any caller without a key.

Every other path (signing pages, the dashboard, the documentation) is the routes' own.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import AUTHENTICATED, Principal, Services, authenticate
from api.errors import ApiError
from api.ratelimit import RateLimits
from api.routers.codec import COOKIE as CODEC_COOKIE
from api.routers.codec import PREFIX as CODEC_PREFIX

#: Paths that never count against a rate limit: a load balancer's health check must not
#: take a process out of rotation for a busy address.
UNLIMITED = ("/healthz",)
#: Where every request needs a key, but these (authenticated otherwise).
KEYED_PREFIX = "/v1/"
NOT_KEYED = ("/v1/webhooks/",)
#: The codec's protocol paths: a key or a browser session.
CODEC_PATHS = (f"{CODEC_PREFIX}/encode", f"{CODEC_PREFIX}/decode")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _has_cookie(scope: Scope, cookie: str) -> bool:
    header = _header(scope, b"cookie") or ""
    return any(part.strip().startswith(f"{cookie}=") for part in header.split(";"))


class AccessGuard:
    """The guard of the module docstring, with the settings' rate limits (config.py)."""

    def __init__(self, app: ASGIApp, settings: object = None) -> None:
        self.app = app
        self.limits = RateLimits.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No services before the lifespan has run: nothing can be answered then, and the
        # routes' own `require` still stands.
        services: Services | None = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if scope["type"] != "http" or services is None or scope["path"] in UNLIMITED:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        authorization = _header(scope, b"authorization")
        keyed = path.startswith(KEYED_PREFIX) and not path.startswith(NOT_KEYED)
        codec = path in CODEC_PATHS and scope["method"] != "OPTIONS"

        who: Principal | None = None
        refused: ApiError | None = None
        if keyed or (codec and authorization is not None):
            try:
                who = await authenticate(services, authorization)
            except ApiError as err:
                refused = err
        elif codec and not _has_cookie(scope, CODEC_COOKIE):
            refused = ApiError(
                401,
                "unauthenticated",
                f"send an API key holding 'admin' as 'Authorization: Bearer <key>', or sign in at {CODEC_PREFIX}/sign-in",
            )

        client = scope.get("client")
        limited = await self.limits.refusal(who.id if who else None, client[0] if client else "unknown")
        if limited is not None:
            await limited(scope, receive, send)
            return
        if refused is not None:
            await refused.response()(scope, receive, send)
            return
        if who is not None:
            scope[AUTHENTICATED] = (authorization, who)
        await self.app(scope, receive, send)
