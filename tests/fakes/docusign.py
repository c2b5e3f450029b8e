"""A faithful local DocuSign for tests and demos: OAuth (JWT grant, user info) and the
eSignature REST endpoints needflow's provider uses, over HTTPS with a certificate
generated at start, plus controls that play the customer and DocuSign Connect.

    with DocuSignFake(integration_key=IK, user_id=UID, public_key_pem=PUB).start(tmp) as fake:
        provider = DocuSignProvider(fake.settings(private_key_file), webhook_url=...)
        envelope = await provider.send(...)
        fake.sign(envelope.envelope_id)
        await fake.deliver_connect(envelope.envelope_id, url, secret, client=api_client)

The server is Starlette under uvicorn on 127.0.0.1 (a random port), in a thread; the
provider trusts it through DOCUSIGN_CA_BUNDLE = `fake.ca_bundle` (a CA generated at
start that signed the server's certificate) and reaches it at DOCUSIGN_OAUTH_HOST =
`fake.oauth_host` ("127.0.0.1:PORT"); user info gives `fake.base_uri` as the accounts'
base URI, as DocuSign gives https://demo.docusign.net.

What it checks, as DocuSign does:

- `POST /oauth/token`: form-encoded, `grant_type` the JWT bearer URN, the assertion an
  RS256 JWT whose signature verifies with the integration key's public key (PyJWT),
  `iss` = the integration key, `aud` = the OAuth host, `sub` = the user, `scope` with
  `signature` and `impersonation`, `iat` not in the future, `exp` after now and at most an
  hour after `iat`, consent granted. Refusals are 400 `{"error", "error_description"}`;
  `issuer_not_found`, `no_valid_keys_or_signatures`, `user_not_found`,
  `consent_required` are DocuSign's documented answers, the lifetime ones approximate.
- `GET /oauth/userinfo`: a bearer token it issued, unexpired.
- REST (`/restapi/v2.1/accounts/{account}/…`): a bearer token it issued, unexpired and not
  revoked (else 401 AUTHORIZATION_INVALID_TOKEN), an account of that user. Envelope bodies
  as DocuSign validates them: status sent/created, an e-mail subject (≤ 100), documents
  (id, name, base64 content, a convertible extension), signers (e-mail, name, unique
  recipientId), sign-here tabs (an anchor found in a document's text, or a fixed
  position), text custom fields (name, value ≤ 100), an eventNotification (https/http URL,
  boolean strings, JSON SIM event data). Error bodies are `{"errorCode", "message"}`.
- `GET …/envelopes` needs `from_date` (or envelope_ids/transaction_ids/folder_ids) and
  filters `custom_field=NAME=VALUE` (% wildcards), `status`; `include` adds custom fields
  and recipients. Every REST answer carries X-RateLimit-Limit/-Remaining/-Reset.

Controls: `sign`, `decline`, `expire`, `open` (the customer's acts); `throttle` (429s with
X-RateLimit-Reset), `exhaust` (an answer with X-RateLimit-Remaining: 0), `fail_next`
(e.g. 503s), `revoke_tokens`, `consent_granted`, `advertised_base_uri`; counters
`token_requests`, `userinfo_requests`, `envelopes_created`, `requests`; `reset()`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import html
import ipaddress
import json
import math
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from config import DocuSignSettings
from esign.connect import compute_signature

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
EXPIRED_REASON = "Envelope has expired."
CONVERTIBLE = frozenset({"html", "htm", "pdf", "docx", "doc", "txt", "rtf"})
CONNECT_EVENTS = frozenset(
    {
        "envelope-created",
        "envelope-sent",
        "envelope-resent",
        "envelope-delivered",
        "envelope-completed",
        "envelope-declined",
        "envelope-voided",
        "envelope-corrected",
        "envelope-purge",
        "envelope-deleted",
        "envelope-discard",
        "recipient-sent",
        "recipient-autoresponded",
        "recipient-delivered",
        "recipient-completed",
        "recipient-declined",
        "recipient-authenticationfailed",
        "recipient-resent",
        "recipient-reassign",
        "recipient-finish-later",
    }
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_STATUS_EVENTS = {
    "sent": "envelope-sent",
    "delivered": "envelope-delivered",
    "completed": "envelope-completed",
    "declined": "envelope-declined",
    "voided": "envelope-voided",
}


def ds_time(moment: dt.datetime) -> str:
    """DocuSign's timestamp format: seven fractional digits, Z."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


