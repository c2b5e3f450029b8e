"""The opportunity's lifecycle rules, inputs and state: pure and deterministic.

`OpportunityWorkflow` calls these checks from its update validators; a refusal raises
`TransitionRefused`, which the workflow turns into a rejected update (nothing written to
history) and the API into 409 `invalid_transition`. The API never re-implements them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field

from domain.invariants import InvariantBroken
from domain.process import ProcessDefinition, Stage
from domain.types import ConsentChannel, EventType, OpportunityStatus, Product, Role, Trigger


class TransitionRefused(Exception):
    """The command is not allowed in the opportunity's current state, or not by this actor."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


# ---------------------------------------------------------------- inputs and commands


class Actor(BaseModel):
    """The employee on whose behalf a front end acts, as the API resolved them."""

    id: str
    role: Role
    #: The API key (its name) the front end acted through: recorded beside the actor.
    via: str | None = None


class OpportunityInput(BaseModel):
    opportunity_id: str
    customer_id: str
    owner_id: str
    #: None only for an imported opportunity whose old system recorded no need.
    need_id: str | None
    product: Product
    amount: Decimal | None = None
    referral_id: str | None = None
    campaign_id: str | None = None
    opened_by: str
    #: The API key (its name) the opening came through.
    opened_via: str | None = None
    process: ProcessDefinition
    #: Whether the namespace has needflow's search attributes (False only on a server that
    #: cannot register them, Temporal's time-skipping test server): set by who starts it.
    search_attributes: bool = True
    #: Set for an open opportunity brought by an import (store/imports.py): the workflow
    #: resumes at its last checkpoint's stage with its checkpoints as recorded, and writes
    #: no first checkpoint of its own; at a stage that asks for signatures it sends the
    #: documents (the old system's request did not come with the book). None (every
    #: workflow before imports): it opens at the process's first stage.
    imported: ImportedOpportunity | None = None
    #: How the run records its history, set by who starts it (workflows/starts.py) to the
    #: workflow's HISTORY_FORMAT then. 0, what the input of a run started before the field
    #: existed holds: the run decides by its patch markers, as it did.
    history_format: int = 0


class AdvanceCommand(BaseModel):
    actor: Actor
    to_stage: str
    evidence: dict[str, str] = Field(default_factory=dict)


class EventCommand(BaseModel):
    event_id: str
    type: EventType
    occurred_at: datetime
    data: dict[str, Any] = Field(default_factory=dict)
    #: The backend system that sent it (its API key's name): the checkpoint's actor.
    source: str | None = None


class CloseLostCommand(BaseModel):
    actor: Actor
    reason: str


class ResendSignatureCommand(BaseModel):
    actor: Actor


class TransferOwnerCommand(BaseModel):
    """Give the opportunity to another owner (its owner was deactivated). Whether the new
    owner exists and is active is the API's check: it holds the employees. `actor` is
    whoever the API key acts as (its employee, or else its name), `via` the key's name."""

    to_owner_id: str
    actor: str
    via: str | None = None
    reason: str


class SignatureOutcome(BaseModel):
    """What the e-signature provider reported for an envelope."""

    envelope_id: str
    #: `expired`: the link's time ran out (the local page) or DocuSign expired the envelope.
    status: Literal["completed", "declined", "voided", "expired"]
    signer_name: str | None = None
    document_sha256: str | None = None
    #: DocuSign: the SHA-256 of its certificate of completion (the audit trail).
    certificate_sha256: str | None = None
    client_address: str | None = None
    reason: str | None = None
    at: datetime


# ---------------------------------------------------------------- state


class CheckpointView(BaseModel):
    seq: int
    stage: str
    entered_at: datetime
    trigger: Trigger
    actor: str
    #: The API key (its name) the change came through; None for the workflow's own moves.
    via: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)


class ImportedOpportunity(BaseModel):
    """An open opportunity as its old system recorded it (POST /v1/imports)."""

    source: str
    external_id: str
    opened_at: datetime
    #: Its checkpoints, numbered 1… in the order recorded; the last one's stage is where
    #: the workflow resumes (an open stage of the process).
    checkpoints: list[CheckpointView] = Field(min_length=1)


class SignatureState(BaseModel):
    request_no: int
    provider: str
    envelope_id: str | None = None
    #: `undeliverable`: the customer has no e-mail address, so no link could reach her.
    #: The link itself is never here: it goes to the customer only (API.md, signing links).
    status: Literal["requesting", "sent", "completing", "completed", "declined", "voided", "expired", "undeliverable"]
    document_sha256: str | None = None


