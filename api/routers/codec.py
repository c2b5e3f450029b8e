"""The codec server: POST /codec/encode and /codec/decode, for the Temporal Web UI and CLI.

Workflow histories hold customer data only encrypted (workflows/codec.py). These two
endpoints speak Temporal's codec server protocol: a JSON body `{"payloads": [{"metadata":
{name: base64}, "data": base64}, …]}` in, the same shape out, each payload encrypted with
the current key (encode) or decrypted with the key its metadata names (decode; payloads
that were never encrypted come back unchanged). They use the codec of this API's own
Temporal client, so they read exactly what the workers write.

Who may: whoever can read every customer's data in every history, so the `admin` scope
(operations, which already reads the e-mail outbox). Either
- `Authorization: Bearer <key>`: the `temporal` CLI (`--codec-endpoint URL/codec
  --codec-auth "Bearer KEY"`), scripts, a gateway; or
- a browser session: `GET /codec/sign-in` exchanges the key for a session cookie
  (`HttpOnly`, `SameSite=Strict`, path `/codec`, `Secure` over https, 8 hours, kept in
  this process's memory as the dashboard's are), which the Web UI sends when its codec
  setting "Include cross-origin credentials" is on. The Web UI sends an `Authorization`
  header only with "Pass the user access token", which is its own OIDC sign-in's token
  and only to an https endpoint: not a needflow key, so it does not authenticate here.

Every call is logged (who, which namespace, how many payloads), never the payloads.

CORS: the browser calls these from the Web UI's origin (a preflight, for the JSON body
and the UI's `X-Namespace` header), so `/codec/*` answers CORS, credentials included,
for the origins in NEEDFLOW_CODEC_CORS_ORIGINS (default: the dev UI's) and no others.
The rest of the API answers no CORS at all.
"""

from __future__ import annotations

import base64
import binascii
import html
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from api.deps import Principal, Services, ServicesDep, principal_for, require
from api.errors import ApiError
from api.sessions import BrowserSessions, sessions_for
from store.keys import hash_key
from workflows.codec import CodecError

#: The scope a caller of the codec needs: it reads every customer's data in every history.
SCOPE = "admin"
PREFIX = "/codec"
COOKIE = "needflow_codec"
SESSION_TTL = 8 * 3600
#: What the Web UI sends with its codec requests (and the CLI's `--codec-auth`).
CORS_HEADERS = ["Authorization", "Authorization-Extras", "Content-Type", "X-Namespace"]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

log = logging.getLogger("needflow.codec")
router = APIRouter(prefix=PREFIX, tags=["codec"])


# ---------------------------------------------------------------- the protocol's JSON


class CodecPayload(BaseModel):
    """A Temporal payload as protobuf's JSON mapping writes it: bytes in base64."""

    model_config = ConfigDict(extra="ignore")

    metadata: dict[str, str] = Field(default_factory=dict, description="metadata values, base64")
    data: str = Field(default="", description="the payload's bytes, base64")


class CodecPayloads(BaseModel):
    payloads: list[CodecPayload] = Field(max_length=10_000)


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "validation_error", f"{where} is not base64", {"field": where}) from None


def _to_proto(body: CodecPayloads) -> list[Payload]:
    return [
        Payload(
            metadata={k: _b64(v, f"payloads.{i}.metadata.{k}") for k, v in p.metadata.items()},
            data=_b64(p.data, f"payloads.{i}.data"),
        )
        for i, p in enumerate(body.payloads)
    ]


