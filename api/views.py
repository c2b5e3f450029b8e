"""Rows of the system of record → the answers of spec/API.md."""

from __future__ import annotations

from api.schemas import (
    CheckpointOut,
    ConsentOut,
    CustomerOut,
    EmployeeOut,
    InteractionOut,
    JourneyOut,
    NeedOut,
    OpportunityOut,
    OpportunityReview,
    OutboxItem,
    ReferralOut,
    SignatureOut,
)
from store.audit import Review
from store.models import Consent, Customer, Employee, Interaction, Need, Notification
from store.queries import Journey, OpportunityRecord, ReferralRecord


def customer_out(c: Customer) -> CustomerOut:
    return CustomerOut.model_validate(c, from_attributes=True)


def need_out(n: Need) -> NeedOut:
    return NeedOut.model_validate(n, from_attributes=True)


def interaction_out(i: Interaction) -> InteractionOut:
    return InteractionOut.model_validate(i, from_attributes=True)


def employee_out(e: Employee) -> EmployeeOut:
    return EmployeeOut.model_validate(e, from_attributes=True)


def consent_out(c: Consent) -> ConsentOut:
    return ConsentOut.model_validate(c, from_attributes=True)


def opportunity_out(rec: OpportunityRecord) -> OpportunityOut:
    o, sig = rec.opportunity, rec.signature
    return OpportunityOut(
        id=o.id,
        customer_id=o.customer_id,
        product=o.product,
        process_version=o.process_version,
        owner_id=o.owner_id,
        need_id=o.need_id,
        amount=o.amount,
        stage=o.stage,
        probability=o.probability,
        status=o.status,  # type: ignore[arg-type]
        lost_reason=o.lost_reason,
        referral_id=o.referral_id,
        campaign_id=o.campaign_id,
        checkpoints=[
            CheckpointOut(
                stage=c.stage,
                entered_at=c.entered_at,
                trigger=c.trigger,  # type: ignore[arg-type]
                actor=c.actor,
                via=c.via,
                evidence=c.evidence,
            )
            for c in rec.checkpoints
        ],
        signature=(
            SignatureOut(
                provider=sig.provider,
                envelope_id=sig.envelope_id,
                status=sig.status,
                document_sha256=sig.document_sha256,
                expires_at=sig.expires_at,
            )
            if sig
            else None
        ),
        workflow_id=o.workflow_id,
        opened_at=o.opened_at,
        closed_at=o.closed_at,
    )


def referral_out(rec: ReferralRecord) -> ReferralOut:
    r = rec.referral
    return ReferralOut(
        id=r.id,
        status=r.status,  # type: ignore[arg-type]
        referrer={"type": r.referrer_type, "id": r.referrer_id},
        customer_id=r.customer_id,
        prospect=r.prospect,
        expressed_interest=r.expressed_interest,
        value=r.value,
        notes=r.notes,
        assignee_id=r.assignee_id,
        queue=r.queue,
        lead_score=r.lead_score,
        lead_score_factors=r.lead_score_factors,  # type: ignore[arg-type]
        referrer_score=rec.referrer_score,
        priority=rec.priority,
        sla_deadline=r.sla_deadline,
        created_at=r.created_at,
        history=[
            {
                "status": h.status,
                "at": h.at,
                "actor": h.actor,
                "via": h.via,
                "note": h.note,
                "assignee_id": h.assignee_id,
            }  # type: ignore[misc]
            for h in rec.history
        ],
        close_reason=r.close_reason,
        opportunity_id=r.opportunity_id,
        workflow_id=r.workflow_id,
    )


def outbox_item(n: Notification) -> OutboxItem:
    return OutboxItem.model_validate(n, from_attributes=True)


def journey_out(j: Journey, referrals: list[ReferralRecord], review: list[Review]) -> JourneyOut:
    return JourneyOut(
        customer=customer_out(j.customer),
        needs=[need_out(n) for n in j.needs],
        interactions=[interaction_out(i) for i in j.interactions],
        referrals=[referral_out(r) for r in referrals],
        opportunities=[opportunity_out(r) for r in j.opportunities],
        consents=[consent_out(c) for c in j.consents],
        review=[OpportunityReview.model_validate(r, from_attributes=True) for r in review],
    )
