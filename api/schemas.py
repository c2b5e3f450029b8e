"""Request bodies and answers of spec/API.md as pydantic models (they make /openapi.json)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

from domain.campaigns import CampaignGoal, PrequalificationRule
from domain.types import ConsentChannel, EventType, InteractionChannel, LineOfBusiness, Product, Role
from domain.validation import (
    EVIDENCE_KEYS,
    Email,
    Evidence,
    Ident,
    Label,
    Money,
    Name,
    Phone,
    Place,
    Text,
    line,
    text,
)
from store.keys import ALL_SCOPES

# Every string a request takes is one of domain/validation.py's kinds, which refuse control
# characters (free text may hold line breaks and tabs): tests/test_poison_input.py checks
# that no request model here has a plain `str`.
Id = Ident
#: The employee a command is made for. A key bound to an employee may leave it out (it
#: acts as its employee); an unbound key must name one and needs `crm:act-as`.
ActorId = Id | None
#: A referral's notes: free text, up to 4,000 characters, may be blank.
Notes = text(4000, min_length=0)
#: The channel a referral came through (branch, app, partner portal, ...).
Source = line(32)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- customers & co


class CustomerCreate(Body):
    name: Name
    email: Email | None = None
    phone: Phone | None = None
    employer: Name | None = None
    city: Place | None = None
    state: Place | None = None
    household_id: Id | None = None


class CustomerOut(BaseModel):
    id: str
    household_id: str
    name: str
    email: str | None
    phone: str | None
    employer: str | None
    city: str | None
    state: str | None
    created_at: datetime


class NeedCreate(Body):
    kind: Label
    description: Text
    recorded_by: Id


class NeedOut(BaseModel):
    id: str
    customer_id: str
    kind: str
    description: str
    recorded_by: str
    recorded_at: datetime


class InteractionCreate(Body):
    channel: InteractionChannel
    employee_id: Id | None = None
    summary: Text
    occurred_at: AwareDatetime | None = None


class InteractionOut(BaseModel):
    id: str
    customer_id: str
    channel: str
    employee_id: str | None
    summary: str
    occurred_at: datetime


class EmployeeCreate(Body):
    id: Id | None = None
    name: Name
    email: Email
    role: Role
    line_of_business: LineOfBusiness
    products: list[Product] = Field(default_factory=list)
    cities: list[Place] = Field(default_factory=list)
    states: list[Place] = Field(default_factory=list)
    capacity: int = Field(ge=0, le=10_000)
    manager_id: Id | None = None


class EmployeeUpdate(Body):
    """PATCH /v1/employees/{id}: only the fields sent change (`manager_id: null` removes
    the manager; the others may be left out, not nulled). `active: false` deactivates:
    see api/deactivation.py. Reactivating (`active: true`) revives no revoked key."""

    capacity: int | None = Field(default=None, ge=0, le=10_000)
    products: list[Product] | None = None
    cities: list[Place] | None = None
    states: list[Place] | None = None
    manager_id: Id | None = None
    active: bool | None = None

    @field_validator("capacity", "products", "cities", "states", "active")
    @classmethod
    def _not_null(cls, v: object) -> object:
        # Runs only for a value sent (a default is not validated): null is refused here.
        if v is None:
            raise ValueError("may be left out, but not null")
        return v

    @model_validator(mode="after")
    def _something(self) -> EmployeeUpdate:
        if not self.model_fields_set:
            raise ValueError("name at least one field to change")
        return self


Scope = Literal[ALL_SCOPES]  # type: ignore[valid-type]  # the one list of scopes, in store/keys.py


class ApiKeyCreate(Body):
    name: Name
    scopes: list[Scope] = Field(min_length=1, max_length=5)
    #: Bind the key to this employee: it then acts as them and no one else.
    employee_id: Id | None = None


class ApiKeyOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    employee_id: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyIssued(ApiKeyOut):
    #: The key itself: shown this once, stored only as its SHA-256.
    key: str


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class EmployeeOut(BaseModel):
    id: str
    name: str
    email: str
    role: str
    line_of_business: str
    products: list[str]
    cities: list[str]
    states: list[str]
    capacity: int
    manager_id: str | None
    #: False once deactivated: never routed to, acts on nothing, its keys revoked.
    active: bool


class DeactivationOut(BaseModel):
    """What deactivating the employee did in this request (a repeat finishes what an
    earlier one left undone, and reports only that), and what it left where it is."""

    #: Their API keys revoked now.
    keys_revoked: int
    #: Their open referrals taken from them now and re-routed.
    referrals_released: list[str]
    #: Open referrals still with them (one was in the middle of a move): repeat the PATCH.
    referrals_left: list[str]
    #: Who their open opportunities went to: their manager, if they have an active one.
    transferred_to: str | None
    #: Their open opportunities given to `transferred_to` now.
    opportunities_transferred: list[str]
    #: Their open opportunities that stay theirs (no active manager to take them).
    opportunities_kept: list[str]
    #: The employees told by e-mail (their manager; without one, the territory's managers).
    notified: list[str]
    #: For a person: what happened, and what is left to do.
    note: str


class EmployeeUpdated(EmployeeOut):
    #: Set when the request deactivated the employee (`active: false`).
    deactivation: DeactivationOut | None = None


# ---------------------------------------------------------------- referrals


class ReferrerIn(Body):
    type: Literal["employee", "partner", "customer"]
    id: Id


class ProspectIn(Body):
    name: Name
    phone: Phone | None = None
    email: Email | None = None
    employer: Name | None = None
    city: Place | None = None
    state: Place | None = None


class ReferralCreate(Body):
    referrer: ReferrerIn
    customer_id: Id | None = None
    prospect: ProspectIn | None = None
    expressed_interest: Product
    value: Money | None = None
    notes: Notes | None = None
    #: The channel it came through (branch, app, partner portal, ...); default: the referrer's type.
    source: Source | None = None


class Reject(Body):
    actor_id: ActorId = None
    reason: Text


class Reassign(Body):
    actor_id: ActorId = None
    to_employee_id: Id
    reason: Text | None = None


class NeedIn(Body):
    kind: Label
    description: Text


class Convert(Body):
    actor_id: ActorId = None
    amount: Money | None = None
    need: NeedIn


class CloseReferral(Body):
    actor_id: ActorId = None
    reason: Text


class FactorOut(BaseModel):
    feature: str
    value: str
    effect: Literal["raises", "lowers"]
    weight: float


class HistoryOut(BaseModel):
    status: str
    at: datetime
    actor: str
    via: str | None = None
    note: str | None = None
    assignee_id: str | None = None


class ReferralOut(BaseModel):
    id: str
    status: Literal["assigned", "unassigned", "accepted", "converted", "closed"]
    referrer: dict[str, str]
    customer_id: str | None = None
    prospect: dict[str, Any] | None = None
    expressed_interest: str
    value: Money | None = None
    notes: str | None = None
    assignee_id: str | None = None
    queue: str | None = None
    lead_score: int
    lead_score_factors: list[FactorOut]
    referrer_score: int
    priority: float
    sla_deadline: datetime | None = None
    created_at: datetime
    history: list[HistoryOut]
    close_reason: str | None = None
    opportunity_id: str | None = None
    workflow_id: str


class ReferralList(BaseModel):
    items: list[ReferralOut]


class OutboxItem(BaseModel):
    id: str
    to_employee_id: str | None
    to_address: str
    subject: str
    body: str
    created_at: datetime
    sent_at: datetime | None
    #: `pending`, `sending`, `sent`, `failed` or `unknown` (domain/mail.py).
    status: str
    #: Attempts that reached the recipient, and the last SMTP reply or error of one that failed.
    attempts: int
    last_error: str | None
    #: When a pending message is next tried.
    next_attempt_at: datetime | None


class OutboxList(BaseModel):
    items: list[OutboxItem]


# ---------------------------------------------------------------- opportunities


class OpportunityCreate(Body):
    customer_id: Id
    product: Product
    owner_id: Id
    need_id: Id
    amount: Money | None = None
    referral_id: Id | None = None
    campaign_id: Id | None = None


class Advance(Body):
    actor_id: ActorId = None
    to_stage: Label
    #: At most 20 keys, each value at most 2,000 characters (domain/validation.py `Evidence`).
    evidence: Evidence = Field(default_factory=dict)


class CloseLost(Body):
    actor_id: ActorId = None
    reason: Text


class ActorOnly(Body):
    actor_id: ActorId = None


class CheckpointOut(BaseModel):
    stage: str
    entered_at: datetime
    trigger: Literal["manual", "event"]
    actor: str
    via: str | None = None
    evidence: dict[str, Any]


class SignatureOut(BaseModel):
    """An e-signature request. Its link is not here: it reached the customer only."""

    provider: str
    envelope_id: str
    status: Literal["sent", "completed", "declined", "voided", "expired", "undeliverable"]
    document_sha256: str
    #: When a link of needflow's own signing page stops working.
    expires_at: datetime | None = None


class OpportunityOut(BaseModel):
    id: str
    customer_id: str
    product: str
    process_version: int
    owner_id: str
    #: None only for an imported opportunity its old system recorded no need for.
    need_id: str | None
    amount: Money | None
    stage: str
    probability: int
    status: Literal["open", "won", "lost"]
    lost_reason: str | None = None
    referral_id: str | None = None
    campaign_id: str | None = None
    checkpoints: list[CheckpointOut]
    signature: SignatureOut | None = None
    workflow_id: str
    opened_at: datetime
    closed_at: datetime | None = None


class ConsentOut(BaseModel):
    id: str
    customer_id: str
    opportunity_id: str | None
    product: str
    channel: ConsentChannel
    evidence: dict[str, Any]
    granted_at: datetime
    actor: str | None = None
    via: str | None = None
    #: A withdrawn consent stays on record: when, why and by whom it was withdrawn.
    withdrawn_at: datetime | None = None
    withdrawn_reason: str | None = None
    withdrawn_by: str | None = None


class BranchConsentCreate(Body):
    """A consent given in branch: the employee acting (`actor_id`) is its witness."""

    actor_id: ActorId = None
    product: Product
    #: Only `branch` here: SMS and e-signature consents arrive as events and signatures.
    channel: Literal["branch"]
    opportunity_id: Id | None = None
    #: What was signed: `document_id` (the signed form, as the branch files it) and any
    #: other facts, as text.
    evidence: Evidence

    @field_validator("evidence")
    @classmethod
    def _document(cls, v: dict[str, str]) -> dict[str, str]:
        if not v.get("document_id", "").strip():
            raise ValueError("a branch consent needs evidence.document_id: the signed form")
        return v


class ConsentWithdraw(Body):
    actor_id: ActorId = None
    reason: Text


#: The practice audit's rules (store/audit.py defines each).
AuditRule = Literal[
    "campaign_not_prequalified", "consent_missing", "evidence_missing", "need_after_opportunity", "stage_out_of_order"
]


class OpportunityReview(BaseModel):
    """Kevin's three questions about one opportunity, and the audit rules it breaks."""

    opportunity_id: str
    product: str
    consent: bool
    need_before_sale: bool
    all_checkpoints: bool
    exceptions: list[AuditRule]


