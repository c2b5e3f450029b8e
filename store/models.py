"""SQLAlchemy 2.0 typed models. `migrations/` is built from this metadata; a test fails
when the two disagree."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database (SQLite keeps no offset of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDoc = JSON().with_variant(JSONB(), "postgresql")
Money = Numeric(14, 2)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONDoc, list[str]: JSONDoc, Decimal: Money}


class Imported:
    """What an import (`POST /v1/imports`, store/imports.py) marks a record with: the
    system it came from and its id there (None for records made in needflow). Unique per
    (source, external_id) on each imported kind."""

    source: Mapped[str | None] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(128))


def _imported(table: str) -> UniqueConstraint:
    return UniqueConstraint("source", "external_id", name=f"uq_{table}_source_external_id")


class Household(Imported, Base):
    __tablename__ = "households"
    __table_args__ = (_imported("households"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Customer(Imported, Base):
    __tablename__ = "customers"
    __table_args__ = (_imported("customers"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    household_id: Mapped[str] = mapped_column(ForeignKey("households.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(40))
    employer: Mapped[str | None] = mapped_column(String(200))
    city: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Employee(Imported, Base):
    __tablename__ = "employees"
    __table_args__ = (_imported("employees"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(32))
    line_of_business: Mapped[str] = mapped_column(String(32))
    products: Mapped[list[str]] = mapped_column(default=list)
    cities: Mapped[list[str]] = mapped_column(default=list)
    states: Mapped[list[str]] = mapped_column(default=list)
    capacity: Mapped[int] = mapped_column(Integer)
    manager_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: An inactive employee (left the bank) is never routed to and acts on nothing.
    active: Mapped[bool] = mapped_column(default=True, server_default=true())


class Need(Imported, Base):
    __tablename__ = "needs"
    __table_args__ = (_imported("needs"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Interaction(Base):
    __tablename__ = "interactions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    employee_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"))
    summary: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class Opportunity(Imported, Base):
    """The durable, queryable record of one OpportunityWorkflow (which owns the state)."""

    __tablename__ = "opportunities"
    __table_args__ = (
        _imported("opportunities"),
        # When it was won or lost is `closed_at`, on every decided row (migration 0014).
        CheckConstraint("(status = 'open') = (closed_at IS NULL)", name="closed_at_when_decided"),
        Index(
            "ix_opportunities_audit_stale_opened_at",
            "opened_at",
            postgresql_where=text("audit_stale"),
            sqlite_where=text("audit_stale"),
        ),
        # The scorecards' "their customers" (store/scorecards.py): per owner, in order (the
        # opportunity figures), and from a month's responders and active customers to their
        # owners; both read from the index alone on PostgreSQL.
        Index(
            "ix_opportunities_won_owner_customer",
            "owner_id",
            "customer_id",
            "closed_at",
            postgresql_where=text("status = 'won'"),
            sqlite_where=text("status = 'won'"),
            postgresql_include=["amount"],
        ),
        Index(
            "ix_opportunities_won_customer_owner",
            "customer_id",
            "owner_id",
            "closed_at",
            postgresql_where=text("status = 'won'"),
            sqlite_where=text("status = 'won'"),
            postgresql_include=["amount"],
        ),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    product: Mapped[str] = mapped_column(String(32))
    process_version: Mapped[int] = mapped_column(Integer)
    owner_id: Mapped[str] = mapped_column(ForeignKey("employees.id"), index=True)
    #: None only for an imported opportunity its old system recorded no need for.
    need_id: Mapped[str | None] = mapped_column(ForeignKey("needs.id"))
    amount: Mapped[Decimal | None] = mapped_column()
    referral_id: Mapped[str | None] = mapped_column(String(64))
    campaign_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stage: Mapped[str] = mapped_column(String(64))
    probability: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    lost_reason: Mapped[str | None] = mapped_column(Text)
    #: The seq of the last checkpoint applied to this row (guards against stale writes).
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    workflow_id: Mapped[str] = mapped_column(String(128))
    #: Indexed: the practice audit selects by it (bench/bench_bank_scale.py).
    opened_at: Mapped[datetime] = mapped_column(index=True)
    closed_at: Mapped[datetime | None] = mapped_column()
    #: True until store/audit_findings.py has judged this opportunity's record as it now
    #: stands; every write that changes what the rules read sets it again. The practice
    #: audit judges a stale opportunity on the spot, so a stale one is only slower.
    audit_stale: Mapped[bool] = mapped_column(default=True, server_default=true())

    checkpoints: Mapped[list[Checkpoint]] = relationship(order_by="Checkpoint.seq", lazy="raise", viewonly=True)


class OwnerChange(Base):
    """Append-only: an opportunity handed from one owner to another (the previous owner
    left the bank, or a manager moved it), with who did it and why."""

    __tablename__ = "opportunity_owner_changes"
    __table_args__ = (UniqueConstraint("opportunity_id", "seq", name="uq_owner_changes_opportunity_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    opportunity_id: Mapped[str] = mapped_column(ForeignKey("opportunities.id"), index=True)
    #: 1, 2, … per opportunity: the workflow numbers them, so a retried write is one row.
    seq: Mapped[int] = mapped_column(Integer)
    from_owner_id: Mapped[str] = mapped_column(String(64))
    to_owner_id: Mapped[str] = mapped_column(ForeignKey("employees.id"))
    at: Mapped[datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(256))
    via: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)


class Checkpoint(Base):
    """Append-only: one row per stage change, never updated or deleted."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("opportunity_id", "seq", name="uq_checkpoints_opportunity_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    opportunity_id: Mapped[str] = mapped_column(ForeignKey("opportunities.id"))
    seq: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(64))
    entered_at: Mapped[datetime] = mapped_column()
    trigger: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(256))
    #: The API key (its name) the change came through; None for the workflow's own moves.
    via: Mapped[str | None] = mapped_column(String(200))
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Referral(Base):
    """The durable, queryable record of one ReferralWorkflow (which owns the state)."""

    __tablename__ = "referrals"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    referrer_type: Mapped[str] = mapped_column(String(16))
    referrer_id: Mapped[str] = mapped_column(String(64), index=True)
    referrer_line_of_business: Mapped[str | None] = mapped_column(String(32))
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), index=True)
    prospect: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    expressed_interest: Mapped[str] = mapped_column(String(32))
    value: Mapped[Decimal | None] = mapped_column()
    notes: Mapped[str | None] = mapped_column(Text)
    city: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str | None] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(32))
    assignee_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"), index=True)
    queue: Mapped[str | None] = mapped_column(String(100))
    routing_rule: Mapped[str | None] = mapped_column(String(100))
    routing_reason: Mapped[str | None] = mapped_column(Text)
    lead_score: Mapped[int] = mapped_column(Integer)
    lead_score_factors: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, default=list)
    #: The lead's features as scored: what the lead model learns from once decided.
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sla_deadline: Mapped[datetime | None] = mapped_column()
    close_reason: Mapped[str | None] = mapped_column(Text)
    opportunity_id: Mapped[str | None] = mapped_column(String(64))
    workflow_id: Mapped[str] = mapped_column(String(128))
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    #: Indexed: the reports' windows and age bands select by it (bench/bench_bank_scale.py).
    created_at: Mapped[datetime] = mapped_column(index=True)
    assigned_at: Mapped[datetime | None] = mapped_column()
    accepted_at: Mapped[datetime | None] = mapped_column()
    decided_at: Mapped[datetime | None] = mapped_column(index=True)


