"""The referral's lifecycle rules, inputs and state: pure and deterministic.

Statuses (API.md): `assigned`, `unassigned`, `accepted`, `converted`, `closed`. While the
workflow re-routes or converts, it is briefly `routing` / `converting`; commands arriving
then are refused (409) and may be retried a moment later.

Who may act: the assignee or a manager; a manager (or the assignee handing it on) may
reassign. A rejection needs a reason and re-routes to the next eligible recipient, never
back to anyone who rejected or let the acceptance SLA lapse. An operator releases an
open referral from an assignee who was deactivated: re-routed the same way, never back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from domain.opportunity import Actor, TransitionRefused, check_opening
from domain.process import ProcessDefinition
from domain.routing import ReferralFacts, ReferrerType, RoutingDecision, RoutingRules
from domain.scoring import Factor
from domain.types import LineOfBusiness, Product, Role

ReferralStatus = Literal["assigned", "unassigned", "accepted", "converted", "closed", "routing", "converting"]
OPEN_STATUSES = ("assigned", "unassigned", "accepted")
#: The statuses that count as an employee's open work (routing's load, their list).
WORKING_STATUSES = ("assigned", "accepted")


class Referrer(BaseModel):
    type: ReferrerType
    id: str


class Prospect(BaseModel):
    name: str
    phone: str | None = None
    email: str | None = None
    employer: str | None = None
    city: str | None = None
    state: str | None = None


class ReferralSla(BaseModel):
    """Durations the bank sets (seconds); the workflow keeps those it started with."""

    accept_seconds: float = Field(gt=0)
    followup_seconds: float = Field(gt=0)


class ReferralInput(BaseModel):
    referral_id: str
    referrer: Referrer
    referrer_line_of_business: LineOfBusiness | None = None
    customer_id: str | None = None
    prospect: Prospect | None = None
    expressed_interest: Product
    value: Decimal | None = None
    notes: str | None = None
    city: str | None = None
    state: str | None = None
    source: str
    #: The API key (its name) the referral came through.
    created_via: str | None = None
    rules: RoutingRules
    sla: ReferralSla
    #: Whether the namespace has needflow's search attributes (False only on a server that
    #: cannot register them, Temporal's time-skipping test server): set by who starts it.
    search_attributes: bool = True
    #: How the run records its history, set by who starts it (workflows/starts.py) to the
    #: workflow's HISTORY_FORMAT then. 0, what the input of a run started before the field
    #: existed holds: the run decides by its patch markers, as it did.
    history_format: int = 0

    def facts(self) -> ReferralFacts:
        return ReferralFacts(
            expressed_interest=self.expressed_interest,
            city=self.city,
            state=self.state,
            value=self.value,
            referrer_type=self.referrer.type,
            referrer_line_of_business=self.referrer_line_of_business,
        )


# ---------------------------------------------------------------- commands


class AcceptCommand(BaseModel):
    actor: Actor


class RejectCommand(BaseModel):
    actor: Actor
    reason: str


class ReassignCommand(BaseModel):
    actor: Actor
    to_employee_id: str
    reason: str | None = None


class NeedSpec(BaseModel):
    kind: str
    description: str


class ConvertCommand(BaseModel):
    actor: Actor
    amount: Decimal | None = None
    need: NeedSpec
    #: The product's current process, resolved by the API (None: the product has none).
    process: ProcessDefinition | None


class CloseCommand(BaseModel):
    actor: Actor
    reason: str


class ReleaseCommand(BaseModel):
    """Take a referral away from its assignee, who can no longer work it (deactivated), and
    re-route it. Given by an operator, not an employee: `actor` is whoever the API key
    acts as (its employee, or else its name), `via` the key's name."""

    employee_id: str
    actor: str
    via: str | None = None
    reason: str


# ---------------------------------------------------------------- state


class HistoryEntry(BaseModel):
    seq: int
    status: str
    at: datetime
    actor: str
    #: The API key (its name) the change came through; None for the workflow's own moves.
    via: str | None = None
    note: str | None = None
    assignee_id: str | None = None


class ReferralState(BaseModel):
    referral_id: str
    status: ReferralStatus
    assignee_id: str | None = None
    queue: str | None = None
    lead_score: int | None = None
    lead_score_factors: list[Factor] = Field(default_factory=list)
    referrer_score: int | None = None
    #: Everyone who rejected the referral, let the acceptance SLA lapse or was released from it.
    excluded: list[str] = Field(default_factory=list)
    sla_deadline: datetime | None = None
    customer_id: str | None = None
    opportunity_id: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list)


class ReferralAnswer(BaseModel):
    """What a referral's update answers: which one, its status, who has it and the
    opportunity it became; not its whole state (domain/opportunity.py `OpportunityAnswer`
    says why)."""

    referral_id: str
    status: ReferralStatus
    assignee_id: str | None = None
    opportunity_id: str | None = None


# ---------------------------------------------------------------- the rules


