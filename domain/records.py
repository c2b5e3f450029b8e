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

from domain.opportunity import CheckpointView
from domain.types import ConsentChannel, Product

OPEN_OPPORTUNITY = "opportunity.open"
RECORD_STAGE_CHANGE = "opportunity.record_stage_change"
REQUEST_SIGNATURE = "opportunity.request_signature"
RECORD_SIGNATURE_FAILURE = "opportunity.record_signature_failure"


class OpenOpportunity(BaseModel):
    opportunity_id: str
    workflow_id: str
    customer_id: str
    owner_id: str
    need_id: str
    product: Product
    process_version: int
    amount: Decimal | None
    referral_id: str | None
    campaign_id: str | None
    probability: int
    first_checkpoint: CheckpointView


class ConsentRecord(BaseModel):
    consent_id: str  # deterministic: the same consent retried is one row
    customer_id: str
    product: Product
    channel: ConsentChannel
    evidence: dict[str, Any]
    granted_at: datetime


class ProcessedEventRecord(BaseModel):
    event_id: str
    type: str
    body_sha256: str


class SignatureCompletion(BaseModel):
    envelope_id: str
    signer_name: str
    client_address: str | None
    completed_at: datetime


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


class SignatureRequestInput(BaseModel):
    opportunity_id: str
    request_no: int
    template: str
    subject: str


class SignatureSent(BaseModel):
    provider: str
    envelope_id: str
    signing_url: str | None
    document_sha256: str


class SignatureFailureRecord(BaseModel):
    opportunity_id: str
    envelope_id: str
    status: Literal["declined", "voided"]
    reason: str | None
    owner_id: str