class IsolatedDocuSignSettings(DocuSignSettings):
    """DocuSignSettings from its arguments only: a DOCUSIGN_* variable in the developer's
    environment changes nothing in a test."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type,
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple:
        return (init_settings,)


class _Refusal(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def _error(code: str, message: str, status: int = 400) -> _Refusal:
    return _Refusal(status, {"errorCode": code, "message": message})


def _oauth_refusal(error: str, description: str | None = None) -> _Refusal:
    body = {"error": error}
    if description:
        body["error_description"] = description
    return _Refusal(400, body)


@dataclass
class FakeEnvelope:
    envelope_id: str
    account_id: str
    #: The creation request's JSON body, as received.
    definition: dict[str, Any]
    status: str
    created: dt.datetime
    status_changed: dt.datetime
    email_subject: str
    documents: list[dict[str, Any]]  # documentId, name, fileExtension, content (bytes)
    signers: list[dict[str, Any]]
    text_custom_fields: list[dict[str, Any]]
    event_notification: dict[str, Any] | None
    sent: dt.datetime | None = None
    delivered: dt.datetime | None = None
    completed: dt.datetime | None = None
    declined: dt.datetime | None = None
    voided: dt.datetime | None = None
    voided_reason: str | None = None

    def field(self, name: str) -> str | None:
        return next((f.get("value") for f in self.text_custom_fields if f.get("name") == name), None)

    def as_json(self, include: set[str]) -> dict[str, Any]:
        uri = f"/envelopes/{self.envelope_id}"
        out: dict[str, Any] = {
            "envelopeId": self.envelope_id,
            "envelopeUri": uri,
            "status": self.status,
            "emailSubject": self.email_subject,
            "createdDateTime": ds_time(self.created),
            "statusChangedDateTime": ds_time(self.status_changed),
            "documentsUri": f"{uri}/documents",
            "recipientsUri": f"{uri}/recipients",
            "customFieldsUri": f"{uri}/custom_fields",
        }
        for key, value in (
            ("sentDateTime", self.sent),
            ("deliveredDateTime", self.delivered),
            ("completedDateTime", self.completed),
            ("declinedDateTime", self.declined),
            ("voidedDateTime", self.voided),
        ):
            if value is not None:
                out[key] = ds_time(value)
        if self.voided_reason:
            out["voidedReason"] = self.voided_reason
        if "custom_fields" in include:
            out["customFields"] = {
                "textCustomFields": [dict(f) for f in self.text_custom_fields],
                "listCustomFields": [],
            }
        if "recipients" in include:
            out["recipients"] = {
                "signers": [_signer_json(s) for s in self.signers],
                "recipientCount": str(len(self.signers)),
            }
        return out


def _signer_json(signer: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in signer.items() if v is not None and k != "tabs"}
    for key in ("deliveredDateTime", "signedDateTime", "declinedDateTime", "sentDateTime"):
        if isinstance(out.get(key), dt.datetime):
            out[key] = ds_time(out[key])
    return out


@dataclass
class _Token:
    user_id: str
    expires_at: float
    scopes: frozenset[str]


@dataclass
class _Faults:
    throttled: int = 0
    throttle_reset_in: float = 1.0
    throttle_status: int = 429
    throttle_code: str = "HOURLY_APIINVOCATION_LIMIT_EXCEEDED"
    exhaust_reset_in: float | None = None
    failures: list[tuple[int, str]] = field(default_factory=list)


def _text_of(content: bytes, extension: str) -> str:
    text = content.decode("utf-8", "replace")
    if extension in ("html", "htm"):
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return re.sub(r"\s+", " ", text)


def _true_false(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("true", "false"))


class DocuSignFake:
    """DocuSign's OAuth and eSignature REST for one integration key and one user, who is
    a member of two accounts: `account_id` (the default) and `second_account_id`."""

    def __init__(
        self,
        *,
        integration_key: str,
        user_id: str,
        public_key_pem: bytes,
        account_id: str | None = None,
        second_account_id: str | None = None,
        token_lifetime: int = 28800,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.integration_key = integration_key
        self.user_id = user_id
        self.public_key_pem = public_key_pem
        self.account_id = account_id or str(uuid.uuid4())
        self.second_account_id = second_account_id or str(uuid.uuid4())
        self.token_lifetime = token_lifetime
        self.clock = clock
        self._lock = threading.RLock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.ca_bundle = Path()
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget envelopes, tokens, counters and faults (not the keys or the server)."""
        with self._lock:
            self.envelopes: dict[str, FakeEnvelope] = {}
            self.tokens: dict[str, _Token] = {}
            self.token_requests = 0  # tokens issued
            self.token_refusals: list[dict[str, Any]] = []
            self.userinfo_requests = 0
            self.requests: list[tuple[str, str, dict[str, list[str]]]] = []  # REST: method, path, query
            self.consent_granted = True
            #: What user info gives as the accounts' base URI (None: this server).
            self.advertised_base_uri: str | None = None
            self._faults = _Faults()
            self._calls_this_hour = 0

    @property
    def oauth_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_uri(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def envelopes_created(self) -> int:
        with self._lock:
            return len(self.envelopes)

    def settings(self, private_key_file: Path, **overrides: Any) -> DocuSignSettings:
        """DocuSign settings that point the provider at this fake (test values only)."""
        values: dict[str, Any] = {
            "integration_key": self.integration_key,
            "user_id": self.user_id,
            "private_key_file": private_key_file,
            "oauth_host": self.oauth_host,
            "ca_bundle": self.ca_bundle,
            "connect_hmac_secrets": ["fake-connect-secret"],
        }
        values.update(overrides)
        return IsolatedDocuSignSettings(**values)

    def start(self, workdir: Path) -> DocuSignFake:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_bundle, certfile, keyfile = _certificates(workdir)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            ssl_certfile=str(certfile),
            ssl_keyfile=str(keyfile),
            log_level="warning",
            access_log=False,
            lifespan="off",
            # uvloop where installed (uvicorn[standard]): asyncio's TLS transport answers
            # each request ~40 ms late on loopback (delayed ACKs).
            loop="auto",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="docusign-fake", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the DocuSign fake did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # keep-alive connections of clients never closed
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> DocuSignFake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- controls: faults -------------------------------------------------------------------

    def throttle(
        self,
        count: int,
        *,
        reset_in: float = 1.0,
        status: int = 429,
        code: str = "HOURLY_APIINVOCATION_LIMIT_EXCEEDED",
    ) -> None:
        """The next `count` REST calls are refused as over the rate limit, with
        X-RateLimit-Reset = now + reset_in (epoch seconds, rounded up)."""
        with self._lock:
            self._faults.throttled = count
            self._faults.throttle_reset_in = reset_in
            self._faults.throttle_status = status
            self._faults.throttle_code = code

    def exhaust(self, *, reset_in: float = 1.0) -> None:
        """The next successful REST answer says X-RateLimit-Remaining: 0."""
        with self._lock:
            self._faults.exhaust_reset_in = reset_in

    def fail_next(self, status: int = 503, count: int = 1, code: str = "SERVICE_UNAVAILABLE") -> None:
        with self._lock:
            self._faults.failures.extend([(status, code)] * count)

    def revoke_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    # -- controls: the customer ---------------------------------------------------------------

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def envelope(self, envelope_id: str) -> FakeEnvelope:
        with self._lock:
            return self.envelopes[envelope_id]

    def _act(self, envelope_id: str, allowed: Sequence[str]) -> tuple[FakeEnvelope, dt.datetime]:
        env = self.envelopes.get(envelope_id)
        if env is None:
            raise KeyError(f"no envelope {envelope_id}")
        if env.status not in allowed:
            raise ValueError(f"envelope {envelope_id} is {env.status}")
        return env, self._now()

    def open(self, envelope_id: str) -> None:
        """The customer opens the envelope (status delivered)."""
        with self._lock:
            env, now = self._act(envelope_id, ("sent", "delivered"))
            env.status, env.delivered, env.status_changed = "delivered", now, now
            for s in env.signers:
                s["status"], s["deliveredDateTime"] = "delivered", now

    def sign(self, envelope_id: str) -> None:
        """The customer signs: every signer completed, the envelope completed."""
        with self._lock:
            env, now = self._act(envelope_id, ("sent", "delivered"))
            for s in env.signers:
                s["deliveredDateTime"] = s.get("deliveredDateTime") or now
                s["status"], s["signedDateTime"] = "completed", now
            env.delivered = env.delivered or now
            env.status, env.completed, env.status_changed = "completed", now, now

    def decline(self, envelope_id: str, reason: str) -> None:
        with self._lock:
            env, now = self._act(envelope_id, ("sent", "delivered"))
            signer = env.signers[0]
            signer["status"], signer["declinedDateTime"], signer["declinedReason"] = "declined", now, reason
            env.status, env.declined, env.status_changed = "declined", now, now

    def expire(self, envelope_id: str) -> None:
        """The envelope passes its expiry date: DocuSign voids it, "Envelope has expired."."""
        with self._lock:
            env, now = self._act(envelope_id, ("sent", "delivered"))
            env.status, env.voided, env.voided_reason, env.status_changed = "voided", now, EXPIRED_REASON, now

    # -- controls: Connect ----------------------------------------------------------------------

    def connect_message(self, envelope_id: str, *, event: str | None = None, retry_count: int = 0) -> bytes:
        """The JSON SIM message DocuSign Connect would send for the envelope now (its
        current status's event unless `event` names another), with the envelope summary
        its eventNotification asked for (eventData.includeData)."""
        with self._lock:
            env = self.envelopes[envelope_id]
            event = event or _STATUS_EVENTS.get(env.status, "envelope-sent")
            event_data = (env.event_notification or {}).get("eventData") or {}
            include = set(event_data.get("includeData") or [])
            data: dict[str, Any] = {"accountId": env.account_id, "userId": self.user_id, "envelopeId": env.envelope_id}
            if event.startswith("recipient-"):
                data["recipientId"] = env.signers[0].get("recipientId")
            data["envelopeSummary"] = env.as_json(include)
            message = {
                "event": event,
                "apiVersion": "v2.1",
                "uri": f"/restapi/v2.1/accounts/{env.account_id}/envelopes/{env.envelope_id}",
                "retryCount": retry_count,
                "configurationId": 10_000_001,
                "generatedDateTime": ds_time(self._now()),
                "data": data,
            }
        return json.dumps(message, indent=2).encode("utf-8")

    @staticmethod
    def signature_headers(body: bytes, secret: str | Sequence[str]) -> dict[str, str]:
        """X-DocuSign-Signature-1..N, one per HMAC key, as Connect sends them."""
        keys = [secret] if isinstance(secret, str) else list(secret)
        headers = {"Content-Type": "application/json"}
        for n, key in enumerate(keys, start=1):
            headers[f"X-DocuSign-Signature-{n}"] = compute_signature(body, key)
        return headers

    async def deliver_connect(
        self,
        envelope_id: str,
        url: str,
        secret: str | Sequence[str],
        *,
        copies: int = 1,
        tamper: bool = False,
        event: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> list[httpx.Response]:
        """POST the envelope's Connect message to `url`, signed with `secret` (one header
        per key), `copies` times (each a retry: retryCount 0, 1, …). `tamper`: the body is
        changed after signing. `client`: e.g. an httpx client on the API's ASGI app."""
        responses = []
        own = client is None
        http = client or httpx.AsyncClient(timeout=10)
        try:
            for n in range(copies):
                body = self.connect_message(envelope_id, event=event, retry_count=n)
                headers = self.signature_headers(body, secret)
                if tamper:
                    body = body.replace(b'"status": "', b'"status": "x', 1) + b" "
                responses.append(await http.post(url, content=body, headers=headers))
        finally:
            if own:
                await http.aclose()
        return responses

    # -- the app --------------------------------------------------------------------------------

    def app(self) -> Starlette:
        rest = "/restapi/v2.1/accounts/{account_id}/envelopes"
        return Starlette(
            routes=[
                Route("/oauth/token", self._token, methods=["POST"]),
                Route("/oauth/userinfo", self._userinfo, methods=["GET"]),
                Route(rest, self._envelopes, methods=["GET", "POST"]),
                Route(rest + "/{envelope_id}", self._envelope, methods=["GET", "PUT"]),
                Route(rest + "/{envelope_id}/documents/{document_id}", self._document, methods=["GET"]),
            ]
        )

    async def _token(self, request: Request) -> Response:
        body = await request.body()
        try:
            with self._lock:
                claims = self._check_assertion(request, body)
                token = secrets.token_urlsafe(48)
                self.tokens[token] = _Token(
                    claims["sub"], self.clock() + self.token_lifetime, frozenset(claims["scope"].split())
                )
                self.token_requests += 1
        except _Refusal as r:
            with self._lock:
                self.token_refusals.append(r.body)
            return JSONResponse(r.body, status_code=r.status)
        return JSONResponse(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime, "scope": claims["scope"]}
        )

    def _check_assertion(self, request: Request, body: bytes) -> dict[str, Any]:
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise _oauth_refusal("invalid_request", "content type must be application/x-www-form-urlencoded")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER:
            raise _oauth_refusal("unsupported_grant_type")
        assertion = form.get("assertion")
        if not assertion:
            raise _oauth_refusal("invalid_request", "assertion is missing")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _oauth_refusal("invalid_request", "the assertion is not a JWT") from None
        if header.get("alg") != "RS256":
            raise _oauth_refusal("invalid_grant", "no_valid_keys_or_signatures")
        if unverified.get("iss") != self.integration_key or unverified.get("aud") != self.oauth_host:
            raise _oauth_refusal("invalid_grant", "issuer_not_found")
        try:
            claims = jwt.decode(
                assertion,
                self.public_key_pem,
                algorithms=["RS256"],
                audience=self.oauth_host,
                issuer=self.integration_key,
                options={"verify_exp": False, "verify_iat": False, "require": ["iss", "sub", "aud", "iat", "exp"]},
            )
        except jwt.InvalidSignatureError:
            raise _oauth_refusal("invalid_grant", "no_valid_keys_or_signatures") from None
        except jwt.PyJWTError as e:
            raise _oauth_refusal("invalid_grant", f"invalid assertion: {e}") from None
        now = self.clock()
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise _oauth_refusal("invalid_grant", "invalid iat or exp")
        if iat > now + 60:
            raise _oauth_refusal("invalid_grant", "iat is in the future")
        if exp <= now:
            raise _oauth_refusal("invalid_grant", "expired assertion")
        if exp - iat > 3600:
            raise _oauth_refusal("invalid_grant", "the assertion may live at most one hour (exp - iat)")
        if claims["sub"] != self.user_id:
            raise _oauth_refusal("invalid_grant", "user_not_found")
        scopes = set(str(claims.get("scope", "")).split())
        if not {"signature", "impersonation"} <= scopes:
            raise _oauth_refusal("invalid_scope", "scope must include signature and impersonation")
        if not self.consent_granted:
            raise _oauth_refusal("consent_required")
        return claims

    def _bearer(self, request: Request) -> _Token | None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        with self._lock:
            found = self.tokens.get(token.strip())
        if found is None or found.expires_at <= self.clock():
            return None
        return found

    async def _userinfo(self, request: Request) -> Response:
        token = self._bearer(request)
        if token is None:
            return JSONResponse({"error": "invalid_request", "error_description": "invalid token"}, status_code=401)
        with self._lock:
            self.userinfo_requests += 1
            base = self.advertised_base_uri or self.base_uri
        accounts = [
            {"account_id": self.account_id, "is_default": True, "account_name": "Needflow Bank", "base_uri": base},
            {
                "account_id": self.second_account_id,
                "is_default": False,
                "account_name": "Needflow Bank (wealth)",
                "base_uri": base,
            },
        ]
        return JSONResponse(
            {
                "sub": self.user_id,
                "name": "Needflow Integration",
                "given_name": "Needflow",
                "family_name": "Integration",
                "email": "integration@bank.example",
                "created": "2024-01-01T00:00:00.0000000Z",
                "accounts": accounts,
            }
        )

    # -- REST ------------------------------------------------------------------------------------

    def _rate_headers(self, remaining: int, reset: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": "3000",
            "X-RateLimit-Remaining": str(max(remaining, 0)),
            "X-RateLimit-Reset": str(math.ceil(reset)),
            "X-DocuSign-TraceToken": str(uuid.uuid4()),
        }

    def _guard(self, request: Request, account_id: str) -> tuple[Response | None, dict[str, str]]:
        """Log, rate limits, injected failures, the bearer token and the account."""
        now = self.clock()
        next_hour = (math.floor(now / 3600) + 1) * 3600
        with self._lock:
            self.requests.append((request.method, request.url.path, parse_qs(request.url.query)))
            faults = self._faults
            if faults.throttled > 0:
                faults.throttled -= 1
                headers = self._rate_headers(0, now + faults.throttle_reset_in)
                body = {
                    "errorCode": faults.throttle_code,
                    "message": "The maximum number of hourly API invocations has been exceeded. The hourly limit is 3000.",
                }
                return JSONResponse(body, status_code=faults.throttle_status, headers=headers), headers
            if faults.failures:
                status, code = faults.failures.pop(0)
                return JSONResponse({"errorCode": code, "message": "injected failure"}, status_code=status), {}
            self._calls_this_hour += 1
            headers = self._rate_headers(3000 - self._calls_this_hour, next_hour)
            if faults.exhaust_reset_in is not None:
                headers = self._rate_headers(0, now + faults.exhaust_reset_in)
                faults.exhaust_reset_in = None
        token = self._bearer(request)
        if token is None:
            body = {
                "errorCode": "AUTHORIZATION_INVALID_TOKEN",
                "message": "The access token provided is expired, revoked or malformed.",
            }
            return JSONResponse(body, status_code=401, headers=headers), headers
        if account_id not in (self.account_id, self.second_account_id):
            body = {"errorCode": "USER_LACKS_MEMBERSHIP", "message": "The UserID does not have a valid membership."}
            return JSONResponse(body, status_code=400, headers=headers), headers
        return None, headers

    async def _envelopes(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        refused, headers = self._guard(request, account_id)
        if refused is not None:
            return refused
        try:
            if request.method == "POST":
                return JSONResponse(self._create(account_id, await request.body()), status_code=201, headers=headers)
            return JSONResponse(self._search(account_id, request), headers=headers)
        except _Refusal as r:
            return JSONResponse(r.body, status_code=r.status, headers=headers)

    async def _envelope(self, request: Request) -> Response:
        account_id, envelope_id = request.path_params["account_id"], request.path_params["envelope_id"]
        refused, headers = self._guard(request, account_id)
        if refused is not None:
            return refused
        try:
            env = self._find(account_id, envelope_id)
            if request.method == "GET":
                include = set((request.query_params.get("include") or "").split(","))
                with self._lock:
                    return JSONResponse(env.as_json(include), headers=headers)
            return JSONResponse(self._update(env, await request.body()), headers=headers)
        except _Refusal as r:
            return JSONResponse(r.body, status_code=r.status, headers=headers)

    async def _document(self, request: Request) -> Response:
        account_id, envelope_id = request.path_params["account_id"], request.path_params["envelope_id"]
        refused, headers = self._guard(request, account_id)
        if refused is not None:
            return refused
        try:
            env = self._find(account_id, envelope_id)
            document_id = request.path_params["document_id"]
            with self._lock:
                if document_id == "combined":
                    content = _combined_pdf(env)
                    if request.query_params.get("certificate", "false").lower() == "true":
                        content += _certificate_pdf(env)
                elif document_id == "certificate":
                    content = _certificate_pdf(env)
                else:
                    doc = next((d for d in env.documents if d["documentId"] == document_id), None)
                    if doc is None:
                        raise _error("DOCUMENT_DOES_NOT_EXIST", "The document specified was not found.")
                    content = _pdf([f"document {document_id} of envelope {env.envelope_id}"], doc["content"])
        except _Refusal as r:
            return JSONResponse(r.body, status_code=r.status, headers=headers)
        return Response(content, media_type="application/pdf", headers=headers)

    def _find(self, account_id: str, envelope_id: str) -> FakeEnvelope:
        with self._lock:
            env = self.envelopes.get(envelope_id)
        if env is None or env.account_id != account_id:
            raise _error(
                "ENVELOPE_DOES_NOT_EXIST", "The envelope specified either does not exist or you have no rights to it."
            )
        return env

    def _create(self, account_id: str, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            raise _error("INVALID_REQUEST_BODY", "The request body is missing or improperly formatted.") from None
        if not isinstance(body, dict):
            raise _error("INVALID_REQUEST_BODY", "The request body is missing or improperly formatted.")
        status = body.get("status")
        if status not in ("sent", "created"):
            raise _error("INVALID_ENVELOPE_STATUS", f"Envelope status {status!r} cannot be set on creation.")
        subject = body.get("emailSubject")
        if status == "sent" and not subject:
            raise _error(
                "ENVELOPE_IS_INCOMPLETE",
                "The Envelope is not Complete. A Complete Envelope Requires "
                "Documents, Recipients, Tabs, and a Subject Line.",
            )
        if subject and len(subject) > 100:
            raise _error("EMAIL_SUBJECT_TOO_LONG", "The email subject may be at most 100 characters.")
        documents = self._documents(body.get("documents"))
        signers = self._signers(body.get("recipients"), documents)
        fields = self._custom_fields(body.get("customFields"))
        notification = self._event_notification(body.get("eventNotification"))
        now = self._now()
        env = FakeEnvelope(
            envelope_id=str(uuid.uuid4()),
            account_id=account_id,
            definition=body,
            status=status,
            created=now,
            status_changed=now,
            email_subject=subject or "",
            documents=documents,
            signers=signers,
            text_custom_fields=fields,
            event_notification=notification,
            sent=now if status == "sent" else None,
        )
        with self._lock:
            self.envelopes[env.envelope_id] = env
        return {
            "envelopeId": env.envelope_id,
            "uri": f"/envelopes/{env.envelope_id}",
            "statusDateTime": ds_time(now),
            "status": env.status,
        }

    @staticmethod
    def _documents(documents: Any) -> list[dict[str, Any]]:
        if not isinstance(documents, list) or not documents:
            raise _error(
                "ENVELOPE_IS_INCOMPLETE",
                "The Envelope is not Complete. A Complete Envelope Requires "
                "Documents, Recipients, Tabs, and a Subject Line.",
            )
        out, seen = [], set()
        for doc in documents:
            doc_id = str(doc.get("documentId") or "")
            if not doc_id.isdigit() or int(doc_id) < 1 or doc_id in seen:
                raise _error("INVALID_DOCUMENT_ID", f"Invalid document id {doc_id!r}.")
            seen.add(doc_id)
            if not doc.get("name"):
                raise _error("INVALID_REQUEST_BODY", f"Document {doc_id} has no name.")
            extension = str(doc.get("fileExtension") or "").lower()
            if extension not in CONVERTIBLE:
                raise _error(
                    "FORMAT_CONVERSION_ERROR", f"The data could not be converted (fileExtension {extension!r})."
                )
            try:
                content = base64.b64decode(doc.get("documentBase64") or "", validate=True)
            except (binascii.Error, ValueError):
                raise _error("INVALID_REQUEST_BODY", f"Document {doc_id}: documentBase64 is not base64.") from None
            if not content:
                raise _error("INVALID_REQUEST_BODY", f"Document {doc_id} is empty.")
            out.append({"documentId": doc_id, "name": doc["name"], "fileExtension": extension, "content": content})
        return out

    @staticmethod
    def _signers(recipients: Any, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        signers = (recipients or {}).get("signers") if isinstance(recipients, dict) else None
        if not isinstance(signers, list) or not signers:
            raise _error(
                "ENVELOPE_IS_INCOMPLETE",
                "The Envelope is not Complete. A Complete Envelope Requires "
                "Documents, Recipients, Tabs, and a Subject Line.",
            )
        texts = [_text_of(d["content"], d["fileExtension"]) for d in documents]
        out, seen = [], set()
        for signer in signers:
            email, name, rid = signer.get("email"), signer.get("name"), str(signer.get("recipientId") or "")
            if not isinstance(email, str) or not _EMAIL.match(email) or len(email) > 100:
                raise _error(
                    "INVALID_EMAIL_ADDRESS_FOR_RECIPIENT",
                    f"The email address for the recipient is invalid. The recipient Id follows. {rid}",
                )
            if not isinstance(name, str) or not name.strip() or len(name) > 100:
                raise _error("INVALID_USERNAME_FOR_RECIPIENT", "The user name for the recipient is invalid.")
            if not rid or rid in seen:
                raise _error("INVALID_RECIPIENT_ID", f"Recipient id {rid!r} is missing or repeated.")
            seen.add(rid)
            for tab in ((signer.get("tabs") or {}).get("signHereTabs")) or []:
                anchor = tab.get("anchorString")
                if anchor:
                    ignore = str(tab.get("anchorIgnoreIfNotPresent", "false")).lower() == "true"
                    if not ignore and not any(anchor in text for text in texts):
                        raise _error(
                            "ANCHOR_TAB_STRING_NOT_FOUND",
                            f"The specified Anchor Tab string was not found in the document. Anchor Tab String [{anchor}] not found.",
                        )
                else:
                    position = [tab.get(k) for k in ("documentId", "pageNumber", "xPosition", "yPosition")]
                    if not all(str(v or "").isdigit() for v in position):
                        raise _error(
                            "INVALID_TAB_POSITION",
                            "A tab needs an anchor or documentId, pageNumber, xPosition and yPosition.",
                        )
                    if str(tab["documentId"]) not in {d["documentId"] for d in documents}:
                        raise _error("INVALID_DOCUMENT_ID", "The tab names a document the envelope does not have.")
            out.append(
                {
                    "recipientId": rid,
                    "recipientIdGuid": str(uuid.uuid4()),
                    "email": email,
                    "name": name,
                    "routingOrder": str(signer.get("routingOrder") or "1"),
                    "status": "sent",
                    "tabs": signer.get("tabs"),
                }
            )
        return out

    @staticmethod
    def _custom_fields(custom: Any) -> list[dict[str, Any]]:
        if custom is None:
            return []
        fields = custom.get("textCustomFields") if isinstance(custom, dict) else None
        out = []
        for n, f in enumerate(fields or [], start=1):
            name, value = f.get("name"), f.get("value")
            if not isinstance(name, str) or not name:
                raise _error("INVALID_REQUEST_BODY", "A custom field has no name.")
            if value is not None and (not isinstance(value, str) or len(value) > 100):
                raise _error(
                    "CUSTOM_FIELD_VALUE_TOO_LONG", f"Custom field {name!r}: the value may be at most 100 characters."
                )
            if not _true_false(f.get("show")) or not _true_false(f.get("required")):
                raise _error("INVALID_REQUEST_BODY", f"Custom field {name!r}: show and required are 'true' or 'false'.")
            out.append(
                {
                    "fieldId": str(10_000_000 + n),
                    "name": name,
                    "show": f.get("show", "true"),
                    "required": f.get("required", "false"),
                    "value": value or "",
                }
            )
        return out

    @staticmethod
    def _event_notification(notification: Any) -> dict[str, Any] | None:
        if notification is None:
            return None
        if not isinstance(notification, dict):
            raise _error("INVALID_REQUEST_BODY", "eventNotification must be an object.")
        url = notification.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise _error("INVALID_EVENT_NOTIFICATION_URL", f"The eventNotification url {url!r} is not a valid URL.")
        for key in ("includeHMAC", "requireAcknowledgment", "loggingEnabled", "includeEnvelopeVoidReason"):
            if not _true_false(notification.get(key)):
                raise _error("INVALID_REQUEST_BODY", f"eventNotification.{key} must be 'true' or 'false'.")
        if notification.get("deliveryMode") == "SIM":
            data = notification.get("eventData") or {}
            if data.get("format") != "json" or data.get("version") != "restv2.1":
                raise _error("INVALID_REQUEST_BODY", "JSON SIM needs eventData format 'json' and version 'restv2.1'.")
            events = notification.get("events")
            if not isinstance(events, list) or not events or not set(events) <= CONNECT_EVENTS:
                raise _error("INVALID_REQUEST_BODY", f"eventNotification.events: unknown or missing events {events!r}.")
        return notification

    def _search(self, account_id: str, request: Request) -> dict[str, Any]:
        q = request.query_params
        if not (q.get("from_date") or q.get("envelope_ids") or q.get("transaction_ids") or q.get("folder_ids")):
            raise _error(
                "INVALID_REQUEST_PARAMETER",
                "The request contained at least one invalid parameter. Query parameter 'from_date' must be set to a "
                "valid DateTime, or 'envelope_ids' or 'transaction_ids' must be specified.",
            )
        since = None
        if q.get("from_date"):
            try:
                since = dt.datetime.fromisoformat(q["from_date"].replace("Z", "+00:00"))
            except ValueError:
                raise _error(
                    "INVALID_REQUEST_PARAMETER", "Query parameter 'from_date' is not a valid DateTime."
                ) from None
            if since.tzinfo is None:
                since = since.replace(tzinfo=dt.UTC)
        wanted_ids = set(filter(None, (q.get("envelope_ids") or "").split(",")))
        statuses = {s.strip().lower() for s in (q.get("status") or "").split(",") if s.strip()}
        include = set((q.get("include") or "").split(","))
        field_name = field_value = None
        if q.get("custom_field"):
            field_name, sep, field_value = q["custom_field"].partition("=")
            if not sep:
                raise _error("INVALID_REQUEST_PARAMETER", "custom_field is NAME=VALUE.")
        with self._lock:
            found = []
            for env in sorted(self.envelopes.values(), key=lambda e: e.created):
                if env.account_id != account_id:
                    continue
                if since is not None and env.status_changed < since:
                    continue
                if wanted_ids and env.envelope_id not in wanted_ids:
                    continue
                if statuses and env.status not in statuses and "any" not in statuses:
                    continue
                if field_name is not None:
                    value = env.field(field_name)
                    if value is None or not fnmatchcase(value, field_value.replace("%", "*")):
                        continue
                found.append(env.as_json(include))
        count = int(q.get("count") or 100)
        start = int(q.get("start_position") or 0)
        page = found[start : start + count]
        out: dict[str, Any] = {
            "resultSetSize": str(len(page)),
            "totalSetSize": str(len(found)),
            "startPosition": str(start),
            "endPosition": str(max(start + len(page) - 1, 0)),
        }
        if page:
            out["envelopes"] = page
        return out

    def _update(self, env: FakeEnvelope, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise _error("INVALID_REQUEST_BODY", "The request body is missing or improperly formatted.") from None
        with self._lock:
            if body.get("status") == "voided":
                if env.status not in ("sent", "delivered", "created"):
                    raise _error(
                        "ENVELOPE_CANNOT_VOID_INVALID_STATE",
                        "Only envelopes in the 'Sent' or 'Delivered' states may be voided.",
                    )
                reason = body.get("voidedReason")
                if not isinstance(reason, str) or not reason.strip():
                    raise _error("INVALID_REQUEST_PARAMETER", "A voidedReason is required to void an envelope.")
                if len(reason) > 200:
                    raise _error("INVALID_REQUEST_PARAMETER", "voidedReason may be at most 200 characters.")
                now = self._now()
                env.status, env.voided, env.voided_reason, env.status_changed = "voided", now, reason, now
        return {"envelopeId": env.envelope_id}


def _pdf(lines: list[str], payload: bytes = b"") -> bytes:
    """Deterministic PDF-ish bytes: a PDF header, the lines, the payload, an EOF."""
    text = "".join(f"% {line}\n" for line in lines).encode("utf-8")
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + text + payload + b"\n%%EOF\n"


def _combined_pdf(env: FakeEnvelope) -> bytes:
    lines = [f"combined documents of envelope {env.envelope_id}", f"status {env.status}"]
    for s in env.signers:
        if s.get("signedDateTime"):
            lines.append(f"signed by {s['name']} <{s['email']}> at {ds_time(s['signedDateTime'])}")
    payload = b"".join(d["content"] for d in env.documents)
    return _pdf(lines, payload)


def _certificate_pdf(env: FakeEnvelope) -> bytes:
    lines = [
        f"Certificate Of Completion, envelope {env.envelope_id}",
        f"subject {env.email_subject}",
        f"status {env.status}",
        f"created {ds_time(env.created)}",
    ]
    for s in env.signers:
        lines.append(f"signer {s['name']} <{s['email']}> status {s['status']}")
        for key in ("deliveredDateTime", "signedDateTime", "declinedDateTime"):
            if isinstance(s.get(key), dt.datetime):
                lines.append(f"  {key} {ds_time(s[key])}")
    for d in env.documents:
        lines.append(f"document {d['documentId']} {d['name']} sha256 {hashlib.sha256(d['content']).hexdigest()}")
    return _pdf(lines)


def _certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signs for 127.0.0.1 and localhost (EC P-256)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "needflow DocuSign fake CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file


@contextlib.contextmanager
def running_fake(workdir: Path, **options: Any) -> Iterator[DocuSignFake]:
    """`DocuSignFake(**options)` started in `workdir`, stopped afterwards."""
    fake = DocuSignFake(**options).start(workdir)
    try:
        yield fake
    finally:
        fake.stop()