class JourneyOut(BaseModel):
    customer: CustomerOut
    needs: list[NeedOut]
    interactions: list[InteractionOut]
    referrals: list[ReferralOut]
    opportunities: list[OpportunityOut]
    consents: list[ConsentOut]
    review: list[OpportunityReview]


# ---------------------------------------------------------------- campaigns


class CampaignCreate(Body):
    """A campaign: its goal and prequalification rules are domain/campaigns.py's models,
    validated there (a 422 names the field: `goal.metric`, `prequalification.2.state_in`)."""

    name: Name
    starts_on: date
    ends_on: date
    goal: CampaignGoal
    #: All must hold; each is exactly one of has_need, has_product, lacks_product, state_in.
    prequalification: list[PrequalificationRule] = Field(min_length=1, max_length=50)

    @field_validator("ends_on")
    @classmethod
    def _ends_after_start(cls, v: date, info: ValidationInfo) -> date:
        starts = info.data.get("starts_on")
        if starts is not None and v < starts:
            raise ValueError(f"the campaign ends ({v}) before it starts ({starts})")
        return v


class GoalOut(BaseModel):
    metric: str
    #: A count, or a fraction 0–1 for `cross_sell_ratio`.
    target: int | float
    line_of_business: str | None = None


class CampaignOut(BaseModel):
    id: str
    name: str
    starts_on: date
    ends_on: date
    goal: GoalOut
    #: The rules as written: `[{"has_need": "buy_home"}, {"state_in": ["NY"]}]`.
    prequalification: list[dict[str, Any]]
    created_at: datetime
    created_via: str | None = None


