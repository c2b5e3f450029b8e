"""DocuSign eSignature behind `ESignatureProvider`, through the real `docusign-esign` SDK.

Authentication: the JWT grant (`ApiClient.request_jwt_user_token`) for DOCUSIGN_USER_ID
with the app's integration key and RSA key, scopes `signature impersonation`; then user
info (`get_user_info`) once, for the account (DOCUSIGN_ACCOUNT_ID, else the user's
default) and its base URI, unless DOCUSIGN_BASE_URL overrides it. The access token is
reused until shortly before it expires; one lock serialises the refresh, so concurrent
calls share one token request.

What this module sets explicitly, because the SDK's defaults disagree (docusign-esign
6.1.0, client/api_client.py and client/configuration.py):

- REST host: `Configuration().host` defaults to PRODUCTION (https://www.docusign.net/restapi)
  while the OAuth host defaults to the SANDBOX (`set_oauth_host_name()` with no argument
  picks account-d.docusign.com whenever `base_path` is unset, and setting `host` does not
  change that). `request_jwt_user_token` takes its OAuth host as an argument, but
  `get_user_info` uses the client's own `oauth_host_name`: unset, a production token is
  sent to the sandbox. So: `set_oauth_host_name(DOCUSIGN_OAUTH_HOST)`, the same host to
  `request_jwt_user_token`, and `host` = DOCUSIGN_BASE_URL or the account's base URI +
  `/restapi`, set before any REST call.
- TLS: `Configuration()` is a process-wide singleton (a `@singleton` decorator), and each
  ApiClient builds its urllib3 pool from it. This provider gives its own ApiClient a REST
  client built from a private copy: `verify_ssl=True`, `ssl_ca_cert=DOCUSIGN_CA_BUNDLE`
  (else certifi's roots), and never touches the singleton, so no other client's trust
  changes, and verification is never off.
- Timeouts: the SDK passes `timeout=None` (wait forever) unless each call names one; the
  private REST client gives every request, the OAuth ones included, `request_timeout`.

The SDK is synchronous: every call runs in a thread (`asyncio.to_thread`); waiting (rate
limits) happens in the event loop, never holding a thread.

Errors: `DocuSignError`, with `retryable` (transport failures, 5xx, a rate limit that
outlasts `max_rate_limit_wait` — `retry_after` says how long) or not (every other 4xx,
a refused JWT grant, TLS verification failure: configuration or data that a retry does
not fix). A 401 on a REST call drops the token and retries once with a new one.

Envelopes: one HTML document (DocuSign converts it), the customer as remote signer
(DocuSign e-mails her; no recipient view, no signing URL), a sign-here tab anchored on
`sign_here_anchor` (default: text every needflow template has, esign/templates/
_document.html), text custom fields `opportunity_id` and `request_no`, and an
envelope-level Connect `eventNotification` (JSON SIM, HMAC-signed, acknowledged) to
`NEEDFLOW_PUBLIC_BASE_URL` + `/v1/webhooks/docusign` (esign/connect.py verifies it).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3
from docusign_esign import (
    ApiClient,
    ApiException,
    ConnectEventData,
    CustomFields,
    Document,
    EnvelopeDefinition,
    EnvelopesApi,
    EventNotification,
    Recipients,
    Signer,
    SignHere,
    Tabs,
    TextCustomField,
)
from docusign_esign import Envelope as DocuSignEnvelope
from docusign_esign.client.api_response import RESTClientObject
from docusign_esign.client.configuration import Configuration
from pydantic import TypeAdapter, ValidationError

from esign.connect import OPPORTUNITY_FIELD, REQUEST_FIELD, normalise_status
from esign.provider import Envelope, EnvelopeState, EnvelopeStatus, SignedDocuments

if TYPE_CHECKING:
    from config import DocuSignSettings, Settings

log = logging.getLogger("needflow.esign.docusign")

T = TypeVar("T")

#: The JWT grant's scopes: `impersonation` lets the app act as DOCUSIGN_USER_ID.
SCOPES = ("signature", "impersonation")
#: Lifetime of the JWT assertion itself (DocuSign accepts at most an hour).
ASSERTION_LIFETIME = 3600
WEBHOOK_PATH = "/v1/webhooks/docusign"
#: Envelope-level Connect events: the terminal ones, the customer opening it, and her
#: e-mail bouncing (DocuSign's "autoresponded"), which the owner wants to know.
CONNECT_EVENTS = (
    "envelope-sent",
    "envelope-delivered",
    "envelope-completed",
    "envelope-declined",
    "envelope-voided",
    "recipient-autoresponded",
)
#: Text in every needflow document (esign/templates/_document.html, its footer).
DEFAULT_SIGN_HERE_ANCHOR = "By signing you confirm"
#: DocuSign's rate-limit error codes (answered with 429, in older accounts 400).
RATE_LIMIT_CODES = frozenset({"HOURLY_APIINVOCATION_LIMIT_EXCEEDED", "BURST_APIINVOCATION_LIMIT_EXCEEDED"})
#: DocuSign's field limits.
EMAIL_SUBJECT_MAX = 100
VOIDED_REASON_MAX = 200

_OAUTH_HINTS = {
    "no_valid_keys_or_signatures": "DOCUSIGN_PRIVATE_KEY_FILE is not the RSA key pair of DOCUSIGN_INTEGRATION_KEY",
    "issuer_not_found": "DOCUSIGN_INTEGRATION_KEY is unknown at DOCUSIGN_OAUTH_HOST (sandbox key, production host?)",
    "user_not_found": "DOCUSIGN_USER_ID is not a user of this DocuSign environment",
    "consent_required": "DOCUSIGN_USER_ID has not granted the app consent to `signature impersonation`",
    "invalid_scope": "the app may not ask for `signature impersonation`",
}

_DATETIME = TypeAdapter(datetime)


class DocuSignError(Exception):
    """A DocuSign call that failed. `retryable`: the same call may succeed later (after
    `retry_after` seconds when DocuSign said so); otherwise fix the data or configuration."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        error_code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.error_code = error_code
        self.retry_after = retry_after