class ReferralHistory(Base):
    """Append-only: every status change of a referral, with who and why."""

    __tablename__ = "referral_history"
    __table_args__ = (UniqueConstraint("referral_id", "seq", name="uq_referral_history_referral_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(256))
    #: The API key (its name) the change came through; None for the workflow's own moves.
    via: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    assignee_id: Mapped[str | None] = mapped_column(String(64), index=True)


class EmployeeWorkload(Base):
    """Each employee's open referrals (assigned or accepted) and last assignment, kept by
    the referral activities in the same transactions that change a referral's assignee or
    status, so routing reads one small table instead of counting referrals."""

    __tablename__ = "employee_workload"
    employee_id: Mapped[str] = mapped_column(ForeignKey("employees.id"), primary_key=True)
    open_referrals: Mapped[int] = mapped_column(Integer, default=0)
    last_assigned_at: Mapped[datetime | None] = mapped_column()


class TeamVersion(Base):
    """One row whose `version` the database raises on every write to `employees` (triggers,
    migration 0013): routing's team cache is still the team while it reads the same number."""

    __tablename__ = "team_version"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class LeadFeatureCount(Base):
    """The lead-scoring model: won/lost counts per feature value, updated as referrals are
    decided. The row (feature "*", value "*") holds the totals."""

    __tablename__ = "lead_feature_counts"
    feature: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128), primary_key=True)
    won: Mapped[int] = mapped_column(Integer, default=0)
    lost: Mapped[int] = mapped_column(Integer, default=0)