class ProgressOut(BaseModel):
    """Definitions: store/campaigns.py."""

    metric: str
    #: A count, or for `cross_sell_ratio` a fraction 0–1.
    value: int | float
    target: int | float
    #: The campaign's won opportunities so far.
    won: int


class CampaignProgressOut(CampaignOut):
    progress: ProgressOut


class PrequalifyIn(Body):
    customer_id: Id
    actor_id: ActorId = None


class ReasonOut(BaseModel):
    rule: dict[str, Any]
    passed: bool
    message: str


class PrequalificationOut(BaseModel):
    id: str
    campaign_id: str
    customer_id: str
    qualified: bool
    reasons: list[ReasonOut]
    at: datetime
    actor: str
    via: str | None = None


# ---------------------------------------------------------------- events


#: An event's id, as its backend system made it (one line).
EventId = line(128)


class EventIn(Body):
    id: EventId
    type: EventType
    occurred_at: AwareDatetime
    opportunity_id: Id | None = None
    customer_id: Id | None = None
    #: Closed per type (domain/events.py: the keys of each type's data, each value's kind);
    #: no more keys than evidence may hold.
    data: dict[str, Any] = Field(default_factory=dict, max_length=EVIDENCE_KEYS)


class EventOut(BaseModel):
    id: str
    result: Literal["applied", "duplicate"]
    opportunity: OpportunityOut | None = None
    customer_id: str | None = None