class _RateLimited(Exception):
    def __init__(self, reset_at: float, status: int, error_code: str | None) -> None:
        super().__init__(error_code or str(status))
        self.reset_at = reset_at
        self.status = status
        self.error_code = error_code


class _Unauthorized(Exception):
    def __init__(self, token: str) -> None:
        super().__init__("401")
        self.token = token


@dataclass(frozen=True)
class _Session:
    token: str
    expires_at: float
    account_id: str
    rest_base: str


class _RestClient(RESTClientObject):
    """The SDK's REST client with a default timeout on every request (the SDK's own
    default is none: a silent peer would hold a thread forever)."""

    def __init__(self, configuration: Any, timeout: tuple[float, float]) -> None:
        super().__init__(configuration=configuration)
        self._timeout = timeout

    def request(
        self,
        method: str,
        url: str,
        query_params: Any = None,
        headers: Any = None,
        body: Any = None,
        post_params: Any = None,
        _preload_content: bool = True,
        _request_timeout: Any = None,
    ) -> Any:
        return super().request(
            method,
            url,
            query_params=query_params,
            headers=headers,
            body=body,
            post_params=post_params,
            _preload_content=_preload_content,
            _request_timeout=_request_timeout or self._timeout,
        )


def _json(body: Any) -> dict[str, Any]:
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _header(headers: Any, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None:  # a plain dict: look case-insensitively
        lowered = name.lower()
        value = next((v for k, v in dict(headers).items() if str(k).lower() == lowered), None)
    return None if value is None else str(value)


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return _DATETIME.validate_python(value)
    except ValidationError:
        return None


def _text_fields(envelope: Any) -> dict[str, str]:
    custom = getattr(envelope, "custom_fields", None)
    fields = getattr(custom, "text_custom_fields", None) or []
    return {f.name: f.value or "" for f in fields if getattr(f, "name", None)}


def _signers(envelope: Any) -> list[Any]:
    recipients = getattr(envelope, "recipients", None)
    return list(getattr(recipients, "signers", None) or [])


class DocuSignProvider:
    """`ESignatureProvider` on DocuSign. One instance per process (worker, API): it holds
    the access token, the account and a connection pool, and is safe to share between
    tasks and threads."""

    name = "docusign"
    remote = True

    def __init__(
        self,
        settings: DocuSignSettings,
        *,
        webhook_url: str,
        sign_here_anchor: str | None = DEFAULT_SIGN_HERE_ANCHOR,
        request_timeout: tuple[float, float] = (10.0, 60.0),
        token_refresh_margin: float = 300.0,
        max_rate_limit_wait: float = 60.0,
        max_rate_limit_retries: int = 3,
        find_lookback: timedelta = timedelta(days=30),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.webhook_url = webhook_url
        self.sign_here_anchor = sign_here_anchor
        self._private_key = settings.private_key_file.read_bytes()
        self._timeout = request_timeout
        self._margin = token_refresh_margin
        self._max_wait = max_rate_limit_wait
        self._max_rate_retries = max_rate_limit_retries
        self._lookback = find_lookback
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._account: tuple[str, str] | None = None  # (account id, REST base), from user info
        self._blocked_until = 0.0  # epoch seconds: DocuSign said "0 calls left" until then
        self._api = self._make_api_client()
        self._envelopes = EnvelopesApi(self._api)

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> DocuSignProvider:
        """The provider `NEEDFLOW_ESIGN_PROVIDER=docusign` selects (worker.esign_provider)."""
        if settings.docusign is None:
            raise ValueError("NEEDFLOW_ESIGN_PROVIDER=docusign, but DOCUSIGN_* is not loaded")
        return cls(settings.docusign, webhook_url=settings.docusign_webhook_url, **options)

    # -- the SDK client ---------------------------------------------------------------

    def _make_api_client(self) -> ApiClient:
        api = ApiClient(oauth_host_name=self.settings.oauth_host)
        # Configuration() is the SDK's process-wide singleton: change a private copy only.
        config = copy.copy(Configuration())
        config.verify_ssl = True
        config.ssl_ca_cert = str(self.settings.ca_bundle) if self.settings.ca_bundle else None
        config.assert_hostname = None
        config.cert_file = None
        config.key_file = None
        api.rest_client = _RestClient(config, self._timeout)
        api.set_oauth_host_name(self.settings.oauth_host)
        # Never the SDK's default (production) host: unset until user info or DOCUSIGN_BASE_URL.
        api.host = self.settings.rest_base or "https://docusign-rest-base-not-resolved.invalid/restapi"
        return api

    def close(self) -> None:
        """Close the connection pool (the provider is unusable afterwards)."""
        self._api.rest_client.pool_manager.clear()

    # -- token and account (in a worker thread) ------------------------------------------

    def _current_session(self) -> _Session:
        with self._lock:
            session = self._session
            if session is not None and self._clock() < session.expires_at:
                return session
            token = self._request_token()
            access_token = token.access_token
            lifetime = float(token.expires_in or 3600)
            if self._account is None:
                self._account = self._resolve_account(access_token)
            account_id, rest_base = self._account
            self._api.set_default_header("Authorization", f"Bearer {access_token}")
            self._api.host = rest_base
            expires_at = self._clock() + lifetime - min(self._margin, lifetime / 2)
            self._session = _Session(access_token, expires_at, account_id, rest_base)
            log.info("DocuSign access token obtained for account %s (valid %.0f s)", account_id, lifetime)
            return self._session

    def _invalidate(self, token: str) -> None:
        with self._lock:
            if self._session is not None and self._session.token == token:
                self._session = None

    def _request_token(self) -> Any:
        s = self.settings
        try:
            token = self._api.request_jwt_user_token(
                client_id=s.integration_key,
                user_id=s.user_id,
                oauth_host_name=s.oauth_host,
                private_key_bytes=self._private_key,
                expires_in=ASSERTION_LIFETIME,
                scopes=SCOPES,
            )
        except ApiException as e:
            raise self._oauth_error("the JWT grant", e) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._transport_error(f"https://{s.oauth_host}/oauth/token", e) from None
        if not getattr(token, "access_token", None):
            raise DocuSignError("DocuSign's token answer carried no access token", retryable=True)
        return token

    def _resolve_account(self, access_token: str) -> tuple[str, str]:
        s = self.settings
        try:
            info = self._api.get_user_info(access_token)
        except ApiException as e:
            raise self._oauth_error("user info", e) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._transport_error(f"https://{s.oauth_host}/oauth/userinfo", e) from None
        accounts = list(info.accounts or [])
        if s.account_id:
            chosen = next((a for a in accounts if (a.account_id or "").lower() == s.account_id.lower()), None)
            if chosen is None:
                known = ", ".join(a.account_id for a in accounts) or "none"
                raise DocuSignError(
                    f"DOCUSIGN_ACCOUNT_ID {s.account_id} is not an account of DOCUSIGN_USER_ID {s.user_id} "
                    f"(its accounts: {known})",
                    retryable=False,
                )
        else:
            # The SDK types is_default as str: DocuSign's JSON true arrives as "True".
            chosen = next((a for a in accounts if str(a.is_default).lower() == "true"), None)
            if chosen is None:
                raise DocuSignError(
                    f"DOCUSIGN_USER_ID {s.user_id} has no default DocuSign account: set DOCUSIGN_ACCOUNT_ID",
                    retryable=False,
                )
        base_uri = (chosen.base_uri or "").rstrip("/")
        rest_base = s.rest_base or (f"{base_uri}/restapi" if base_uri else None)
        if not rest_base:
            raise DocuSignError(
                f"user info gives account {chosen.account_id} no base URI: set DOCUSIGN_BASE_URL", retryable=False
            )
        return chosen.account_id, rest_base

    # -- errors -------------------------------------------------------------------------

    def _oauth_error(self, what: str, e: ApiException) -> Exception:
        status = e.status or 0
        if status == 0:
            return self._tls_error(f"https://{self.settings.oauth_host}", str(e.reason))
        if status == 429 or status >= 500:
            return self._classify(what, e, token="")
        body = _json(e.body)
        error = body.get("error") or body.get("errorCode")
        description = body.get("error_description") or body.get("message")
        hint = _OAUTH_HINTS.get(str(description)) or _OAUTH_HINTS.get(str(error))
        detail = f"{error} ({description})" if description else str(error or e.reason)
        return DocuSignError(
            f"DocuSign refused {what} at {self.settings.oauth_host}: {status} {detail}" + (f": {hint}" if hint else ""),
            retryable=False,
            status=status,
            error_code=str(error) if error else None,
        )

    def _tls_error(self, where: str, reason: str) -> DocuSignError:
        bundle = self.settings.ca_bundle
        trust = f"DOCUSIGN_CA_BUNDLE {bundle}" if bundle else "the default CA roots (DOCUSIGN_CA_BUNDLE unset)"
        return DocuSignError(
            f"TLS verification of {where} failed against {trust}: {reason.strip().splitlines()[-1] if reason else ''}",
            retryable=False,
        )

    def _transport_error(self, where: str, e: BaseException) -> DocuSignError:
        reason = getattr(e, "reason", None)
        if isinstance(e, urllib3.exceptions.SSLError) or isinstance(reason, urllib3.exceptions.SSLError):
            return self._tls_error(where, str(reason or e))
        return DocuSignError(f"DocuSign unreachable ({where}): {type(e).__name__}: {e}", retryable=True)

    def _rate_reset(self, headers: Any) -> float:
        reset = _header(headers, "X-RateLimit-Reset")
        if reset and reset.strip().isdigit():
            return float(reset)
        retry_after = _header(headers, "Retry-After")
        if retry_after and retry_after.strip().isdigit():
            return self._clock() + float(retry_after)
        return self._clock() + 30.0  # DocuSign's burst window

    def _classify(self, what: str, e: ApiException, token: str) -> Exception:
        status = e.status or 0
        body = _json(e.body)
        code = body.get("errorCode") or body.get("error")
        message = body.get("message") or body.get("error_description") or e.reason
        if status == 0:
            return self._tls_error(self._api.host, str(e.reason))
        if status == 429 or code in RATE_LIMIT_CODES:
            return _RateLimited(self._rate_reset(e.headers), status, code)
        if status == 401 and token:
            return _Unauthorized(token)
        retryable = status >= 500 or status == 408
        return DocuSignError(
            f"DocuSign {what}: {status} {code or ''} {message or ''}".strip(),
            retryable=retryable,
            status=status,
            error_code=str(code) if code else None,
        )

    # -- one call: session, rate limits, errors -------------------------------------------

    def _invoke(self, what: str, op: Callable[[str], tuple[T, int, Any]]) -> T:
        session = self._current_session()
        try:
            data, _status, headers = op(session.account_id)
        except ApiException as e:
            raise self._classify(what, e, session.token) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._transport_error(self._api.host, e) from None
        if (_header(headers, "X-RateLimit-Remaining") or "").strip() == "0":
            reset = self._rate_reset(headers)
            with self._lock:
                self._blocked_until = max(self._blocked_until, reset)
            log.warning("DocuSign rate limit exhausted; next call waits until %s", reset)
        return data

    async def _wait_for_window(self, what: str) -> None:
        wait = self._blocked_until - self._clock()
        if wait <= 0:
            return
        if wait > self._max_wait:
            raise DocuSignError(
                f"DocuSign {what}: rate limit exhausted, resets in {wait:.0f} s", retryable=True, retry_after=wait
            )
        await self._sleep(wait)

    async def _call(self, what: str, op: Callable[[str], tuple[T, int, Any]]) -> T:
        limited = 0
        renewed = False
        while True:
            await self._wait_for_window(what)
            try:
                return await asyncio.to_thread(self._invoke, what, op)
            except _RateLimited as limit:
                limited += 1
                wait = max(0.0, limit.reset_at - self._clock())
                if limited > self._max_rate_retries or wait > self._max_wait:
                    raise DocuSignError(
                        f"DocuSign {what}: rate limited ({limit.status} {limit.error_code or ''}) "
                        f"{limited} time(s); resets in {wait:.0f} s",
                        retryable=True,
                        status=limit.status,
                        error_code=limit.error_code,
                        retry_after=wait,
                    ) from None
                log.warning("DocuSign %s rate limited: retrying in %.1f s", what, wait)
                await self._sleep(wait)
            except _Unauthorized as e:
                if renewed:
                    raise DocuSignError(
                        f"DocuSign {what}: 401 with a newly issued access token", retryable=False, status=401
                    ) from None
                self._invalidate(e.token)
                renewed = True

    # -- ESignatureProvider -------------------------------------------------------------

    def envelope_definition(
        self,
        *,
        opportunity_id: str,
        request_no: int,
        subject: str,
        document_html: str,
        signer_name: str,
        signer_email: str,
    ) -> EnvelopeDefinition:
        """The envelope `send` creates (pure: no call)."""
        if self.sign_here_anchor:
            sign_here = SignHere(
                anchor_string=self.sign_here_anchor,
                anchor_units="pixels",
                anchor_x_offset="0",
                anchor_y_offset="48",
                anchor_ignore_if_not_present="false",
                recipient_id="1",
            )
        else:
            sign_here = SignHere(document_id="1", page_number="1", x_position="72", y_position="680", recipient_id="1")
        signer = Signer(
            email=signer_email,
            name=signer_name,
            recipient_id="1",
            routing_order="1",
            tabs=Tabs(sign_here_tabs=[sign_here]),
        )
        document = Document(
            document_id="1",
            name=subject[:EMAIL_SUBJECT_MAX],
            file_extension="html",
            document_base64=base64.b64encode(document_html.encode("utf-8")).decode("ascii"),
        )
        return EnvelopeDefinition(
            email_subject=subject[:EMAIL_SUBJECT_MAX],
            documents=[document],
            recipients=Recipients(signers=[signer]),
            custom_fields=CustomFields(
                text_custom_fields=[
                    TextCustomField(name=OPPORTUNITY_FIELD, value=opportunity_id, show="false", required="false"),
                    TextCustomField(name=REQUEST_FIELD, value=str(request_no), show="false", required="false"),
                ]
            ),
            event_notification=EventNotification(
                url=self.webhook_url,
                delivery_mode="SIM",
                events=list(CONNECT_EVENTS),
                event_data=ConnectEventData(
                    version="restv2.1", format="json", include_data=["custom_fields", "recipients"]
                ),
                include_hmac="true",
                require_acknowledgment="true",
                logging_enabled="true",
                include_envelope_void_reason="true",
            ),
            status="sent",
        )

    async def send(
        self,
        *,
        opportunity_id: str,
        request_no: int,
        subject: str,
        document_html: str,
        signer_name: str,
        signer_email: str | None,
    ) -> Envelope:
        if not signer_email:
            raise DocuSignError(
                f"opportunity {opportunity_id}: the customer has no e-mail address, and DocuSign e-mails the "
                "signer (record the request undeliverable instead of sending)",
                retryable=False,
            )
        definition = self.envelope_definition(
            opportunity_id=opportunity_id,
            request_no=request_no,
            subject=subject,
            document_html=document_html,
            signer_name=signer_name,
            signer_email=signer_email,
        )
        summary = await self._call(
            "create envelope",
            lambda account: self._envelopes.create_envelope_with_http_info(account, envelope_definition=definition),
        )
        log.info("DocuSign envelope %s sent for %s #%s", summary.envelope_id, opportunity_id, request_no)
        return Envelope(provider=self.name, envelope_id=summary.envelope_id)

    async def envelopes(self, opportunity_id: str, request_no: int) -> list[Envelope]:
        since = datetime.fromtimestamp(self._clock(), UTC) - self._lookback
        result = await self._call(
            "search envelopes",
            lambda account: self._envelopes.list_status_changes_with_http_info(
                account,
                custom_field=f"{OPPORTUNITY_FIELD}={opportunity_id}",
                from_date=since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                include="custom_fields",
                count="100",
            ),
        )
        matches = []
        for envelope in getattr(result, "envelopes", None) or []:
            fields = _text_fields(envelope)
            if fields.get(OPPORTUNITY_FIELD) == opportunity_id and fields.get(REQUEST_FIELD) == str(request_no):
                matches.append(envelope)
        matches.sort(key=lambda e: _when(e.created_date_time) or datetime.min.replace(tzinfo=UTC), reverse=True)
        return [Envelope(provider=self.name, envelope_id=e.envelope_id) for e in matches]

    async def status(self, envelope_id: str) -> EnvelopeState:
        envelope = await self._call(
            "read envelope",
            lambda account: self._envelopes.get_envelope_with_http_info(
                account, envelope_id, include="recipients,custom_fields"
            ),
        )
        raw = envelope.status or "sent"
        status = normalise_status(raw, envelope.voided_reason)
        signers = _signers(envelope)
        reason = None
        if status is EnvelopeStatus.DECLINED:
            reason = next((s.declined_reason for s in signers if s.declined_reason), None)
        elif status in (EnvelopeStatus.VOIDED, EnvelopeStatus.EXPIRED):
            reason = envelope.voided_reason
        fields = _text_fields(envelope)
        request_no = fields.get(REQUEST_FIELD, "")
        return EnvelopeState(
            envelope_id=envelope.envelope_id or envelope_id,
            status=status,
            raw_status=raw,
            reason=reason,
            status_changed_at=_when(envelope.status_changed_date_time),
            completed_at=_when(envelope.completed_date_time),
            signer_name=signers[0].name if signers else None,
            opportunity_id=fields.get(OPPORTUNITY_FIELD) or None,
            request_no=int(request_no) if request_no.isdigit() else None,
        )

    async def void(self, envelope_id: str, reason: str) -> EnvelopeState:
        state = await self.status(envelope_id)
        if state.terminal:
            return state
        update = DocuSignEnvelope(status="voided", voided_reason=reason[:VOIDED_REASON_MAX] or "Voided by needflow")
        try:
            await self._call(
                "void envelope",
                lambda account: self._envelopes.update_with_http_info(account, envelope_id, envelope=update),
            )
        except DocuSignError as e:
            if e.retryable:
                raise
            state = await self.status(envelope_id)  # the signer may have finished first
            if state.terminal:
                return state
            raise
        return await self.status(envelope_id)

    async def download(self, envelope_id: str) -> SignedDocuments:
        combined = await self._call(
            "download the combined document",
            lambda account: self._envelopes.get_document_with_http_info(
                account, "combined", envelope_id, certificate="false"
            ),
        )
        certificate = await self._call(
            "download the certificate of completion",
            lambda account: self._envelopes.get_document_with_http_info(account, "certificate", envelope_id),
        )
        return SignedDocuments(combined_pdf=bytes(combined), certificate_pdf=bytes(certificate))
