"""What each backend event's `data` holds (`POST /v1/events`, spec/API.md "Events").

Closed per type: a key the type does not define is refused (422 naming `data.<key>`), so
nothing a backend system sends rides into a checkpoint's evidence, a consent or a workflow
input unchecked. Every value is one of the kinds of domain/validation.py, bounded as
evidence is (an event's data becomes the evidence of the stage it enters).

The process files name, for a stage an event enters, the evidence its data must carry, and
for a lost event the field holding its reason; domain/process.py checks at load that each
is a field of the event's data here, since a stage whose evidence its event cannot carry
could never be entered.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from domain.types import EventType, Product
from domain.validation import EVIDENCE_CHARS, Count, Ident, Money, line, text

#: A backend system's reference (an application's id, a message's id): one line.
Reference = line(EVIDENCE_CHARS)
#: Free text a backend system relays (a decline's reason, an SMS, a comment).
Relayed = text(EVIDENCE_CHARS)
#: A calendar date as text (`2026-11-25`), or a date-time with its offset.
DateText = line(10, pattern=r"^\d{4}-\d{2}-\d{2}$")
#: A calendar month as text (`2026-11`).
Month = line(7, pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
Phone = line(40, min_length=3)


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApplicationSubmitted(EventData):
    application_id: Reference


class ApplicationApproved(EventData):
    approval_id: Reference
    approved_amount: Money | None = None


class ApplicationDeclined(EventData):
    reason: Relayed


class SmsAuthorization(EventData):
    phone: Phone
    message_id: Reference
    text: Relayed
    received_at: AwareDatetime


class AccountOpened(EventData):
    account_number: Reference


class NpsResponse(EventData):
    score: int = Field(ge=0, le=10)
    comment: Relayed | None = None


class AccountActivity(EventData):
    product: Product
    period: Month
    transactions: Count


class MortgagePayment(EventData):
    opportunity_id: Ident
    due_date: AwareDatetime | DateText
    paid_date: AwareDatetime | DateText
    amount: Money


Subject = Literal["opportunity_id", "customer_id"]

#: Each event type's data, and whether its subject is an opportunity or a customer.
EVENT_DATA: dict[EventType, tuple[type[EventData], Subject]] = {
    EventType.mortgage_application_submitted: (ApplicationSubmitted, "opportunity_id"),
    EventType.mortgage_application_approved: (ApplicationApproved, "opportunity_id"),
    EventType.mortgage_application_declined: (ApplicationDeclined, "opportunity_id"),
    EventType.consent_sms_authorization: (SmsAuthorization, "opportunity_id"),
    EventType.account_opened: (AccountOpened, "opportunity_id"),
    EventType.nps_response: (NpsResponse, "customer_id"),
    EventType.account_activity: (AccountActivity, "customer_id"),
    EventType.mortgage_payment: (MortgagePayment, "customer_id"),
}


def data_fields(event: EventType) -> frozenset[str]:
    """The keys an event of this type's data may hold."""
    return frozenset(EVENT_DATA[event][0].model_fields)
