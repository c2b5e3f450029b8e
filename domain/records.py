"""What workflows ask activities to write, and the activity names they ask by.

Workflows call activities by these names so that workflow code never imports the store.
Every record carries the keys that make its write idempotent: a retried activity finds
its row already there and writes nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel

from domain.opportunity import CheckpointView, ImportedOpportunity, SignatureOutcome
from domain.referral import HistoryEntry, ReferralInput, Routed
from domain.routing import ReferralFacts, RoutingRules
from domain.types import ConsentChannel, Product

OPEN_OPPORTUNITY = "opportunity.open"
RECORD_STAGE_CHANGE = "opportunity.record_stage_change"
REQUEST_SIGNATURE = "opportunity.request_signature"
RECORD_SIGNATURE_FAILURE = "opportunity.record_signature_failure"
RECORD_OWNER_CHANGE = "opportunity.record_owner_change"
CHECK_SIGNATURE = "opportunity.check_signature"


class OpenOpportunity(BaseModel):
    opportunity_id: str
    workflow_id: str
    customer_id: str
    owner_id: str
    need_id: str | None
    product: Product
    process_version: int
    amount: Decimal | None
    referral_id: str | None
    campaign_id: str | None
    probability: int
    first_checkpoint: CheckpointView
    #: Set for an imported opportunity: the import recorded its row and every checkpoint
    #: before starting the workflow (store/imports.py), so the activity only judges it.
    imported: ImportedOpportunity | None = None


class ConsentRecord(BaseModel):
    consent_id: str  # deterministic: the same consent retried is one row
    customer_id: str
    product: Product
    channel: ConsentChannel
    evidence: dict[str, Any]
    granted_at: datetime
    #: Who recorded the consent (an employee, or the system that brought the customer's
    #: word) and through which API key.
    actor: str | None = None
    via: str | None = None


class ProcessedEventRecord(BaseModel):
    event_id: str
    type: str
    body_sha256: str


class SignatureCompletion(BaseModel):
    envelope_id: str
    signer_name: str
    client_address: str | None
    completed_at: datetime


class SignatureRequestInput(BaseModel):
    opportunity_id: str
    request_no: int
    template: str
    subject: str


class StageChange(BaseModel):
    """One checkpoint and everything that changes with it, written in one transaction."""

    opportunity_id: str
    checkpoint: CheckpointView
    probability: int
    status: Literal["open", "won", "lost"]
    lost_reason: str | None = None
    consent: ConsentRecord | None = None
    processed_event: ProcessedEventRecord | None = None
    signature_completion: SignatureCompletion | None = None
    #: The envelope still out for signature when the opportunity closed: voided with it
    #: (the workflow decides; the activity voids it at the provider and in the store).
    void_envelope_id: str | None = None
    #: The stage sends documents for signature: once the change is recorded, the same
    #: activity requests the signature and returns the envelope (`SignatureSent`).
    signature_request: SignatureRequestInput | None = None


class SignatureSent(BaseModel):
    """The envelope as recorded: no link (it went to the customer only)."""

    provider: str
    envelope_id: str
    document_sha256: str
    #: `undeliverable`: the customer has no e-mail address; nothing was sent.
    status: Literal["sent", "undeliverable"] = "sent"
    #: Set for a remote provider (DocuSign): the workflow looks at the envelope this often
    #: until it is finished, and whenever a Connect message says it changed.
    poll_seconds: float | None = None
    #: Other envelopes may exist for this request (it was sent by more than one attempt):
    #: the watcher's looks sweep them (`SignatureCheck.strays_possible`). True when unknown
    #: (an answer recorded before this field).
    strays_possible: bool = True


class SignatureCheck(BaseModel):
    """Look at a remote envelope: its status from the provider and, once completed, its
    signed documents stored and hashed (the bytes stay in the store)."""

    opportunity_id: str
    envelope_id: str
    #: When the workflow had the envelope recorded (workflow time): how young the request
    #: is, for the sweep of stray envelopes. None from a run's look before this field: the
    #: request's creation is taken instead.
    sent_at: datetime | None = None
    #: Whether the request may have stray envelopes to sweep (`SignatureSent`); True from a
    #: run's look before this field.
    strays_possible: bool = True


class SignatureLook(BaseModel):
    """What a look at a remote envelope found: its outcome once it is finished (the
    signature confirmed with the provider, never taken from a webhook's word), or None."""

    outcome: SignatureOutcome | None = None


class SignatureFailureRecord(BaseModel):
    opportunity_id: str
    envelope_id: str
    status: Literal["declined", "voided", "expired", "undeliverable"]
    reason: str | None
    owner_id: str


class OwnerChangeRecord(BaseModel):
    """An opportunity handed to another owner: the owner change row and the opportunity's
    new owner, written in one transaction; keyed by (opportunity, seq)."""

    opportunity_id: str
    seq: int
    from_owner_id: str
    to_owner_id: str
    at: datetime
    actor: str
    via: str | None = None
    reason: str


# ---------------------------------------------------------------- referrals

OPEN_REFERRAL = "referral.open"
ROUTE_REFERRAL = "referral.route"
RECORD_REFERRAL_CHANGE = "referral.record_change"
PREPARE_CONVERSION = "referral.prepare_conversion"
START_OPPORTUNITY = "referral.start_opportunity"
NOTIFY_REFERRAL = "referral.notify"


class RouteReferral(BaseModel):
    """Route (or re-route) a referral; `preceding` is the rejection or lapse that made it
    necessary, recorded in the same transaction as the new assignment."""

    referral_id: str
    preceding: HistoryEntry | None = None
    rules: RoutingRules
    facts: ReferralFacts
    exclude: list[str]
    seq: int
    at: datetime
    actor: str
    via: str | None = None
    #: Recorded as the acceptance deadline when someone is assigned.
    accept_deadline: datetime


class OpenReferral(BaseModel):
    """The referral as created: the activity records it, scores it and routes it (`route`,
    whose `preceding` is None), all in one transaction."""

    input: ReferralInput
    workflow_id: str
    created: HistoryEntry
    route: RouteReferral


class ReferralOpened(BaseModel):
    lead_score: int
    lead_score_factors: list[dict[str, Any]]
    referrer_score: int
    routed: Routed


class ReferralChange(BaseModel):
    """One history entry and the row's new state, written in one transaction."""

    referral_id: str
    entry: HistoryEntry
    status: str
    assignee_id: str | None = None
    queue: str | None = None
    sla_deadline: datetime | None = None
    accepted_at: datetime | None = None
    close_reason: str | None = None
    opportunity_id: str | None = None
    customer_id: str | None = None
    #: Converted (True) or closed (False): the referral is decided and the lead model learns.
    won: bool | None = None


class PrepareConversion(BaseModel):
    referral_id: str
    need_kind: str
    need_description: str
    recorded_by: str
    at: datetime


class Conversion(BaseModel):
    customer_id: str
    need_id: str


class ReferralNotice(BaseModel):
    """An e-mail about a referral; the activity renders it from the store."""

    referral_id: str
    kind: Literal["assigned", "unassigned", "lapsed", "reminder", "escalation"]
    #: Unique per occasion (e.g. the history seq), so a retry sends nothing twice.
    occasion: str
    #: For `assigned`/`reminder`: the assignee; for `lapsed`/`escalation`: whose manager.
    employee_id: str | None = None
    note: str | None = None
