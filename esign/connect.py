"""DocuSign Connect messages: verify their HMAC, then parse them. Pure: no I/O.

DocuSign signs each Connect message with every HMAC key configured for the account: header
`X-DocuSign-Signature-1` carries base64(HMAC-SHA256(key 1, raw body)), `-2` key 2, and so
on. A message is genuine when any configured secret produced any of those headers; during
a key rotation both the old and the new key are configured on needflow's side.

How `POST /v1/webhooks/docusign` must use this module, in this order:

1. Read the RAW body bytes (`await request.body()`), before any JSON parsing: the HMAC is
   over the bytes as sent, and a re-serialised body never matches.
2. `verify_signature(body, request.headers, settings.docusign.connect_hmac_secrets)`;
   False → 401, and nothing else is done (no parsing, no look-up, no log of the body).
3. `parse_message(body)`; ConnectMessageError → 400 (DocuSign retries; harmless).
4. Hand `event.envelope_id` to the opportunity's workflow (found by the `opportunity_id`
   custom field, or the stored envelope) as a hint, answer 200 at once. The workflow
   confirms with `ESignatureProvider.status()` before it acts: a message only says "look
   now", so duplicates, retries and out-of-order messages change nothing by themselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from esign.provider import EnvelopeStatus

SIGNATURE_HEADER = re.compile(r"^x-docusign-signature-([1-9][0-9]{0,2})$", re.IGNORECASE)

#: The envelope's text custom fields needflow sets (esign/docusign.py).
OPPORTUNITY_FIELD = "opportunity_id"
REQUEST_FIELD = "request_no"

#: DocuSign's void reason when an envelope passes its expiry date.
EXPIRED_VOID_REASON = "Envelope has expired."

_STATUSES = {
    "created": EnvelopeStatus.SENT,  # a draft: not sent by needflow, treated as not signed yet
    "sent": EnvelopeStatus.SENT,
    "correct": EnvelopeStatus.SENT,  # being corrected by the sender
    "delivered": EnvelopeStatus.DELIVERED,
    "signed": EnvelopeStatus.DELIVERED,  # every signer signed, completion still processing
    "processing": EnvelopeStatus.DELIVERED,
    "completed": EnvelopeStatus.COMPLETED,
    "declined": EnvelopeStatus.DECLINED,
    "voided": EnvelopeStatus.VOIDED,
    "deleted": EnvelopeStatus.VOIDED,
    "timedout": EnvelopeStatus.EXPIRED,
}

_EVENT_STATUSES = {
    "envelope-sent": "sent",
    "envelope-resent": "sent",
    "envelope-delivered": "delivered",
    "envelope-completed": "completed",
    "envelope-declined": "declined",
    "envelope-voided": "voided",
}


def normalise_status(raw_status: str, voided_reason: str | None = None) -> EnvelopeStatus:
    """DocuSign's envelope status as needflow's: an envelope voided because it expired is
    `expired`; statuses needflow does not know count as still open (`sent`)."""
    status = _STATUSES.get(raw_status.strip().lower(), EnvelopeStatus.SENT)
    if (
        status is EnvelopeStatus.VOIDED
        and voided_reason
        and voided_reason.strip().lower().startswith("envelope has expired")
    ):
        return EnvelopeStatus.EXPIRED
    return status


def compute_signature(body: bytes, secret: str) -> str:
    """base64(HMAC-SHA256(secret, body)): what DocuSign puts in X-DocuSign-Signature-N."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode("ascii")


def signature_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[str]:
    """The values of every X-DocuSign-Signature-N header (any case), N = 1…999."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [value.strip() for name, value in items if SIGNATURE_HEADER.match(name)]


def verify_signature(
    body: bytes, headers: Mapping[str, str] | Iterable[tuple[str, str]], secrets: Sequence[str]
) -> bool:
    """True when any configured secret signed `body` as any X-DocuSign-Signature-N header
    says. Compared in constant time (hmac.compare_digest), every pair compared; False with
    no secrets or no signature headers (fails closed)."""
    given = [value.encode("ascii", "replace") for value in signature_headers(headers)]
    expected = [compute_signature(body, secret).encode("ascii") for secret in secrets if secret]
    ok = False
    for e in expected:
        for g in given:
            ok |= hmac.compare_digest(e, g)
    return ok


class ConnectMessageError(ValueError):
    """A verified body that is not a Connect JSON (SIM) envelope message."""


class ConnectEvent(BaseModel):
    """What needflow reads from one Connect JSON SIM message."""

    #: DocuSign's event name: envelope-completed, envelope-declined, recipient-completed, …
    event: str
    envelope_id: str
    account_id: str | None = None
    #: The envelope status the message reports (the summary's, else the event's), if any.
    status: EnvelopeStatus | None = None
    raw_status: str | None = None
    #: The void reason (voided, expired) or the signer's decline reason, when included.
    reason: str | None = None
    opportunity_id: str | None = None
    request_no: int | None = None
    #: When DocuSign generated the message (messages may arrive out of this order).
    generated_at: datetime | None = None
    retry_count: int = 0


def _text_fields(summary: Mapping[str, Any]) -> dict[str, str]:
    custom = summary.get("customFields") or {}
    fields: dict[str, str] = {}
    for field in custom.get("textCustomFields") or []:
        if isinstance(field, Mapping) and isinstance(field.get("name"), str):
            fields[field["name"]] = str(field.get("value") or "")
    return fields


def _decline_reason(summary: Mapping[str, Any]) -> str | None:
    signers = (summary.get("recipients") or {}).get("signers") or []
    for signer in signers:
        if isinstance(signer, Mapping) and signer.get("declinedReason"):
            return str(signer["declinedReason"])
    return None


def parse_message(body: bytes) -> ConnectEvent:
    """Parse a Connect JSON SIM message (eventData version restv2.1, format json). Call it
    only after `verify_signature` accepted the same bytes."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConnectMessageError(f"not JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
        raise ConnectMessageError("not a Connect JSON SIM message: no `data` object")
    data: dict[str, Any] = message["data"]
    summary: dict[str, Any] = data.get("envelopeSummary") or {}
    envelope_id = data.get("envelopeId") or summary.get("envelopeId")
    event = message.get("event")
    if not isinstance(envelope_id, str) or not envelope_id or not isinstance(event, str) or not event:
        raise ConnectMessageError("a Connect message names its `event` and `data.envelopeId`")
    raw_status = summary.get("status") or _EVENT_STATUSES.get(event)
    voided_reason = summary.get("voidedReason")
    status = normalise_status(raw_status, voided_reason) if isinstance(raw_status, str) else None
    reason = voided_reason if status in (EnvelopeStatus.VOIDED, EnvelopeStatus.EXPIRED) else None
    if status is EnvelopeStatus.DECLINED:
        reason = _decline_reason(summary)
    fields = _text_fields(summary)
    request_no = fields.get(REQUEST_FIELD)
    try:
        return ConnectEvent(
            event=event,
            envelope_id=envelope_id,
            account_id=data.get("accountId"),
            status=status,
            raw_status=raw_status if isinstance(raw_status, str) else None,
            reason=reason,
            opportunity_id=fields.get(OPPORTUNITY_FIELD) or None,
            request_no=int(request_no) if request_no and request_no.isdigit() else None,
            generated_at=message.get("generatedDateTime"),
            retry_count=message.get("retryCount") or 0,
        )
    except ValidationError as e:
        raise ConnectMessageError(f"unexpected Connect message: {e.errors()[0]['msg']}") from None
