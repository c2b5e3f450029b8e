"""The vocabulary of spec/API.md as enums: one definition, used everywhere."""

from __future__ import annotations

from enum import StrEnum


class Product(StrEnum):
    mortgage = "mortgage"
    checking = "checking"
    savings = "savings"
    credit_card = "credit_card"
    personal_loan = "personal_loan"
    insurance = "insurance"
    wealth = "wealth"


class Role(StrEnum):
    advisor = "advisor"
    banker = "banker"
    mortgage_broker = "mortgage_broker"
    insurance_agent = "insurance_agent"
    manager = "manager"


class LineOfBusiness(StrEnum):
    retail = "retail"
    mortgage = "mortgage"
    wealth = "wealth"
    insurance = "insurance"


class InteractionChannel(StrEnum):
    chatbot = "chatbot"
    call = "call"
    email = "email"
    sms = "sms"
    app = "app"
    branch = "branch"
    meeting = "meeting"


class ConsentChannel(StrEnum):
    sms = "sms"
    esignature = "esignature"
    branch = "branch"


class OpportunityStatus(StrEnum):
    open = "open"
    won = "won"
    lost = "lost"


class Trigger(StrEnum):
    manual = "manual"
    event = "event"


class EventType(StrEnum):
    mortgage_application_submitted = "mortgage.application_submitted"
    mortgage_application_approved = "mortgage.application_approved"
    mortgage_application_declined = "mortgage.application_declined"
    consent_sms_authorization = "consent.sms_authorization"
    account_opened = "account.opened"
    nps_response = "nps.response"
    account_activity = "account.activity"
    mortgage_payment = "mortgage.payment"