class OpportunityState(BaseModel):
    """The workflow's whole state: its query answer (`current_state`) and its result."""

    opportunity_id: str
    customer_id: str
    product: Product
    process_version: int
    owner_id: str
    amount: Decimal | None = None
    stage: str
    probability: int
    status: OpportunityStatus = OpportunityStatus.open
    lost_reason: str | None = None
    checkpoints: list[CheckpointView] = Field(default_factory=list)
    signature: SignatureState | None = None
    applied_events: list[str] = Field(default_factory=list)
    #: How many times the owner changed: the next change is numbered one more, so a
    #: retried write of it is one row.
    owner_changes: int = 0


OpportunityInput.model_rebuild()


class OpportunityAnswer(BaseModel):
    """What an opportunity's update answers: which one and where it stands, not its whole
    state. An update's result stays in the workflow's history as long as the history does
    (sealed by the codec, but kept, and a copy per update), and callers read the
    opportunity back from the store, which the update wrote before answering; the whole
    state is the `current_state` query's."""

    opportunity_id: str
    stage: str
    status: OpportunityStatus
    checkpoints: int


class ClosedAtMissing(InvariantBroken):
    """A decided opportunity without `closed_at`: the store refuses one (migration 0014's
    CHECK), so only a hand edit or a restore with constraints off can show one. Nothing
    guesses its time."""


def closed_at_of(opportunity_id: str, status: str, closed_at: datetime | None) -> datetime:
    """When a won or lost opportunity was decided: its `closed_at`, the one definition."""
    if closed_at is None:
        raise ClosedAtMissing(f"opportunity {opportunity_id} is {status} without closed_at")
    return closed_at


def event_body_sha256(event_type: str, data: dict[str, Any]) -> str:
    """What makes two deliveries of one event id the same event: its type and data."""
    return hashlib.sha256(
        json.dumps({"type": event_type, "data": data}, sort_keys=True, default=str).encode()
    ).hexdigest()


class EventResult(BaseModel):
    result: Literal["applied", "duplicate"]
    opportunity: OpportunityAnswer


# ---------------------------------------------------------------- the rules

CLOSED_LOST_STAGE = "closed_lost"


def check_opening(process: ProcessDefinition | None, product: Product, amount: Decimal | None) -> ProcessDefinition:
    """May an opportunity for `product` be opened with this amount? (The need is checked by
    whoever holds it: the API for a direct opening, the conversion for a referral.)"""
    if process is None:
        raise TransitionRefused(
            f"{product.value} has no sales process, so no opportunity can be opened for it", field="product"
        )
    if "amount" in process.creation_requires and amount is None:
        raise TransitionRefused(f"a {product.value} opportunity needs the desired amount", field="amount")
    return process


def check_open(state: OpportunityState) -> None:
    if state.status != OpportunityStatus.open:
        raise TransitionRefused(
            f"opportunity is {state.status.value}; nothing more can happen to it",
            status=state.status.value,
        )


def check_actor(state: OpportunityState, actor: Actor) -> None:
    if actor.id != state.owner_id and actor.role != Role.manager:
        raise TransitionRefused(
            f"only the owner ({state.owner_id}) or a manager may act on this opportunity",
            actor_id=actor.id,
        )


def _missing(stage: Stage, supplied: dict[str, Any], blank_is_missing: bool) -> list[str]:
    """The stage's evidence fields not supplied; blank text counts as not supplied (as a
    blank reason does), so "   " is no realtor. Before that rule (`blank_is_missing`
    False: workflows replaying what they did under the old rule) only "" did."""
    if not blank_is_missing:
        return [k for k in stage.evidence if supplied.get(k) in (None, "")]
    return [k for k in stage.evidence if _blank(supplied.get(k))]


def _blank(value: Any) -> bool:
    return value is None or str(value).strip() == ""


def has_blank_text(supplied: dict[str, Any]) -> bool:
    """Whether any value is blank text other than "": the only input on which `_missing`'s
    two rules (blank_is_missing or not) disagree."""
    return any(v not in (None, "") and _blank(v) for v in supplied.values())


