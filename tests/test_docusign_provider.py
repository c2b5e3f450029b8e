"""The DocuSign provider through the real docusign-esign SDK, against the DocuSign fake
over HTTPS (tests/fakes/docusign.py): authentication, TLS, envelopes, crash-safe look-up,
statuses, void, download, rate limits, and Connect messages delivered by the fake.

No Temporal, no database: these run alone, in a few seconds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from docusign_esign import ApiClient
from docusign_esign.client.configuration import Configuration
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from config import Settings
from esign.connect import parse_message, verify_signature
from esign.docusign import DocuSignError, DocuSignProvider
from esign.provider import EnvelopeStatus
from tests.fakes.docusign import DocuSignFake

WEBHOOK = "https://needflow.example/v1/webhooks/docusign"
DOCUMENT = """<article><h1>Mortgage closing documents</h1><p>Reference {opp}</p>
<footer><p>By signing you confirm you have read and understood this document.</p></footer></article>"""


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("docusign-keys")
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "good.pem").write_bytes(_pem(good))
    (d / "wrong.pem").write_bytes(_pem(wrong))
    public = good.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"good": d / "good.pem", "wrong": d / "wrong.pem", "public": public}


@pytest.fixture(scope="module")
def server(keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocuSignFake]:
    fake = DocuSignFake(integration_key=str(uuid.uuid4()), user_id=str(uuid.uuid4()), public_key_pem=keys["public"])
    with fake.start(tmp_path_factory.mktemp("docusign-fake")):
        yield fake


@pytest.fixture
def fake(server: DocuSignFake) -> DocuSignFake:
    server.reset()
    return server


class Sleeps:
    """The provider's sleep: records each wait, waits for nothing (the fake's rate limit
    counts refusals, not time)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_provider(fake: DocuSignFake, key_file: Path, sleeps: Sleeps | None = None, **options: Any) -> DocuSignProvider:
    settings_overrides = options.pop("settings", {})
    return DocuSignProvider(
        fake.settings(key_file, **settings_overrides),
        webhook_url=WEBHOOK,
        sleep=sleeps or Sleeps(),
        **options,
    )


@pytest.fixture
def provider(fake: DocuSignFake, keys: dict[str, Any], sleeps: Sleeps) -> Iterator[DocuSignProvider]:
    p = make_provider(fake, keys["good"], sleeps)
    yield p
    p.close()


async def send(provider: DocuSignProvider, opp: str | None = None, request_no: int = 1, **overrides: Any) -> str:
    opp = opp or f"opp_{uuid.uuid4().hex}"
    values: dict[str, Any] = {
        "opportunity_id": opp,
        "request_no": request_no,
        "subject": "Your mortgage closing documents",
        "document_html": DOCUMENT.format(opp=opp),
        "signer_name": "Rachel Green",
        "signer_email": "rachel@example.com",
    }
    values.update(overrides)
    envelope = await provider.send(**values)
    assert envelope.provider == "docusign" and envelope.signing_url is None
    return envelope.envelope_id


# -- authentication ------------------------------------------------------------------------