class Consent(Imported, Base):
    __tablename__ = "consents"
    __table_args__ = (_imported("consents"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    opportunity_id: Mapped[str | None] = mapped_column(ForeignKey("opportunities.id"), index=True)
    product: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    granted_at: Mapped[datetime] = mapped_column()
    #: Who recorded it (an employee, or the system that brought the customer's word) and
    #: through which API key.
    actor: Mapped[str | None] = mapped_column(String(256))
    via: Mapped[str | None] = mapped_column(String(200))
    #: A withdrawn consent stays on record, marked with when and why.
    withdrawn_at: Mapped[datetime | None] = mapped_column()
    withdrawn_reason: Mapped[str | None] = mapped_column(Text)
    withdrawn_by: Mapped[str | None] = mapped_column(String(256))


class SignatureRequest(Base):
    """One envelope sent for e-signature. The document itself lives here, not in histories."""

    __tablename__ = "signature_requests"
    envelope_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    opportunity_id: Mapped[str] = mapped_column(ForeignKey("opportunities.id"), index=True)
    request_no: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(200))
    document_html: Mapped[str | None] = mapped_column(Text)
    document_sha256: Mapped[str] = mapped_column(String(64))
    #: Local provider only: sha256 of the single-use signing token. The link itself is
    #: never stored: it went to the customer by e-mail.
    token_sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    #: Local provider only: when the link stops working.
    expires_at: Mapped[datetime | None] = mapped_column()
    signer_name: Mapped[str | None] = mapped_column(String(200))
    client_address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (UniqueConstraint("opportunity_id", "request_no", name="uq_signature_requests_opportunity_no"),)


class ProcessedEvent(Base):
    """Every backend event needflow has taken, by its id: the same id twice is a duplicate."""

    __tablename__ = "processed_events"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventClaim(Base):
    """Who delivers an opportunity's event first: the API claims the event id before it
    asks the workflow (whose Update, keyed by the same id, applies it once whoever asks).
    Only the claimant answers `applied`; every concurrent or later copy answers
    `duplicate`, and a copy with another body `409 conflict` (api/routers/events.py).
    A claim whose update the workflow refused is removed, so the id stays free."""

    __tablename__ = "event_claims"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(64))
    body_sha256: Mapped[str] = mapped_column(String(64))
    #: Indexed: claims older than the retention are purged (processed_events answers then).
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class CustomerSignal(Base):
    """Scorecard inputs about a customer (NPS, account activity, payments): `data` as
    received, and beside it what the scorecards read of it (`domain.customer_health.
    signal_facts`, written with the row), so that a month is an index range."""

    __tablename__ = "customer_signals"
    #: The scorecards read one type within a month (store/scorecards.py).
    __table_args__ = (
        Index("ix_customer_signals_type_occurred_at", "type", "occurred_at"),
        Index("ix_customer_signals_type_month", "type", "month"),
    )
    event_id: Mapped[str] = mapped_column(ForeignKey("processed_events.id"), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    type: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[datetime] = mapped_column()
    #: When needflow received it (its `ProcessedEvent.processed_at`): of two NPS responses
    #: occurring at one instant, the one received last counts.
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: `SignalFacts` (the columns below are null where the event's type has no such fact).
    month: Mapped[str] = mapped_column(String(7))
    score: Mapped[int | None] = mapped_column(Integer)
    transactions: Mapped[int | None] = mapped_column(Integer)
    opportunity_id: Mapped[str | None] = mapped_column(String(64))
    on_time: Mapped[bool | None] = mapped_column()


class SignedDocument(Base):
    """A completed envelope's documents as the provider served them (DocuSign: the
    combined signed PDF and the certificate of completion): the consent's evidence, kept
    in the system of record, never in workflow history. Written once per envelope and kind."""

    __tablename__ = "signed_documents"
    envelope_id: Mapped[str] = mapped_column(ForeignKey("signature_requests.envelope_id"), primary_key=True)
    #: `combined` or `certificate`.
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Notification(Base):
    """The outbox: one e-mail to one recipient, recorded in the transaction of the change
    it tells of (`activities.mail.Mailer.record`) and delivered over SMTP by the sender
    (`activities.mail.MailSender`); `domain/mail.py` defines its statuses."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_created_at", "status", "created_at"),)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    to_employee_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"))
    to_address: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()
    #: `pending`, `sending`, `sent`, `failed` or `unknown` (domain/mail.py).
    status: Mapped[str] = mapped_column(String(16), default="pending", server_default="pending")
    #: Attempts that reached the recipient (a round that could not reach the server counts none).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: When a pending message is due (its next attempt after a temporary failure).
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The last SMTP reply or error of a failed, retried or unknown attempt.
    last_error: Mapped[str | None] = mapped_column(Text)
    #: The attempt that claimed it (`sending`) and how long that claim holds: a message
    #: still `sending` after its lease is marked `unknown`, never sent again.
    attempt_id: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(default=list)
    #: A key bound to an employee acts only as that employee.
    employee_id: Mapped[str | None] = mapped_column(ForeignKey("employees.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class IdempotencyRecord(Base):
    """The first response to a request sent with an Idempotency-Key, replayed on repeats."""

    __tablename__ = "idempotency_keys"
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    #: The response body exactly as first sent (JSON text), so a replay is byte-identical.
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_checkpoints_opportunity_id", Checkpoint.opportunity_id)


class Campaign(Base):
    """A sales campaign (seed 002): a goal that is never a count of one product's sales, and
    the prequalification rules (data, validated by domain/campaigns.py) a customer must pass
    before a campaign opportunity is opened for them."""

    __tablename__ = "campaigns"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    starts_on: Mapped[date] = mapped_column()
    ends_on: Mapped[date] = mapped_column()
    #: `new_households`, `cross_sell_ratio` or `product_line_units`.
    goal_metric: Mapped[str] = mapped_column(String(32))
    #: A count, or a fraction 0–1 for `cross_sell_ratio`.
    goal_target: Mapped[Decimal] = mapped_column(Numeric(12, 4))
    #: For `product_line_units` only: the line whose products count.
    goal_line_of_business: Mapped[str | None] = mapped_column(String(32))
    #: The rules, as written: `[{"has_need": "buy_home"}, {"state_in": ["NY"]}]`.
    prequalification: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The API key (its name) it was created through.
    created_via: Mapped[str | None] = mapped_column(String(200))


class Prequalification(Base):
    """Append-only: one customer checked against one campaign's rules, with every rule's
    outcome. The latest one decides whether a campaign opportunity may open for them."""

    __tablename__ = "prequalifications"
    __table_args__ = (Index("ix_prequalifications_campaign_customer_at", "campaign_id", "customer_id", "at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.id"))
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    qualified: Mapped[bool] = mapped_column()
    #: Each rule's outcome: `[{"rule": {...}, "passed": bool, "message": str}]`.
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSONDoc, default=list)
    at: Mapped[datetime] = mapped_column()
    #: The employee who prequalified the customer, and the API key it came through.
    actor: Mapped[str] = mapped_column(String(256))
    via: Mapped[str | None] = mapped_column(String(200))


class AuditFinding(Base):
    """Derived, never a record of its own: one rule of the practice audit an opportunity
    breaks, with the sentence a manager reads, as `store.audit.findings` judged the
    opportunity's record when it last changed (store/audit_findings.py keeps these rows in
    the transaction of every such change). The report reads them instead of judging a
    quarter of a million records per request; `owner_id`, `product` and `opened_at` are
    copied from the opportunity so that its filters are one index range."""

    __tablename__ = "audit_findings"
    __table_args__ = (
        Index("ix_audit_findings_opened_at_opportunity_id", "opened_at", "opportunity_id"),
        Index("ix_audit_findings_owner_id_opened_at", "owner_id", "opened_at"),
    )
    opportunity_id: Mapped[str] = mapped_column(ForeignKey("opportunities.id"), primary_key=True)
    rule: Mapped[str] = mapped_column(String(40), primary_key=True)
    detail: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[str] = mapped_column(String(64))
    product: Mapped[str] = mapped_column(String(32))
    opened_at: Mapped[datetime] = mapped_column()
