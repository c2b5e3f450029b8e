"""DocuSign Connect: HMAC verification and message parsing (esign/connect.py, pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from esign.connect import (
    ConnectMessageError,
    compute_signature,
    normalise_status,
    parse_message,
    signature_headers,
    verify_signature,
)
from esign.provider import EnvelopeStatus

ENVELOPE_ID = "93be49ab-4f4c-4b6b-9a3e-8b3f1c1f5c11"

# A Connect JSON SIM message as DocuSign sends it for an envelope-level eventNotification
# with eventData {version: restv2.1, format: json, includeData: [custom_fields, recipients]}.
COMPLETED = {
    "event": "envelope-completed",
    "apiVersion": "v2.1",
    "uri": f"/restapi/v2.1/accounts/0c7f6a9e-5a55-4e1e-a1f3-9d7c1b3e2a10/envelopes/{ENVELOPE_ID}",
    "retryCount": 0,
    "configurationId": 10549,
    "generatedDateTime": "2026-11-26T10:15:42.5920000Z",
    "data": {
        "accountId": "0c7f6a9e-5a55-4e1e-a1f3-9d7c1b3e2a10",
        "userId": "4b1e0a5c-7d3e-4b0b-9c55-2a1f8e6d7c90",
        "envelopeId": ENVELOPE_ID,
        "envelopeSummary": {
            "status": "completed",
            "documentsUri": f"/envelopes/{ENVELOPE_ID}/documents",
            "recipientsUri": f"/envelopes/{ENVELOPE_ID}/recipients",
            "envelopeUri": f"/envelopes/{ENVELOPE_ID}",
            "emailSubject": "Your mortgage closing documents",
            "envelopeId": ENVELOPE_ID,
            "customFieldsUri": f"/envelopes/{ENVELOPE_ID}/custom_fields",
            "createdDateTime": "2026-11-26T10:01:02.1230000Z",
            "sentDateTime": "2026-11-26T10:01:03.4560000Z",
            "deliveredDateTime": "2026-11-26T10:14:10.0000000Z",
            "completedDateTime": "2026-11-26T10:15:40.2500000Z",
            "statusChangedDateTime": "2026-11-26T10:15:40.2500000Z",
            "customFields": {
                "textCustomFields": [
                    {"fieldId": "10971120", "name": "opportunity_id", "show": "false", "required": "false",
                     "value": "opp_4f9d2c"},
                    {"fieldId": "10971121", "name": "request_no", "show": "false", "required": "false", "value": "2"},
                ],
                "listCustomFields": [],
            },
            "recipients": {
                "signers": [
                    {"email": "rachel@example.com", "name": "Rachel Green", "recipientId": "1",
                     "routingOrder": "1", "status": "completed", "signedDateTime": "2026-11-26T10:15:40.2500000Z"}
                ],
                "recipientCount": "1",
            },
        },
    },
}  # fmt: skip


def body_of(message: dict) -> bytes:
    return json.dumps(message, indent=2).encode()


def signed(body: bytes, *secrets: str) -> dict[str, str]:
    return {f"X-DocuSign-Signature-{n}": compute_signature(body, s) for n, s in enumerate(secrets, start=1)}


# -- HMAC ----------------------------------------------------------------------------------


def test_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    body = body_of(COMPLETED)
    expected = base64.b64encode(hmac.new(b"secret", body, hashlib.sha256).digest()).decode()
    assert compute_signature(body, "secret") == expected


def test_valid_signature_accepted_any_secret_any_header() -> None:
    body = body_of(COMPLETED)
    # DocuSign signs with each of the account's keys (one header each); needflow may hold
    # an old and a new key during a rotation.
    headers = signed(body, "docusign-only-key", "rotated-key")
    assert verify_signature(body, headers, ["rotated-key"])
    assert verify_signature(body, headers, ["old-key", "rotated-key"])
    assert verify_signature(body, signed(body, "old-key"), ["old-key", "rotated-key"])
    assert verify_signature(body, {k.lower(): v for k, v in headers.items()}, ["rotated-key"])
    assert verify_signature(body, list(headers.items()), ["rotated-key"])  # raw header pairs


def test_forged_missing_or_tampered_rejected() -> None:
    body = body_of(COMPLETED)
    assert not verify_signature(body, signed(body, "attacker-key"), ["our-key"])
    assert not verify_signature(body, {}, ["our-key"])
    assert not verify_signature(body, {"Content-Type": "application/json"}, ["our-key"])
    assert not verify_signature(body, {"X-DocuSign-Signature-1": ""}, ["our-key"])
    assert not verify_signature(body, {"X-DocuSign-Signature-1": "not base64 at all é"}, ["our-key"])
    tampered = body.replace(b'"completed"', b'"voided"', 1)
    assert not verify_signature(tampered, signed(body, "our-key"), ["our-key"])
    reserialised = json.dumps(json.loads(body)).encode()  # the same JSON, other bytes
    assert not verify_signature(reserialised, signed(body, "our-key"), ["our-key"])
    # A signature in some other header does not count.
    assert not verify_signature(body, {"X-DocuSign-Signature": compute_signature(body, "our-key")}, ["our-key"])


def test_no_configured_secret_rejects_everything() -> None:
    body = body_of(COMPLETED)
    assert not verify_signature(body, signed(body, ""), [])
    assert not verify_signature(body, signed(body, ""), [""])


def test_signature_headers_found_in_any_case_and_number() -> None:
    headers = [("x-docusign-signature-1", "a"), ("X-DOCUSIGN-SIGNATURE-12", " b "), ("X-DocuSign-Signature-0", "c")]
    assert signature_headers(headers) == ["a", "b"]


# -- parsing -------------------------------------------------------------------------------


def test_parse_a_completed_message() -> None:
    event = parse_message(body_of(COMPLETED))
    assert event.event == "envelope-completed"
    assert event.envelope_id == ENVELOPE_ID
    assert event.account_id == "0c7f6a9e-5a55-4e1e-a1f3-9d7c1b3e2a10"
    assert (event.status, event.raw_status, event.reason) == (EnvelopeStatus.COMPLETED, "completed", None)
    assert (event.opportunity_id, event.request_no) == ("opp_4f9d2c", 2)
    assert event.generated_at == datetime(2026, 11, 26, 10, 15, 42, 592000, tzinfo=UTC)
    assert event.retry_count == 0


def test_parse_declined_voided_and_expired() -> None:
    declined = json.loads(json.dumps(COMPLETED))
    declined["event"] = "envelope-declined"
    summary = declined["data"]["envelopeSummary"]
    summary["status"] = "declined"
    summary["recipients"]["signers"][0].update(status="declined", declinedReason="Wrong amount")
    event = parse_message(body_of(declined))
    assert (event.status, event.reason) == (EnvelopeStatus.DECLINED, "Wrong amount")

    voided = json.loads(json.dumps(COMPLETED))
    voided["event"] = "envelope-voided"
    voided["data"]["envelopeSummary"].update(status="voided", voidedReason="Replaced by a new request")
    event = parse_message(body_of(voided))
    assert (event.status, event.reason) == (EnvelopeStatus.VOIDED, "Replaced by a new request")

    voided["data"]["envelopeSummary"]["voidedReason"] = "Envelope has expired."
    event = parse_message(body_of(voided))
    assert (event.status, event.reason) == (EnvelopeStatus.EXPIRED, "Envelope has expired.")


def test_parse_without_envelope_summary_uses_the_event() -> None:
    minimal = {
        "event": "envelope-completed",
        "apiVersion": "v2.1",
        "generatedDateTime": "2026-11-26T10:15:42.5920000Z",
        "data": {"accountId": "a", "envelopeId": ENVELOPE_ID},
    }
    event = parse_message(body_of(minimal))
    assert (event.status, event.opportunity_id, event.request_no) == (EnvelopeStatus.COMPLETED, None, None)
    recipient = {"event": "recipient-autoresponded", "data": {"envelopeId": ENVELOPE_ID, "recipientId": "1"}}
    assert parse_message(body_of(recipient)).status is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<xml/>",
        b"[]",
        b'{"event": "envelope-completed"}',
        b'{"event": "envelope-completed", "data": {}}',
        b'{"data": {"envelopeId": "x"}}',
        b'{"event": "envelope-completed", "data": {"envelopeId": "x"}, "generatedDateTime": "yesterday"}',
        b"\xff\xfe",
    ],
)
def test_parse_rejects_what_is_not_a_connect_message(body: bytes) -> None:
    with pytest.raises(ConnectMessageError):
        parse_message(body)


@pytest.mark.parametrize(
    ("raw", "reason", "expected"),
    [
        ("sent", None, EnvelopeStatus.SENT),
        ("created", None, EnvelopeStatus.SENT),
        ("delivered", None, EnvelopeStatus.DELIVERED),
        ("signed", None, EnvelopeStatus.DELIVERED),
        ("Completed", None, EnvelopeStatus.COMPLETED),
        ("declined", "no", EnvelopeStatus.DECLINED),
        ("voided", "Replaced", EnvelopeStatus.VOIDED),
        ("voided", "Envelope has expired.", EnvelopeStatus.EXPIRED),
        ("timedout", None, EnvelopeStatus.EXPIRED),
        ("something-new", None, EnvelopeStatus.SENT),
    ],
)
def test_normalise_status(raw: str, reason: str | None, expected: EnvelopeStatus) -> None:
    assert normalise_status(raw, reason) is expected