async def test_token_obtained_once_and_reused(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    envelope_id = await send(provider)
    await provider.status(envelope_id)
    await asyncio.gather(*(provider.status(envelope_id) for _ in range(5)))
    assert fake.token_requests == 1
    assert fake.userinfo_requests == 1


async def test_concurrent_first_calls_share_one_token(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    await asyncio.gather(*(provider.envelopes(f"opp_{n}", 1) for n in range(6)))
    assert fake.token_requests == 1


async def test_token_fetched_again_shortly_before_expiry(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    now = [1_000_000.0]
    fake.token_lifetime = 3600
    p = make_provider(fake, keys["good"], clock=lambda: now[0], token_refresh_margin=300)
    try:
        envelope_id = await send(p)
        now[0] += 3600 - 301  # not yet within the margin
        await p.status(envelope_id)
        assert fake.token_requests == 1
        now[0] += 2  # within 300 s of expiry: a new token before the call
        await p.status(envelope_id)
        assert fake.token_requests == 2
        assert fake.userinfo_requests == 1  # the account and its base URI are kept
    finally:
        fake.token_lifetime = 28800
        p.close()


async def test_revoked_token_is_replaced_once(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    envelope_id = await send(provider)
    fake.revoke_tokens()  # DocuSign answers 401 to the token the provider holds
    assert (await provider.status(envelope_id)).status is EnvelopeStatus.SENT
    assert fake.token_requests == 2


async def test_wrong_private_key_is_a_clear_non_retryable_error(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    p = make_provider(fake, keys["wrong"])
    with pytest.raises(DocuSignError) as e:
        await send(p)
    assert not e.value.retryable
    assert e.value.error_code == "invalid_grant"
    assert "no_valid_keys_or_signatures" in str(e.value) and "DOCUSIGN_PRIVATE_KEY_FILE" in str(e.value)
    assert fake.token_requests == 0 and fake.envelopes_created == 0


async def test_wrong_user_is_a_clear_non_retryable_error(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    p = make_provider(fake, keys["good"], settings={"user_id": str(uuid.uuid4())})
    with pytest.raises(DocuSignError) as e:
        await send(p)
    assert not e.value.retryable
    assert "user_not_found" in str(e.value) and "DOCUSIGN_USER_ID" in str(e.value)
    assert fake.envelopes_created == 0


async def test_missing_consent_says_so(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    fake.consent_granted = False
    with pytest.raises(DocuSignError) as e:
        await send(make_provider(fake, keys["good"]))
    assert not e.value.retryable and "consent" in str(e.value)


async def test_unknown_integration_key_is_a_clear_error(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    p = make_provider(fake, keys["good"], settings={"integration_key": str(uuid.uuid4())})
    with pytest.raises(DocuSignError) as e:
        await send(p)
    assert not e.value.retryable
    assert "issuer_not_found" in str(e.value) and "DOCUSIGN_INTEGRATION_KEY" in str(e.value)


async def test_the_assertion_audience_is_the_configured_oauth_host(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    # The same server under another name (its certificate covers localhost too): the
    # assertion's aud is then not the host DocuSign expects, and it says issuer_not_found,
    # as it does for a sandbox key sent to production.
    p = make_provider(fake, keys["good"], settings={"oauth_host": f"localhost:{fake.port}"})
    with pytest.raises(DocuSignError) as e:
        await send(p)
    assert "issuer_not_found" in str(e.value) and fake.token_refusals[-1]["error"] == "invalid_grant"


def test_sdk_defaults_disagree_so_the_provider_sets_both_hosts(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    # What the SDK does left alone (docusign-esign 6.1.0): REST on production, OAuth on
    # the sandbox, and setting the REST host does not move the OAuth host.
    bare = ApiClient()
    assert bare.host == "https://www.docusign.net/restapi"
    assert bare.oauth_host_name == "account-d.docusign.com"
    bare.host = "https://na4.docusign.net/restapi"
    bare.set_oauth_host_name()
    assert bare.oauth_host_name == "account-d.docusign.com"
    # The provider: both from configuration, the REST host never the SDK's default.
    assert provider._api.oauth_host_name == fake.oauth_host
    assert "docusign.net" not in provider._api.host


async def test_rest_host_comes_from_user_info(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    await provider.envelopes("opp_warm", 1)
    assert provider._api.host == f"{fake.base_uri}/restapi"


async def test_configured_account_is_used(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    p = make_provider(fake, keys["good"], settings={"account_id": fake.second_account_id})
    envelope_id = await send(p)
    assert fake.envelope(envelope_id).account_id == fake.second_account_id
    default = make_provider(fake, keys["good"])
    assert fake.envelope(await send(default)).account_id == fake.account_id


async def test_unknown_account_is_a_clear_error(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    p = make_provider(fake, keys["good"], settings={"account_id": str(uuid.uuid4())})
    with pytest.raises(DocuSignError) as e:
        await send(p)
    assert not e.value.retryable and "DOCUSIGN_ACCOUNT_ID" in str(e.value)


async def test_base_url_overrides_user_info(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    fake.advertised_base_uri = "https://127.0.0.1:9"  # nothing listens there
    p = make_provider(fake, keys["good"], settings={"base_url": fake.base_uri})
    envelope_id = await send(p)
    assert fake.envelope(envelope_id).status == "sent"


# -- TLS -----------------------------------------------------------------------------------


async def test_tls_is_verified_with_the_configured_bundle_only(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    untrusting = make_provider(fake, keys["good"], settings={"ca_bundle": None})
    with pytest.raises(DocuSignError) as e:
        await send(untrusting)
    assert not e.value.retryable
    assert "TLS verification" in str(e.value) and "DOCUSIGN_CA_BUNDLE unset" in str(e.value)
    assert fake.token_requests == 0  # refused before any request reached the server

    trusting = make_provider(fake, keys["good"])
    await send(trusting)
    assert fake.envelopes_created == 1
    # The bundle is this provider's client's alone: the SDK's process-wide Configuration
    # singleton is untouched, verification still on.
    assert Configuration().ssl_ca_cert is None and Configuration().verify_ssl is True
    assert untrusting._api.rest_client.pool_manager.connection_pool_kw["ca_certs"] != str(fake.ca_bundle)
    assert trusting._api.rest_client.pool_manager.connection_pool_kw["ca_certs"] == str(fake.ca_bundle)


# -- envelopes -----------------------------------------------------------------------------


async def test_send_creates_one_envelope_as_docusign_expects(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    opp = f"opp_{uuid.uuid4().hex}"
    envelope_id = await send(provider, opp, request_no=2)
    assert fake.envelopes_created == 1
    env = fake.envelope(envelope_id)
    assert env.status == "sent" and env.definition["status"] == "sent"
    assert env.email_subject == "Your mortgage closing documents"
    assert {f["name"]: f["value"] for f in env.text_custom_fields} == {"opportunity_id": opp, "request_no": "2"}
    [signer] = env.definition["recipients"]["signers"]
    assert (signer["email"], signer["name"], signer["recipientId"]) == ("rachel@example.com", "Rachel Green", "1")
    assert "clientUserId" not in signer  # a remote signer: DocuSign e-mails her, no embedded view
    assert signer["tabs"]["signHereTabs"][0]["anchorString"] == "By signing you confirm"
    [document] = env.definition["documents"]
    assert document["fileExtension"] == "html"
    assert base64.b64decode(document["documentBase64"]).decode() == DOCUMENT.format(opp=opp)
    notification = env.definition["eventNotification"]
    assert notification["url"] == WEBHOOK
    assert notification["includeHMAC"] == "true" and notification["requireAcknowledgment"] == "true"
    assert notification["deliveryMode"] == "SIM"
    assert notification["eventData"] == {
        "version": "restv2.1",
        "format": "json",
        "includeData": ["custom_fields", "recipients"],
    }
    assert {"envelope-completed", "envelope-declined", "envelope-voided"} <= set(notification["events"])
    method, path, _ = fake.requests[-1]
    assert (method, path) == ("POST", f"/restapi/v2.1/accounts/{fake.account_id}/envelopes")


async def test_docusign_refusals_are_non_retryable(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    with pytest.raises(DocuSignError) as e:
        await send(provider, document_html="<p>a document without the signature anchor</p>")
    assert not e.value.retryable and e.value.status == 400
    assert e.value.error_code == "ANCHOR_TAB_STRING_NOT_FOUND"
    with pytest.raises(DocuSignError) as e:
        await send(provider, signer_email="not-an-address")
    assert e.value.error_code == "INVALID_EMAIL_ADDRESS_FOR_RECIPIENT" and not e.value.retryable
    assert fake.envelopes_created == 0


async def test_a_customer_without_email_is_refused_before_any_call(
    fake: DocuSignFake, provider: DocuSignProvider
) -> None:
    with pytest.raises(DocuSignError) as e:
        await send(provider, signer_email=None)
    assert not e.value.retryable and "e-mail" in str(e.value)
    assert fake.requests == [] and fake.token_requests == 0


async def test_server_errors_are_retryable(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    envelope_id = await send(provider)
    fake.fail_next(503)
    with pytest.raises(DocuSignError) as e:
        await provider.status(envelope_id)
    assert e.value.retryable and e.value.status == 503
    assert (await provider.status(envelope_id)).status is EnvelopeStatus.SENT


async def test_envelopes_by_opportunity_and_request_number(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    opp = f"opp_{uuid.uuid4().hex}"
    first = await send(provider, opp, request_no=1)
    second = await send(provider, opp, request_no=2)
    again = await send(provider, opp, request_no=1)  # request 1 sent twice
    await send(provider)  # another opportunity's
    assert [e.envelope_id for e in await provider.envelopes(opp, 1)] == [again, first]  # newest first
    assert [e.envelope_id for e in await provider.envelopes(opp, 2)] == [second]
    assert await provider.envelopes(opp, 3) == []
    method, _, query = fake.requests[-1]
    assert method == "GET" and query["custom_field"] == [f"opportunity_id={opp}"]
    assert "from_date" in query and query["include"] == ["custom_fields"]
    assert await provider.envelopes(f"opp_{uuid.uuid4().hex}", 1) == []


async def test_retry_after_a_crash_finds_the_envelope_instead_of_sending_again(
    fake: DocuSignFake, provider: DocuSignProvider
) -> None:
    # What the activity does: the first attempt sent, then crashed before recording; the
    # retry looks the envelope up by its custom fields before sending.
    opp = f"opp_{uuid.uuid4().hex}"
    sent = await send(provider, opp)
    found = await provider.envelopes(opp, 1)
    envelope_id = found[0].envelope_id if found else await send(provider, opp)
    assert envelope_id == sent and fake.envelopes_created == 1


async def test_statuses_as_the_customer_acts(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    opp = f"opp_{uuid.uuid4().hex}"
    signed, declined, expired = await send(provider, opp, 1), await send(provider, opp, 2), await send(provider, opp, 3)
    state = await provider.status(signed)
    assert (state.status, state.terminal, state.opportunity_id, state.request_no) == (
        EnvelopeStatus.SENT,
        False,
        opp,
        1,
    )

    fake.open(signed)
    assert (await provider.status(signed)).status is EnvelopeStatus.DELIVERED
    fake.sign(signed)
    state = await provider.status(signed)
    assert state.status is EnvelopeStatus.COMPLETED and state.terminal
    assert state.completed_at is not None and state.signer_name == "Rachel Green"

    fake.decline(declined, "The rate is not what we agreed")
    state = await provider.status(declined)
    assert (state.status, state.reason, state.request_no) == (
        EnvelopeStatus.DECLINED,
        "The rate is not what we agreed",
        2,
    )

    fake.expire(expired)
    state = await provider.status(expired)
    assert (state.status, state.raw_status, state.reason) == (
        EnvelopeStatus.EXPIRED,
        "voided",
        "Envelope has expired.",
    )


async def test_void(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    open_one, signed = await send(provider), await send(provider)
    state = await provider.void(open_one, "Replaced by a new request")
    assert (state.status, state.reason) == (EnvelopeStatus.VOIDED, "Replaced by a new request")
    assert fake.envelope(open_one).voided_reason == "Replaced by a new request"
    puts = sum(1 for method, _, _ in fake.requests if method == "PUT")
    # Voiding again, or voiding what the customer already signed, changes nothing and
    # says what the envelope is.
    assert (await provider.void(open_one, "again")).reason == "Replaced by a new request"
    fake.sign(signed)
    assert (await provider.void(signed, "too late")).status is EnvelopeStatus.COMPLETED
    assert sum(1 for method, _, _ in fake.requests if method == "PUT") == puts
    assert fake.envelope(signed).status == "completed"


async def test_void_losing_the_race_to_the_signer(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    envelope_id = await send(provider)
    real_status = provider.status
    calls = 0

    async def status_then_sign(eid: str) -> Any:
        nonlocal calls
        calls += 1
        state = await real_status(eid)
        if calls == 1:
            fake.sign(eid)  # she signs between our look and our void
        return state

    provider.status = status_then_sign  # type: ignore[method-assign]
    state = await provider.void(envelope_id, "Replaced")
    assert state.status is EnvelopeStatus.COMPLETED


async def test_download_the_signed_documents(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    envelope_id = await send(provider)
    fake.sign(envelope_id)
    first = await provider.download(envelope_id)
    again = await provider.download(envelope_id)
    assert first.combined_pdf.startswith(b"%PDF-") and first.certificate_pdf.startswith(b"%PDF-")
    assert first.combined_pdf != first.certificate_pdf
    assert first.document_sha256 == hashlib.sha256(first.combined_pdf).hexdigest() == again.document_sha256
    assert first.certificate_sha256 == again.certificate_sha256
    assert b"signed by Rachel Green" in first.combined_pdf
    combined = [q for m, p, q in fake.requests if p.endswith("/documents/combined")]
    assert combined and all(q["certificate"] == ["false"] for q in combined)


# -- rate limits ---------------------------------------------------------------------------


async def test_429_is_retried_after_the_reset(fake: DocuSignFake, provider: DocuSignProvider, sleeps: Sleeps) -> None:
    await provider.envelopes("opp_warm", 1)  # token and account first
    fake.throttle(2, reset_in=2)
    envelope_id = await send(provider)
    assert fake.envelopes_created == 1 and fake.envelope(envelope_id).status == "sent"
    assert len(sleeps.waits) == 2 and all(1 <= w <= 3.1 for w in sleeps.waits)


async def test_rate_limit_retries_are_bounded(fake: DocuSignFake, keys: dict[str, Any], sleeps: Sleeps) -> None:
    p = make_provider(fake, keys["good"], sleeps, max_rate_limit_retries=2)
    await p.envelopes("opp_warm", 1)
    fake.throttle(10, reset_in=1)
    with pytest.raises(DocuSignError) as e:
        await send(p)
    assert e.value.retryable and e.value.status == 429
    assert e.value.error_code == "HOURLY_APIINVOCATION_LIMIT_EXCEEDED" and e.value.retry_after is not None
    assert len(sleeps.waits) == 2 and fake.envelopes_created == 0


async def test_a_distant_reset_is_left_to_the_caller(
    fake: DocuSignFake, provider: DocuSignProvider, sleeps: Sleeps
) -> None:
    await provider.envelopes("opp_warm", 1)
    fake.throttle(1, reset_in=1800)
    with pytest.raises(DocuSignError) as e:
        await send(provider)
    assert e.value.retryable and e.value.retry_after is not None and e.value.retry_after > 1700
    assert sleeps.waits == []  # no thread or task held for half an hour


async def test_older_accounts_400_rate_limit_is_a_rate_limit(
    fake: DocuSignFake, provider: DocuSignProvider, sleeps: Sleeps
) -> None:
    await provider.envelopes("opp_warm", 1)
    fake.throttle(1, reset_in=1, status=400, code="BURST_APIINVOCATION_LIMIT_EXCEEDED")
    await send(provider)
    assert len(sleeps.waits) == 1 and fake.envelopes_created == 1


async def test_remaining_zero_waits_before_the_next_call(
    fake: DocuSignFake, provider: DocuSignProvider, sleeps: Sleeps
) -> None:
    await provider.envelopes("opp_warm", 1)
    fake.exhaust(reset_in=2)
    envelope_id = await send(provider)  # answered, with X-RateLimit-Remaining: 0
    assert sleeps.waits == []
    await provider.status(envelope_id)
    assert len(sleeps.waits) == 1 and 1 <= sleeps.waits[0] <= 3.1


# -- Connect, delivered by the fake ----------------------------------------------------------


def _webhook_app(secrets: list[str], received: list[Any]) -> Starlette:
    """What POST /v1/webhooks/docusign must do with esign/connect.py: verify, then parse."""

    async def webhook(request: Request) -> JSONResponse:
        body = await request.body()
        if not verify_signature(body, request.headers, secrets):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        received.append(parse_message(body))
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/v1/webhooks/docusign", webhook, methods=["POST"])])


async def test_connect_messages_from_the_fake(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    received: list[Any] = []
    app = _webhook_app(["old-key", "new-key"], received)
    opp = f"opp_{uuid.uuid4().hex}"
    envelope_id = await send(provider, opp, request_no=4)
    fake.sign(envelope_id)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://needflow.example") as c:
        ok = await fake.deliver_connect(envelope_id, WEBHOOK, ["unrelated-key", "new-key"], copies=3, client=c)
        forged = await fake.deliver_connect(envelope_id, WEBHOOK, "not-our-key", client=c)
        tampered = await fake.deliver_connect(envelope_id, WEBHOOK, "new-key", tamper=True, client=c)
        stale = await fake.deliver_connect(envelope_id, WEBHOOK, "old-key", event="envelope-sent", client=c)
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.status_code for r in forged + tampered] == [401, 401]
    assert stale[0].status_code == 200
    assert len(received) == 4
    first = received[0]
    assert (first.event, first.envelope_id, first.status) == (
        "envelope-completed",
        envelope_id,
        EnvelopeStatus.COMPLETED,
    )
    assert (first.opportunity_id, first.request_no) == (opp, 4)
    assert [m.retry_count for m in received[:3]] == [0, 1, 2]
    # An out-of-order message names an old event; the envelope's summary is current. The
    # workflow asks status() either way.
    assert received[3].event == "envelope-sent"


async def test_connect_message_of_a_declined_envelope(fake: DocuSignFake, provider: DocuSignProvider) -> None:
    envelope_id = await send(provider)
    fake.decline(envelope_id, "Wrong amount")
    body = fake.connect_message(envelope_id)
    headers = fake.signature_headers(body, "k")
    assert verify_signature(body, headers, ["k"])
    event = parse_message(body)
    assert (event.event, event.status, event.reason) == ("envelope-declined", EnvelopeStatus.DECLINED, "Wrong amount")


# -- configuration -------------------------------------------------------------------------


@pytest.fixture
def docusign_env(monkeypatch: pytest.MonkeyPatch, fake: DocuSignFake, keys: dict[str, Any]) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("DOCUSIGN_", "NEEDFLOW_")):
            monkeypatch.delenv(name)
    env = {
        "NEEDFLOW_ESIGN_PROVIDER": "docusign",
        "NEEDFLOW_PUBLIC_BASE_URL": "https://needflow.bank.example/",
        "DOCUSIGN_INTEGRATION_KEY": fake.integration_key,
        "DOCUSIGN_USER_ID": fake.user_id,
        "DOCUSIGN_PRIVATE_KEY_FILE": str(keys["good"]),
        "DOCUSIGN_OAUTH_HOST": fake.oauth_host,
        "DOCUSIGN_CA_BUNDLE": str(fake.ca_bundle),
        "DOCUSIGN_CONNECT_HMAC_SECRETS": " new-key, old-key ,,",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


async def test_settings_from_the_environment(fake: DocuSignFake, docusign_env: dict[str, str]) -> None:
    settings = Settings()
    assert settings.docusign is not None
    assert settings.docusign.connect_hmac_secrets == ["new-key", "old-key"]
    assert settings.docusign.account_id is None and settings.docusign.rest_base is None
    assert settings.docusign_webhook_url == "https://needflow.bank.example/v1/webhooks/docusign"
    provider = DocuSignProvider.from_settings(settings, sleep=Sleeps())
    assert provider.webhook_url == settings.docusign_webhook_url
    await send(provider)
    assert fake.envelopes_created == 1


def test_settings_name_every_missing_variable(monkeypatch: pytest.MonkeyPatch, docusign_env: dict[str, str]) -> None:
    for name in docusign_env:
        if name.startswith("DOCUSIGN_"):
            monkeypatch.delenv(name)
    with pytest.raises(ValueError) as e:
        Settings()
    for name in (
        "DOCUSIGN_INTEGRATION_KEY",
        "DOCUSIGN_USER_ID",
        "DOCUSIGN_PRIVATE_KEY_FILE",
        "DOCUSIGN_OAUTH_HOST",
        "DOCUSIGN_CONNECT_HMAC_SECRETS",
    ):
        assert f"{name} is not set" in str(e.value)
    assert "DOCUSIGN_ACCOUNT_ID" not in str(e.value)  # optional


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DOCUSIGN_OAUTH_HOST", "https://account-d.docusign.com", "DOCUSIGN_OAUTH_HOST must be a host name"),
        ("DOCUSIGN_INTEGRATION_KEY", "my-app", "DOCUSIGN_INTEGRATION_KEY must be the app's integration key"),
        ("DOCUSIGN_ACCOUNT_ID", "12345678", "DOCUSIGN_ACCOUNT_ID must be an account id"),
        ("DOCUSIGN_BASE_URL", "http://demo.docusign.net", "DOCUSIGN_BASE_URL must be an https:// URL"),
        ("DOCUSIGN_CA_BUNDLE", "/nonexistent/ca.pem", "DOCUSIGN_CA_BUNDLE '/nonexistent/ca.pem' cannot be read"),
        ("DOCUSIGN_CONNECT_HMAC_SECRETS", " , ", "DOCUSIGN_CONNECT_HMAC_SECRETS must hold at least one"),
        ("NEEDFLOW_PUBLIC_BASE_URL", "", "needs NEEDFLOW_PUBLIC_BASE_URL"),
    ],
)
def test_settings_refuse_wrong_values(
    monkeypatch: pytest.MonkeyPatch, docusign_env: dict[str, str], variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings()


def test_settings_refuse_a_key_file_that_is_not_an_rsa_key(
    monkeypatch: pytest.MonkeyPatch, docusign_env: dict[str, str], fake: DocuSignFake
) -> None:
    monkeypatch.setenv("DOCUSIGN_PRIVATE_KEY_FILE", str(fake.ca_bundle))
    with pytest.raises(ValueError, match="DOCUSIGN_PRIVATE_KEY_FILE .* is not an unencrypted PEM private key"):
        Settings()


def test_base_url_gets_restapi_once(fake: DocuSignFake, keys: dict[str, Any]) -> None:
    assert fake.settings(keys["good"], base_url="https://demo.docusign.net/").rest_base == (
        "https://demo.docusign.net/restapi"
    )
    assert fake.settings(keys["good"], base_url="https://eu.docusign.net/restapi").rest_base == (
        "https://eu.docusign.net/restapi"
    )