def check_advance(
    process: ProcessDefinition, state: OpportunityState, cmd: AdvanceCommand, *, blank_is_missing: bool = True
) -> Stage:
    """A person's move to the next stage: allowed only into a manual stage, with its evidence.

    A workflow's update handler runs this again after its validator; on replay it must
    decide as it did when it ran, so a handler passes `blank_is_missing` from
    `workflow.patched` (see workflows/opportunity.py)."""
    check_open(state)
    check_actor(state, cmd.actor)
    try:
        target = process.stage(cmd.to_stage)
    except KeyError:
        raise TransitionRefused(
            f"{process.product.value} has no stage {cmd.to_stage!r}",
            stages=[s.key for s in process.stages],
        ) from None
    nxt = process.next_stage(state.stage)
    if nxt is None or nxt.key != target.key:
        raise TransitionRefused(
            f"{target.key!r} is not the next stage after {state.stage!r}",
            current_stage=state.stage,
            next_stage=nxt.key if nxt else None,
        )
    if target.entry.kind != "manual":
        how = (
            f"the event {target.entry.event.value!r}"
            if target.entry.kind == "event" and target.entry.event
            else "the customer's completed e-signature"
        )
        raise TransitionRefused(f"{target.key!r} is entered only by {how}", entered_by=target.entry.kind)
    missing = _missing(target, cmd.evidence, blank_is_missing)
    if missing:
        raise TransitionRefused(
            f"entering {target.key!r} needs evidence: {', '.join(missing)}", missing_evidence=missing
        )
    return target


def check_event(
    process: ProcessDefinition, state: OpportunityState, cmd: EventCommand, *, blank_is_missing: bool = True
) -> tuple[Literal["enter", "lose"], Stage | None]:
    """A backend event: either it enters the next stage or it closes the opportunity lost
    (`blank_is_missing`: as in `check_advance`)."""
    check_open(state)
    lost = process.lost_event(cmd.type)
    if lost is not None:
        if state.stage not in lost.from_stages:
            raise TransitionRefused(
                f"{cmd.type.value!r} applies only in stage {', '.join(lost.from_stages)}",
                current_stage=state.stage,
            )
        return "lose", None
    target = process.stage_entered_by(cmd.type)
    if target is None:
        raise TransitionRefused(
            f"{cmd.type.value!r} does not apply to a {process.product.value} opportunity",
        )
    nxt = process.next_stage(state.stage)
    if nxt is None or nxt.key != target.key:
        raise TransitionRefused(
            f"{cmd.type.value!r} enters {target.key!r}, which is not the next stage after {state.stage!r}",
            current_stage=state.stage,
        )
    missing = _missing(target, cmd.data, blank_is_missing)
    if missing:
        raise TransitionRefused(
            f"{cmd.type.value!r} lacks evidence for {target.key!r}: {', '.join(missing)}",
            missing_evidence=missing,
        )
    return "enter", target


def check_signature_outcome(
    process: ProcessDefinition, state: OpportunityState, outcome: SignatureOutcome
) -> Stage | None:
    """Returns the stage a completed signature enters (None for a decline or void)."""
    check_open(state)
    sig = state.signature
    if sig is None or sig.envelope_id != outcome.envelope_id:
        raise TransitionRefused("no such signature request is outstanding", envelope_id=outcome.envelope_id)
    if sig.status != "sent":
        raise TransitionRefused(f"the signature request is already {sig.status}", envelope_id=sig.envelope_id)
    if outcome.status != "completed":
        return None
    nxt = process.next_stage(state.stage)
    if nxt is None or nxt.entry.kind != "signature":
        raise TransitionRefused(f"no stage after {state.stage!r} is entered by signature")
    if not outcome.signer_name or not outcome.document_sha256:
        raise TransitionRefused("a completed signature needs the signer's name and the document hash")
    return nxt


#: A signature request in one of these states can be replaced by a new one.
RESENDABLE = ("declined", "voided", "expired", "undeliverable")


def check_resend(state: OpportunityState, cmd: ResendSignatureCommand) -> None:
    check_open(state)
    check_actor(state, cmd.actor)
    if state.signature is None or state.signature.status not in RESENDABLE:
        raise TransitionRefused(
            "a signature request can be resent only after it was declined, voided, expired or undeliverable",
            signature_status=state.signature.status if state.signature else None,
        )


def check_close_lost(state: OpportunityState, cmd: CloseLostCommand) -> None:
    check_open(state)
    check_actor(state, cmd.actor)
    if not cmd.reason.strip():
        raise TransitionRefused("closing lost needs a reason")


def check_transfer(state: OpportunityState, cmd: TransferOwnerCommand) -> None:
    """An open opportunity may change hands, to someone other than its owner, for a reason."""
    check_open(state)
    if cmd.to_owner_id == state.owner_id:
        raise TransitionRefused(f"the opportunity is already owned by {state.owner_id}", owner_id=state.owner_id)
    if not cmd.reason.strip():
        raise TransitionRefused("changing the owner needs a reason")


def consent_evidence(channel: ConsentChannel, data: dict[str, Any]) -> dict[str, Any]:
    """The evidence a consent keeps, per API.md's consent shape."""
    if channel == ConsentChannel.sms:
        return {k: data.get(k) for k in ("phone", "message_id", "text", "received_at")}
    return dict(data)