def _from_proto(payloads: list[Payload]) -> CodecPayloads:
    return CodecPayloads(
        payloads=[
            CodecPayload(
                metadata={k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                data=base64.b64encode(p.data).decode(),
            )
            for p in payloads
        ]
    )


# ---------------------------------------------------------------- browser sessions


def _sessions(request: Request) -> BrowserSessions:
    return sessions_for(request, "codec", SESSION_TTL)


async def codec_caller(
    request: Request, svc: ServicesDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The Bearer key if one is sent (401/403 as everywhere), else the session's key,
    looked up now: a revoked key, or one that lost the scope, ends the session."""
    if authorization is not None:
        return await require(SCOPE)(svc, authorization)
    session_id = request.cookies.get(COOKIE)
    found = _sessions(request).get(session_id)
    who = await principal_for(svc, found.key_sha256) if found else None
    if who is None or SCOPE not in who.scopes:
        _sessions(request).close(session_id)
        raise ApiError(
            401,
            "unauthenticated",
            f"send an API key holding {SCOPE!r} as 'Authorization: Bearer <key>', or sign in at "
            f"{PREFIX}/sign-in (the Web UI then sends the session cookie: 'Include cross-origin credentials')",
        )
    return who


CodecCaller = Annotated[Principal, Depends(codec_caller)]


# ---------------------------------------------------------------- encode, decode


def _codec(svc: Services) -> PayloadCodec:
    codec = svc.client.data_converter.payload_codec
    if codec is None:
        raise ApiError(503, "unavailable", "this API's Temporal client has no payload codec")
    return codec


async def _apply(
    what: str,
    convert: Callable[[list[Payload]], Awaitable[list[Payload]]],
    body: CodecPayloads,
    who: Principal,
    namespace: str | None,
) -> CodecPayloads:
    payloads = _to_proto(body)
    try:
        result = await convert(payloads)
    except CodecError as err:
        log.warning("codec %s refused for key %s (namespace %s): %s", what, who.name, namespace, err)
        raise ApiError(422, "validation_error", str(err), {}) from None
    log.info("codec %s: %d payload(s) for key %s (namespace %s)", what, len(payloads), who.name, namespace)
    return _from_proto(result)


@router.post("/encode", response_model=CodecPayloads)
async def encode(
    body: CodecPayloads,
    svc: ServicesDep,
    who: CodecCaller,
    namespace: Annotated[str | None, Header(alias="X-Namespace", max_length=256)] = None,
):
    """Encrypt payloads with the current key (Temporal's codec server protocol)."""
    return await _apply("encode", _codec(svc).encode, body, who, namespace)


@router.post("/decode", response_model=CodecPayloads)
async def decode(
    body: CodecPayloads,
    svc: ServicesDep,
    who: CodecCaller,
    namespace: Annotated[str | None, Header(alias="X-Namespace", max_length=256)] = None,
):
    """Decrypt payloads with the key each names; payloads never encrypted come back as they are."""
    return await _apply("decode", _codec(svc).decode, body, who, namespace)


# ---------------------------------------------------------------- sign-in page

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>needflow codec</title></head>
<body><h1>needflow codec: sign in</h1>{body}</body></html>
"""
_FORM = f"""<p>{{message}}</p>
<form method="post" action="{PREFIX}/sign-in">
<label>API key holding <code>{SCOPE}</code> <input type="password" name="api_key" autocomplete="off" required></label>
<button type="submit">Sign in</button>
</form>"""


def _page(status: int, body: str) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(body=body), status_code=status, headers=SECURITY_HEADERS)


def _form(status: int, message: str) -> HTMLResponse:
    return _page(status, _FORM.format(message=html.escape(message)))


@router.get("/sign-in", include_in_schema=False)
async def sign_in_form():
    return _form(200, "Sign in so that the Temporal Web UI in this browser can decrypt workflow payloads.")


@router.post("/sign-in", include_in_schema=False)
async def sign_in(request: Request, svc: ServicesDep, api_key: Annotated[str, Form(max_length=500)] = ""):
    key = api_key.strip()
    who = await principal_for(svc, hash_key(key)) if key else None
    if who is None:
        return _form(401, "Unknown or revoked API key.")
    if SCOPE not in who.scopes:
        return _form(403, f"This API key lacks the scope {SCOPE}.")
    sessions = _sessions(request)
    sessions.close(request.cookies.get(COOKIE))  # a new session id at every sign-in
    origins = ", ".join(html.escape(o) for o in svc.settings.resolved_codec_cors_origins)
    response = _page(
        200,
        f"<p>Signed in as key <code>{html.escape(who.name)}</code> for 8 hours.</p>"
        f"<p>In the Temporal Web UI ({origins}): Data Encoder settings, codec server "
        f"<code>{html.escape(str(request.base_url).rstrip('/'))}{PREFIX}</code>, "
        "turn on <em>Include cross-origin credentials</em>.</p>"
        f'<form method="post" action="{PREFIX}/sign-out"><button type="submit">Sign out</button></form>',
    )
    response.set_cookie(
        COOKIE,
        sessions.open(hash_key(key)),
        max_age=SESSION_TTL,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    log.info("codec sign-in for key %s", who.name)
    return response


@router.post("/sign-out", include_in_schema=False)
async def sign_out(request: Request):
    _sessions(request).close(request.cookies.get(COOKIE))
    response = _form(200, "Signed out.")
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


# ---------------------------------------------------------------- CORS, for /codec only


class CodecCors:
    """CORS (Starlette's) for the paths under /codec only, from `origins` only."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=CORS_HEADERS,
            allow_credentials=True,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