def _check_not_busy(state: ReferralState) -> None:
    if state.status in ("routing", "converting"):
        raise TransitionRefused(f"the referral is {state.status} right now; try again in a moment", status=state.status)
    if state.status in ("converted", "closed"):
        raise TransitionRefused(f"the referral is {state.status}; nothing more can happen to it", status=state.status)


def _check_actor(state: ReferralState, actor: Actor) -> None:
    if actor.role != Role.manager and actor.id != state.assignee_id:
        raise TransitionRefused(
            "only the referral's assignee or a manager may act on it",
            actor_id=actor.id,
            assignee_id=state.assignee_id,
        )


def check_accept(state: ReferralState, cmd: AcceptCommand) -> None:
    _check_not_busy(state)
    if state.status != "assigned":
        raise TransitionRefused(f"only an assigned referral can be accepted; it is {state.status}", status=state.status)
    _check_actor(state, cmd.actor)


def check_reject(state: ReferralState, cmd: RejectCommand) -> None:
    _check_not_busy(state)
    if state.status != "assigned":
        raise TransitionRefused(f"only an assigned referral can be rejected; it is {state.status}", status=state.status)
    _check_actor(state, cmd.actor)
    if not cmd.reason.strip():
        raise TransitionRefused("a rejection needs a reason")


def check_reassign(state: ReferralState, cmd: ReassignCommand) -> None:
    _check_not_busy(state)
    _check_actor(state, cmd.actor)
    if cmd.to_employee_id == state.assignee_id:
        raise TransitionRefused(f"the referral is already assigned to {cmd.to_employee_id}")


def check_convert(state: ReferralState, cmd: ConvertCommand, product: Product, value: Decimal | None) -> None:
    _check_not_busy(state)
    if state.status != "accepted":
        raise TransitionRefused(
            f"only an accepted referral can be converted; it is {state.status}", status=state.status
        )
    _check_actor(state, cmd.actor)
    if cmd.process is not None and cmd.process.product != product:
        raise TransitionRefused(f"the process given is for {cmd.process.product.value}, not {product.value}")
    check_opening(cmd.process, product, cmd.amount if cmd.amount is not None else value)


def check_close(state: ReferralState, cmd: CloseCommand) -> None:
    _check_not_busy(state)
    _check_actor(state, cmd.actor)
    if not cmd.reason.strip():
        raise TransitionRefused("closing a referral needs a reason")


def check_release(state: ReferralState, cmd: ReleaseCommand) -> None:
    """Only an open referral that is with `cmd.employee_id` (assigned or accepted) can be
    released from them: anything else means the work is no longer theirs (re-routed,
    decided, or in the middle of a move), and releasing it would move someone else's."""
    _check_not_busy(state)
    if state.status not in WORKING_STATUSES or state.assignee_id != cmd.employee_id:
        raise TransitionRefused(
            f"the referral is not with {cmd.employee_id}; it is {state.status}"
            + (f" with {state.assignee_id}" if state.assignee_id else ""),
            status=state.status,
            assignee_id=state.assignee_id,
        )
    if not cmd.reason.strip():
        raise TransitionRefused("releasing a referral needs a reason")


# ---------------------------------------------------------------- SLAs

SlaKind = Literal["lapse", "reminder", "escalation"]


class SlaDue(BaseModel):
    """The SLA running now and when it falls due."""

    kind: SlaKind
    at: datetime


def acceptance_deadline(assigned_at: datetime, sla: ReferralSla) -> datetime:
    """When a referral (re)assigned at `assigned_at` lapses if nobody accepts it."""
    return assigned_at + timedelta(seconds=sla.accept_seconds)


def followup_deadline(accepted_at: datetime, sla: ReferralSla, followups_sent: int) -> datetime:
    """When the next follow-up falls due: one period after acceptance for the reminder, a
    second for the escalation."""
    return accepted_at + timedelta(seconds=sla.followup_seconds * (followups_sent + 1))


def next_sla(
    state: ReferralState, sla: ReferralSla, accepted_at: datetime | None, followups_sent: int
) -> SlaDue | None:
    """Which SLA runs for a referral in this state, and its deadline; None when none runs.

    - assigned: the acceptance SLA, due at `state.sla_deadline` (set when it was routed or
      reassigned); when it lapses the referral is re-routed and the manager told;
    - accepted: the follow-up SLA, a reminder to the assignee one period after acceptance,
      then an escalation to the manager after a second; nothing more after that;
    - any other status: none.
    """
    if state.status == "assigned" and state.sla_deadline is not None:
        return SlaDue(kind="lapse", at=state.sla_deadline)
    if state.status == "accepted" and accepted_at is not None and followups_sent < 2:
        due = followup_deadline(accepted_at, sla, followups_sent)
        return SlaDue(kind="reminder" if followups_sent == 0 else "escalation", at=due)
    return None


class Routed(BaseModel):
    """What the routing activity decided and recorded."""

    decision: RoutingDecision