# ---------------------------------------------------------------- reports

#: A total of money as a decimal string ("1250000.00"); may be 0.
MoneyTotal = Annotated[Decimal, PlainSerializer(lambda d: f"{d:.2f}", return_type=str, when_used="json")]
AgeBand = Literal["<1d", "1-7d", "7-30d", ">=30d"]
OpenReferralStatus = Literal["assigned", "unassigned", "accepted"]


class ReferrerRef(BaseModel):
    type: Literal["employee", "partner", "customer"]
    id: str
    #: The employee's name when the referrer is an employee.
    name: str | None = None


class ReferralCounts(BaseModel):
    #: Referrals created within the window.
    referrals: int
    #: Referrals decided (converted or closed) within the window.
    decided: int
    #: Referrals converted within the window.
    converted: int
    #: converted / decided; null when nothing was decided.
    conversion_rate: float | None


class ReferrerReportItem(ReferralCounts):
    referrer: ReferrerRef
    #: The referrer score of domain/scoring.py over the referrals decided within the window.
    referrer_score: int
    #: Referrals (created within the window) that went to an assignee of another line of business.
    cross_lob: int


class ReferrerReportOut(BaseModel):
    window_days: int
    bank: ReferralCounts
    items: list[ReferrerReportItem]


class AgeBandCount(BaseModel):
    band: AgeBand
    open: int


class StatusAgeCount(BaseModel):
    status: OpenReferralStatus
    band: AgeBand
    count: int


class OldestOpenReferral(BaseModel):
    id: str
    age_hours: float
    status: OpenReferralStatus
    assignee_id: str | None


class ReferralPipeline(BaseModel):
    by_status: dict[str, int]
    by_age_band: list[AgeBandCount]
    by_status_and_age: list[StatusAgeCount]
    open_total: int
    oldest_open: OldestOpenReferral | None


class ProductStageCount(BaseModel):
    product: str
    stage: str
    count: int
    amount: MoneyTotal


class OpportunityPipeline(BaseModel):
    by_product_and_stage: list[ProductStageCount]
    by_status: dict[str, int]


class PipelineReportOut(BaseModel):
    referrals: ReferralPipeline
    opportunities: OpportunityPipeline


class PracticeAuditItem(BaseModel):
    opportunity_id: str
    rule: AuditRule
    #: A sentence for a manager: which stage, which evidence, which dates.
    detail: str
    owner_id: str
    product: str


class PracticeAuditOut(BaseModel):
    items: list[PracticeAuditItem]
    #: Where the next page starts (`after=`), or null on the last page.
    next: str | None = None


class ScorecardItem(BaseModel):
    """One employee's month: every figure is defined, once, in store/scorecards.py."""

    employee_id: str
    name: str
    #: False for an employee who has left (their past months still count).
    active: bool
    #: Customers of opportunities they own that were won by the end of the month.
    customers: int
    #: Their opportunities won within the month, and the sum of those amounts.
    units: int
    amount: MoneyTotal
    #: -100 to 100, one decimal; null when none of their customers responded in the month.
    nps: float | None
    #: Fractions 0–1; null when there is nothing to divide by.
    active_customer_share: float | None
    on_time_payment_share: float | None
    referrals_made: int
    referrals_converted: int
    cross_lob_referrals: int


class ScorecardsOut(BaseModel):
    #: The UTC month, YYYY-MM.
    period: str
    items: list[ScorecardItem]
    #: Where the next page starts (`after=`), or null on the last page.
    next: str | None = None
